use super::*;
use AdminState::*;
use proptest::prelude::*;

const MAINT_R: AdminState = Maintenance(Resume::Registered);
const MAINT_M: AdminState = Maintenance(Resume::Managed);

/// Every admin edge, written out once more by hand so a slip in `admin_allowed` shows.
const ADMIN_EDGES: &[(AdminState, AdminState)] = &[
    (Discovered, Registered),
    (Discovered, Managed),
    (Discovered, Ignored),
    (Registered, Managed),
    (Registered, Ignored),
    (Registered, MAINT_R),
    (Managed, Registered),
    (Managed, Ignored),
    (Managed, MAINT_M),
    (MAINT_R, Registered),
    (MAINT_M, Managed),
    (Ignored, Registered),
    (NotFound, Registered),
    (NotFound, Managed),
    (NotFound, Ignored),
];

#[test]
fn rule_1_every_admin_edge_is_allowed_and_nothing_else() {
    for from in AdminState::ALL {
        for to in AdminState::ALL {
            assert_eq!(
                admin_allowed(from, to),
                ADMIN_EDGES.contains(&(from, to)),
                "{from:?} -> {to:?}"
            );
        }
    }
}

#[test]
fn rule_1_a_refused_move_lists_the_allowed_ones() {
    let refused = request(Discovered, "maintenance").unwrap_err();
    assert_eq!(refused.allowed, vec!["registered", "managed", "ignored"]);
    assert_eq!(
        refused.to_string(),
        "cannot move an agent from discovered to maintenance; allowed: registered, managed, ignored"
    );
    assert_eq!(
        request(Ignored, "managed").unwrap_err().allowed,
        vec!["registered"]
    );
    assert!(request(Managed, "sideways").is_err());
    assert!(
        request(Managed, "managed").is_err(),
        "a self-move is not a move"
    );
}

#[test]
fn rule_1_admins_never_move_an_agent_to_not_found_or_discovered() {
    for from in AdminState::ALL {
        assert!(request(from, "not_found").is_err(), "{from:?}");
        assert!(request(from, "discovered").is_err(), "{from:?}");
    }
}

#[test]
fn rule_2_maintenance_returns_where_it_came_from() {
    let m = request(Registered, "maintenance").unwrap();
    assert_eq!(m, MAINT_R);
    assert_eq!(m.as_str(), "maintenance");
    assert_eq!(m.admin_moves(), vec!["registered"]);
    assert!(request(m, "managed").is_err());
    assert_eq!(request(m, "registered"), Ok(Registered));
    let m = request(Managed, "maintenance").unwrap();
    assert_eq!(request(m, "managed"), Ok(Managed));
    assert!(request(m, "maintenance").is_err());
}

#[test]
fn rule_2_the_stored_form_keeps_where_maintenance_returns() {
    for state in AdminState::ALL {
        assert_eq!(AdminState::from_stored(&state.to_stored()), Some(state));
    }
    assert_eq!(AdminState::from_stored("bogus"), None);
}

#[test]
fn rule_3_first_contact_follows_admission_and_ignore_rules() {
    assert_eq!(on_first_contact(None, Admission::Auto, false), Managed);
    assert_eq!(
        on_first_contact(None, Admission::Register, false),
        Registered
    );
    assert_eq!(on_first_contact(None, Admission::Manual, false), Discovered);
    for admission in [Admission::Auto, Admission::Register, Admission::Manual] {
        assert_eq!(on_first_contact(None, admission, true), Ignored);
    }
}

#[test]
fn rule_3_a_pre_registered_agent_is_admitted_never_discovered() {
    assert_eq!(
        on_first_contact(Some(NotFound), Admission::Auto, false),
        Managed
    );
    assert_eq!(
        on_first_contact(Some(NotFound), Admission::Register, false),
        Registered
    );
    assert_eq!(
        on_first_contact(Some(NotFound), Admission::Manual, true),
        Registered
    );
    assert_eq!(
        on_first_contact(Some(Ignored), Admission::Auto, false),
        Ignored
    );
}

#[test]
fn rule_4_retention_spares_ignored_maintenance_and_pre_registrations() {
    assert_eq!(on_retention(Managed, false), Retention::Delete);
    assert_eq!(on_retention(Discovered, false), Retention::Delete);
    assert_eq!(on_retention(Registered, false), Retention::Delete);
    assert_eq!(on_retention(Managed, true), Retention::NotFound);
    assert_eq!(on_retention(Registered, true), Retention::Keep);
    for maintenance in [MAINT_M, MAINT_R] {
        assert_eq!(on_retention(maintenance, false), Retention::Keep);
        assert_eq!(on_retention(maintenance, true), Retention::Keep);
    }
    assert_eq!(on_retention(Ignored, false), Retention::Keep);
    assert_eq!(on_retention(NotFound, true), Retention::Keep);
}

#[test]
fn named_states_follow_the_names() {
    for (state, name) in AdminState::NAMED.into_iter().zip(STATE_NAMES) {
        assert_eq!(state.as_str(), name);
        assert_eq!(
            state.index(),
            STATE_NAMES.iter().position(|n| *n == name).unwrap()
        );
    }
}

#[derive(Clone, Debug)]
enum Event {
    Ask(&'static str),
    FirstContact(Admission, bool),
    Retention(bool),
}

fn event() -> impl Strategy<Value = Event> {
    let admission = prop_oneof![
        Just(Admission::Auto),
        Just(Admission::Register),
        Just(Admission::Manual)
    ];
    prop_oneof![
        proptest::sample::select(STATE_NAMES.to_vec()).prop_map(Event::Ask),
        (admission, any::<bool>()).prop_map(|(a, i)| Event::FirstContact(a, i)),
        any::<bool>().prop_map(Event::Retention),
    ]
}

proptest! {
    #[test]
    fn rule_5_no_sequence_produces_a_disallowed_move(events in proptest::collection::vec(event(), 1..60)) {
        let mut state: Option<AdminState> = None;
        for event in events {
            let next = match (event, state) {
                (Event::Ask(name), Some(from)) => request(from, name).ok(),
                (Event::Ask(_), None) => None,
                (Event::FirstContact(admission, ignore), known) => {
                    if known.is_some_and(|s| s != NotFound) { None } else {
                        Some(on_first_contact(known, admission, ignore))
                    }
                }
                (Event::Retention(pre), Some(from)) => match on_retention(from, pre) {
                    Retention::Keep => None,
                    Retention::NotFound => Some(NotFound),
                    Retention::Delete => { state = None; continue; }
                },
                (Event::Retention(_), None) => None,
            };
            if let Some(to) = next {
                if let Some(from) = state {
                    prop_assert!(
                        from == to || admin_allowed(from, to) || system_allowed(from, to),
                        "{from:?} -> {to:?}"
                    );
                }
                state = Some(to);
            }
        }
    }
}
