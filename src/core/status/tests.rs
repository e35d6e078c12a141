use super::*;
use Status::*;
use proptest::prelude::*;

/// The diagram's edges, written out once more by hand so a slip in `allowed` shows.
const DIAGRAM: &[(Status, Status)] = &[
    (Connected, Disconnected),
    (Connected, Error),
    (Connected, Configuring),
    (Connected, Pending),
    (Connected, Incompatible),
    (Connected, Upgrading),
    (Disconnected, Connected),
    (Error, Connected),
    (Error, Disconnected),
    (Error, Configuring),
    (Error, Pending),
    (Error, Incompatible),
    (Error, Upgrading),
    (Configuring, Connected),
    (Configuring, Disconnected),
    (Configuring, Error),
    (Pending, Configuring),
    (Incompatible, Disconnected),
    (Incompatible, Error),
    (Incompatible, Configuring),
    (Incompatible, Pending),
    (Incompatible, Upgrading),
    (Upgrading, Connected),
    (Upgrading, Disconnected),
    (Upgrading, Error),
];

/// Edges we added, each for a reason given in ARCHITECTURE.md.
const ADDED: &[(Status, Status)] = &[
    (Pending, Connected),
    (Pending, Disconnected),
    (Incompatible, Connected),
];

#[test]
fn every_diagram_and_added_edge_is_allowed() {
    for &(from, to) in DIAGRAM.iter().chain(ADDED) {
        assert!(allowed(from, to), "{from} -> {to} should be allowed");
    }
}

#[test]
fn nothing_else_is_allowed() {
    for from in Status::ALL {
        for to in Status::ALL {
            let listed = DIAGRAM.contains(&(from, to)) || ADDED.contains(&(from, to));
            assert_eq!(allowed(from, to), listed, "{from} -> {to}");
        }
    }
}

#[test]
fn each_allowed_edge_is_taken_directly_by_settle() {
    for &(from, to) in DIAGRAM.iter().chain(ADDED) {
        let mut m = StatusMachine::resume(from, "before".into());
        let made = m.settle(to, "because".into());
        assert_eq!(
            made,
            vec![Transition {
                from: Some(from),
                to,
                reason: "because".into()
            }]
        );
        assert_eq!(m.status(), Some(to));
        assert_eq!(m.reason(), "because");
    }
}

#[test]
fn a_disallowed_move_goes_through_connected() {
    let mut m = StatusMachine::resume(Disconnected, "closed".into());
    let made = m.settle(Error, "exporter down".into());
    assert_eq!(
        made,
        vec![
            Transition {
                from: Some(Disconnected),
                to: Connected,
                reason: "connected".into()
            },
            Transition {
                from: Some(Connected),
                to: Error,
                reason: "exporter down".into()
            },
        ]
    );
}

#[test]
fn a_new_agent_starts_connected() {
    let mut m = StatusMachine::default();
    let made = m.settle(Connected, "connected".into());
    assert_eq!(
        made,
        vec![Transition {
            from: None,
            to: Connected,
            reason: "connected".into()
        }]
    );
    let mut m = StatusMachine::default();
    let made = m.settle(Error, "bad".into());
    assert_eq!(made.len(), 2);
    assert_eq!(made[0].from, None);
    assert_eq!(made[0].to, Connected);
    assert_eq!(made[1].to, Error);
}

#[test]
fn same_status_records_nothing_but_keeps_the_new_reason() {
    let mut m = StatusMachine::resume(Error, "first".into());
    assert!(m.settle(Error, "second".into()).is_empty());
    assert_eq!(m.reason(), "second");
}

fn live(config: ConfigProgress, health_problem: Option<&str>) -> Observation {
    Observation::live(config, health_problem.map(str::to_string))
}

#[test]
fn derive_follows_the_protocol() {
    assert_eq!(
        derive(&live(ConfigProgress::Settled, None)),
        (Connected, "connected".into())
    );
    assert_eq!(
        derive(&live(ConfigProgress::Settled, Some("oom"))),
        (Error, "oom".into())
    );
    assert_eq!(
        derive(&live(ConfigProgress::Applying, Some("oom"))).0,
        Configuring
    );
    assert_eq!(
        derive(&live(ConfigProgress::Failed("bad yaml".into()), None)),
        (Error, "remote config failed: bad yaml".into())
    );
    let lost = Observation {
        connection: Connection::Lost("websocket closed".into()),
        ..live(ConfigProgress::Applying, Some("oom"))
    };
    assert_eq!(derive(&lost), (Disconnected, "websocket closed".into()));
}

#[test]
fn rollout_facts_come_after_config_and_health() {
    let queued = Observation {
        pending: Some("queued for a later rollout wave".into()),
        ..live(ConfigProgress::Settled, None)
    };
    assert_eq!(derive(&queued).0, Pending);
    let lacking = Observation {
        incompatible: Some("needs exporters/kafka".into()),
        ..queued.clone()
    };
    assert_eq!(
        derive(&lacking),
        (Incompatible, "needs exporters/kafka".into())
    );
    let sick = Observation {
        health_problem: Some("oom".into()),
        ..lacking.clone()
    };
    assert_eq!(derive(&sick).0, Error);
    let sent = Observation {
        config: ConfigProgress::Applying,
        ..lacking
    };
    assert_eq!(derive(&sent).0, Configuring);
}

#[test]
fn names_round_trip() {
    for s in Status::ALL {
        assert_eq!(Status::parse(s.as_str()), Some(s));
    }
    assert_eq!(Status::parse("Connected"), None);
}

fn any_status() -> impl Strategy<Value = Status> {
    proptest::sample::select(Status::ALL.to_vec())
}

proptest! {
    /// Whatever sequence of targets the actor asks for, only allowed transitions come out, they
    /// chain (each starts where the last ended) and the machine ends at the last target.
    #[test]
    fn settle_never_produces_a_disallowed_transition(
        targets in proptest::collection::vec(any_status(), 1..40)
    ) {
        let mut m = StatusMachine::default();
        let mut at: Option<Status> = None;
        for target in targets {
            for t in m.settle(target, format!("to {target}")) {
                prop_assert_eq!(t.from, at);
                if let Some(from) = t.from {
                    prop_assert!(allowed(from, t.to), "{} -> {}", from, t.to);
                } else {
                    prop_assert_eq!(t.to, Connected);
                }
                at = Some(t.to);
            }
            prop_assert_eq!(m.status(), Some(target));
        }
    }
}
