use bytes::Bytes;

use super::*;
use crate::core::domain::ConfigFile;

fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap()
}

fn spec(name: &str, selector: &str, body: &str) -> ConfigurationSpec {
    let files = if body.is_empty() {
        BTreeMap::new()
    } else {
        BTreeMap::from([(
            "c.yaml".to_string(),
            ConfigFile {
                body: Bytes::from(body.to_string()),
                content_type: "text/yaml".into(),
            },
        )])
    };
    ConfigurationSpec {
        name: name.into(),
        selector: Some(Selector::parse(selector).unwrap()),
        priority: Some(0),
        files: Some(ConfigMap { files }),
    }
}

fn package(name: &str, version: &str) -> Package {
    Package {
        name: name.into(),
        version: version.into(),
        platform: String::new(),
        arch: String::new(),
        sha256: crate::core::domain::ContentHash(vec![0; 32]),
        size: 1,
        created_at: at(0),
    }
}

fn config_target(name: &str) -> RolloutTarget {
    RolloutTarget::Config {
        configuration: name.into(),
        version: None,
    }
}

fn package_target(name: &str) -> RolloutTarget {
    RolloutTarget::Package {
        name: name.into(),
        version: "1".into(),
        selector: Selector::default(),
    }
}

fn rollout_spec(target: RolloutTarget) -> RolloutSpec {
    RolloutSpec {
        target,
        params: Params::default(),
        rollback: false,
    }
}

/// A controller with configurations `prod` and `other` (one version each) and packages "" and
/// "x" at version 1.
fn control() -> Control {
    let mut c = Control::new(vec![], vec![], vec![], at(0));
    for name in ["prod", "other"] {
        let change = c
            .put_configuration(spec(name, "", "exporters:\n  debug:\n"), at(1))
            .unwrap();
        c.commit_configuration(change.config);
    }
    c.commit_package(package("", "1"));
    c.commit_package(package("x", "1"));
    c
}

/// Commits a rollout of `target` under `id` in `state`, replacing nothing: a fixture, so
/// several unfinished rollouts of one target can exist.
fn started(c: &mut Control, id: &str, target: RolloutTarget, state: State) -> Arc<Rollout> {
    let start = c
        .start_rollout(rollout_spec(target), id.into(), at(2))
        .unwrap();
    let mut rollout = start.rollout;
    rollout.progress.state = state;
    c.commit_rollout(rollout)
}

#[test]
fn rule_1_unchanged_content_makes_no_new_version_and_what_is_left_out_stays() {
    let mut c = control();
    let mut prod = spec("prod", "env=prod", "exporters:\n  debug:\n");
    prod.priority = Some(5);
    let change = c.put_configuration(prod, at(3)).unwrap();
    c.commit_configuration(change.config);
    let keep = |files: Option<&str>| ConfigurationSpec {
        name: "prod".into(),
        selector: None,
        priority: None,
        files: files.map(|body| spec("prod", "", body).files.unwrap()),
    };
    let named_file = |file: &str| {
        let mut files = spec("prod", "", "x: 1\n").files.unwrap();
        let body = files.files.remove("c.yaml").unwrap();
        files.files.insert(file.to_string(), body);
        ConfigurationSpec {
            files: Some(files),
            ..spec("prod", "", "")
        }
    };
    let no_files = |name: &str| ConfigurationSpec {
        files: None,
        ..spec(name, "", "")
    };
    // (request, the version it stands for, whether it is new, what changed; or the refusal)
    type Expected<'a> = Result<(u32, bool, &'a [&'a str]), &'a str>;
    let cases: Vec<(ConfigurationSpec, Expected)> = vec![
        (keep(None), Ok((1, false, &[]))),
        (keep(Some("exporters:\n  debug:\n")), Ok((1, false, &[]))),
        (
            keep(Some("exporters:\n  nop:\n")),
            Ok((2, true, &["content"])),
        ),
        (
            spec("prod", "env=a", "exporters:\n  debug:\n"),
            Ok((1, false, &["selector", "priority"])),
        ),
        (
            ConfigurationSpec {
                priority: Some(5),
                ..spec("prod", "env=prod", "exporters:\n  nop:\n")
            },
            Ok((2, true, &["content"])),
        ),
        (
            spec("new", "", "exporters:\n  nop:\n"),
            Ok((1, true, &["content", "selector", "priority"])),
        ),
        (no_files("new"), Err("give its files")),
        (
            spec("Bad Name", "", "exporters:\n  nop:\n"),
            Err("must be 1-63 characters"),
        ),
        (spec("prod", "", ""), Err("at least one file")),
        (spec("prod", "", " \n\n"), Err("the configuration is empty")),
        (named_file("../etc/passwd"), Err("without '/'")),
        (named_file("a\n+++ b"), Err("control characters")),
        (named_file(".."), Err("not . or ..")),
    ];
    for (request, expected) in cases {
        let name = request.name.clone();
        let asked = (request.selector.clone(), request.priority);
        match (c.put_configuration(request, at(5)), expected) {
            (Ok(change), Ok((version, new, changed))) => {
                assert_eq!(change.version.version, version, "{name}");
                assert_eq!(change.new_version.is_some(), new, "{name}");
                assert_eq!(change.changed(), changed, "{name} {asked:?}");
                let selector = asked.0.unwrap_or(Selector::parse("env=prod").unwrap());
                assert_eq!(
                    change.config.selector, selector,
                    "{name}: kept unless given"
                );
                assert_eq!(change.config.priority, asked.1.unwrap_or(5), "{name}");
                let touched = if changed.is_empty() { at(3) } else { at(5) };
                if name == "prod" {
                    assert_eq!(change.config.updated_at, touched, "{name} {changed:?}");
                }
                assert_eq!(change.config.versions.len() as u32, version);
            }
            (Err(Refusal::BadRequest(m)), Err(part)) => assert!(m.contains(part), "{m}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn rule_2_a_new_rollout_replaces_the_unfinished_ones_of_its_target() {
    let mut c = control();
    started(&mut c, "stable", config_target("prod"), State::Stable);
    started(&mut c, "errored", config_target("prod"), State::Error);
    started(&mut c, "running", config_target("prod"), State::Started);
    started(&mut c, "other", config_target("other"), State::Started);
    started(&mut c, "pkg", package_target(""), State::Paused);
    started(&mut c, "pkg-x", package_target("x"), State::Started);
    // (target, the rollouts it replaces)
    let cases: [(RolloutTarget, &[&str]); 2] = [
        (config_target("prod"), &["errored", "running"]),
        (package_target(""), &["pkg"]),
    ];
    for (target, replaces) in cases {
        let start = c
            .start_rollout(rollout_spec(target.clone()), "new".into(), at(9))
            .unwrap();
        let ids: Vec<_> = start.replaced.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, replaces, "{target:?}");
        for r in &start.replaced {
            assert_eq!((r.progress.state, r.updated_at), (State::Replaced, at(9)));
        }
        assert_eq!(start.rollout.progress, Progress::new());
    }
    // What agents outside the new rollout run: the last version rolled out in full.
    let start = c
        .start_rollout(rollout_spec(config_target("prod")), "n".into(), at(9))
        .unwrap();
    assert_eq!(start.rollout.config().unwrap().previous_version, Some(1));

    let refusals = [
        (config_target("nope"), "no configuration \"nope\""),
        (package_target("nope"), "upload it first"),
        (
            RolloutTarget::Config {
                configuration: "prod".into(),
                version: Some(7),
            },
            "has no version 7",
        ),
    ];
    for (target, part) in refusals {
        match c.start_rollout(rollout_spec(target), "n".into(), at(9)) {
            Err(Refusal::NotFound(m)) => assert!(m.contains(part), "{m}"),
            other => panic!("{part}: {other:?}"),
        }
    }
    let mut bad = rollout_spec(config_target("prod"));
    bad.params.initial = 0;
    assert!(matches!(
        c.start_rollout(bad, "n".into(), at(9)),
        Err(Refusal::BadRequest(_))
    ));
}

#[test]
fn rule_3_actions_the_state_does_not_allow_are_conflicts() {
    use Action::*;
    // (state, action, the state after, or None for a conflict)
    let cases = [
        (State::Started, Pause, Some(State::Paused)),
        (State::Paused, Pause, None),
        (State::Paused, Resume, Some(State::Started)),
        (State::Error, Resume, Some(State::Started)),
        (State::Started, Resume, None),
        (State::Started, Cancel, Some(State::Cancelled)),
        (State::Stable, Cancel, None),
        (State::Replaced, Pause, None),
    ];
    for (state, action, after) in cases {
        let mut c = control();
        started(&mut c, "r", config_target("prod"), state);
        match (c.act("r", action, at(7)), after) {
            (Ok(r), Some(after)) => {
                assert_eq!((r.progress.state, r.updated_at), (after, at(7)));
            }
            (Err(Refusal::Conflict(_)), None) => {}
            (got, _) => panic!("{state:?} {action:?}: {got:?}"),
        }
    }
    assert!(matches!(
        control().act("nope", Pause, at(7)),
        Err(Refusal::NotFound(_))
    ));
}

#[test]
fn rule_4_only_a_stored_change_is_committed() {
    let mut c = control();
    let r = started(&mut c, "r", config_target("prod"), State::Started);
    let change = c
        .put_configuration(spec("prod", "", "exporters:\n  nop:\n"), at(5))
        .unwrap();
    let paused = c.act("r", Action::Pause, at(5)).unwrap();
    let start = c
        .start_rollout(rollout_spec(config_target("prod")), "s".into(), at(5))
        .unwrap();
    // Decided, not stored: nothing shows.
    let view = c.view();
    assert_eq!(view.configuration("prod").unwrap().versions.len(), 1);
    assert_eq!(view.rollouts, [r]);

    c.commit_configuration(change.config);
    c.commit_rollout(paused);
    c.commit_rollout(start.rollout);
    let view = c.view();
    assert_eq!(view.configuration("prod").unwrap().versions.len(), 2);
    let states: Vec<_> = view
        .rollouts
        .iter()
        .map(|r| (r.id.as_str(), r.progress.state))
        .collect();
    assert_eq!(states, [("r", State::Paused), ("s", State::Pending)]);
    assert_eq!(view.latest_rollout("prod").unwrap().id, "s");
}

#[test]
fn a_package_upload_replaces_one_of_the_same_name_version_and_platform() {
    let mut c = control();
    let mut again = package("", "1");
    again.size = 2;
    c.commit_package(again);
    c.commit_package(package("", "0"));
    let packages: Vec<_> = c
        .view()
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone(), p.size))
        .collect();
    let expected = [("", "0", 1), ("", "1", 2), ("x", "1", 1)]
        .map(|(n, v, s)| (n.to_string(), v.to_string(), s));
    assert_eq!(packages, expected);
}

#[test]
fn skipped_agents_are_counted_by_reason() {
    let mut view = ControlView::default();
    let uid = |i: u8| InstanceUid::from_bytes(&[i; 16]).unwrap();
    view.skipped.insert(
        "r".into(),
        Arc::new(BTreeMap::from([
            (uid(1), "in maintenance".to_string()),
            (uid(2), "in maintenance".to_string()),
            (uid(3), "not managed (registered)".to_string()),
        ])),
    );
    let counts = view.skipped_by_reason("r");
    assert_eq!(
        counts,
        BTreeMap::from([
            ("in maintenance".to_string(), 2),
            ("not managed (registered)".to_string(), 1)
        ])
    );
    assert!(view.skipped_by_reason("other").is_empty());
}
