//! Every test goes through [`tick`]: one controller tick with the task's IO simulated (saves
//! that fail, mailboxes that are full), inputs in, what was stored and told out.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};

use super::*;
use crate::core::config::Selector;
use crate::core::domain::{ConfigFile, ConfigMap, RemoteConfigState};
use crate::core::lifecycle::Resume;
use crate::core::rollout::{
    ConfigurationSpec, Params, RolloutSpec, RolloutTarget, State, control::Control,
};

const SEC: i64 = 1_000;
const TIMEOUT: u64 = 60_000;
const MAINTENANCE: AdminState = AdminState::Maintenance(Resume::Managed);
const DEBUG: &str = "exporters:\n  debug:\n";
const KAFKA: &str = "exporters:\n  kafka:\n";

fn uid(i: u8) -> InstanceUid {
    let mut bytes = [0u8; 16];
    bytes[15] = i;
    InstanceUid::from_bytes(&bytes).unwrap()
}

fn idx(uid: &InstanceUid) -> u8 {
    uid.as_bytes()[15]
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

/// What an agent's directive says, in short: `v2 pkg 0.2 pending incompatible`, `-` for none.
fn summary(d: &Directive) -> String {
    let mut parts = Vec::new();
    if let Some(v) = &d.version {
        parts.push(format!("v{}", v.version));
    }
    if let Some(p) = &d.package {
        parts.push(format!("pkg {}", p.version));
    }
    if d.pending.is_some() {
        parts.push("pending".into());
    }
    if d.incompatible.is_some() {
        parts.push("incompatible".into());
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// The controller's state and a simulated fleet around it.
struct World {
    control: Control,
    agents: BTreeMap<u8, AgentRecord>,
    /// Agents whose records changed since the last pass.
    changed: BTreeSet<u8>,
    changes: u64,
    components: HashMap<ContentHash, Arc<ComponentSet>>,
    now: i64,
    grace: bool,
    /// What each actor holds: the directive last handed to it.
    held: BTreeMap<u8, Directive>,
}

impl World {
    /// `n` managed, connected agents labelled `env=prod` that accept configurations and
    /// packages.
    fn new(n: u8) -> Self {
        let mut w = World {
            control: Control::new(vec![], vec![], vec![], at(0)),
            agents: BTreeMap::new(),
            changed: BTreeSet::new(),
            changes: 0,
            components: HashMap::new(),
            now: 1_000 * SEC,
            grace: false,
            held: BTreeMap::new(),
        };
        for i in 0..n {
            w.add(i);
        }
        w
    }

    fn add(&mut self, i: u8) {
        let mut a = AgentRecord::new(uid(i), at(0));
        a.capabilities =
            AgentCapabilities::ACCEPTS_REMOTE_CONFIG | AgentCapabilities::ACCEPTS_PACKAGES;
        a.labels.insert("env".into(), "prod".into());
        self.agents.insert(i, a);
        self.changed.insert(i);
        self.changes += 1;
    }

    /// Changes agent `i`'s record, as its actor would publish it.
    fn agent(&mut self, i: u8) -> &mut AgentRecord {
        self.changed.insert(i);
        self.changes += 1;
        self.agents.get_mut(&i).unwrap()
    }

    fn put(&mut self, name: &str, selector: &str, priority: i32, body: &str) -> Arc<ConfigVersion> {
        let files = ConfigMap {
            files: BTreeMap::from([(
                "c.yaml".to_string(),
                ConfigFile {
                    body: Bytes::from(body.to_string()),
                    content_type: "text/yaml".into(),
                },
            )]),
        };
        let spec = ConfigurationSpec {
            name: name.into(),
            selector: Some(Selector::parse(selector).unwrap()),
            priority: Some(priority),
            files: Some(files),
        };
        let change = self.control.put_configuration(spec, at(self.now)).unwrap();
        self.control.commit_configuration(change.config);
        self.control.force_full();
        change.version
    }

    /// A package `version` for `platform` (empty: any), named "".
    fn package(&mut self, version: &str, platform: &str) -> Arc<Package> {
        self.control.commit_package(Package {
            name: String::new(),
            version: version.into(),
            platform: platform.into(),
            arch: String::new(),
            sha256: ContentHash(vec![version.len() as u8; 32]),
            size: 1,
            created_at: at(self.now),
        })
    }

    fn start(&mut self, id: &str, target: RolloutTarget, initial: u32, multiplier: u32) {
        let params = Params {
            initial,
            multiplier,
            maximum: 100,
            max_errors: 0,
            wave_timeout_ms: TIMEOUT,
        };
        let spec = RolloutSpec {
            target,
            params,
            rollback: false,
        };
        let start = self
            .control
            .start_rollout(spec, id.into(), at(self.now))
            .unwrap();
        for old in start.replaced {
            self.control.commit_rollout(old);
        }
        self.control.commit_rollout(start.rollout);
        self.control.force_full();
    }

    fn rollout(&self, id: &str) -> Arc<Rollout> {
        self.control.view().rollout(id).unwrap().clone()
    }

    fn phases(&self, id: &str) -> Vec<(u8, &'static str)> {
        let r = self.rollout(id);
        r.progress
            .agents
            .iter()
            .map(|(u, p)| (idx(u), p.as_str()))
            .collect()
    }

    fn skipped(&self, id: &str) -> Vec<(u8, String)> {
        let view = self.control.view();
        view.skipped
            .get(id)
            .iter()
            .flat_map(|m| m.iter())
            .map(|(u, reason)| (idx(u), reason.clone()))
            .collect()
    }

    fn report(&mut self, i: u8, hash: &ContentHash, status: RemoteConfigStatus) {
        let a = self.agent(i);
        a.remote_config = Some(RemoteConfigState {
            hash: hash.clone(),
            status,
            error: String::new(),
        });
        if status == RemoteConfigStatus::Applied {
            a.applied_config_hash = Some(hash.clone());
        }
    }

    /// Every agent whose actor holds a version it has not applied applies it.
    fn apply_held(&mut self) {
        let due: Vec<(u8, ContentHash)> = self
            .held
            .iter()
            .filter_map(|(i, d)| Some((*i, d.version.as_ref()?.hash.clone())))
            .filter(|(i, h)| self.agents[i].applied_config_hash.as_ref() != Some(h))
            .collect();
        for (i, hash) in due {
            self.report(i, &hash, RemoteConfigStatus::Applied);
        }
    }
}

fn config(name: &str) -> RolloutTarget {
    RolloutTarget::Config {
        configuration: name.into(),
        version: None,
    }
}

fn upgrade(version: &str, selector: &str) -> RolloutTarget {
    RolloutTarget::Package {
        name: String::new(),
        version: version.into(),
        selector: Selector::parse(selector).unwrap(),
    }
}

/// What one tick did.
#[derive(Debug, Default, PartialEq)]
struct Out {
    pass: Option<Pass>,
    /// Per stored update: the rollout, its state and the agents its new wave went to.
    stored: Vec<(String, State, Vec<u8>)>,
    /// The directives handed over, in short.
    told: Vec<(u8, String)>,
}

impl Out {
    fn told(&self, i: u8) -> Option<&str> {
        self.told
            .iter()
            .find(|(a, _)| *a == i)
            .map(|(_, s)| s.as_str())
    }

    fn sent(&self, id: &str) -> Vec<u8> {
        self.stored
            .iter()
            .filter(|(r, _, _)| r == id)
            .flat_map(|(_, _, sent)| sent.clone())
            .collect()
    }
}

/// The one helper: one controller tick, as the task runs it. The saves of the rollouts in
/// `unstored` fail; the agents in `full` have a full mailbox.
fn tick(w: &mut World, unstored: &[&str], full: &[u8]) -> Out {
    let Some(pass) = w.control.pass(w.changes) else {
        return Out::default();
    };
    let changed = std::mem::take(&mut w.changed);
    let agents: Vec<Arc<AgentRecord>> = w
        .agents
        .iter()
        .filter(|(i, _)| pass == Pass::Full || changed.contains(i))
        .map(|(_, a)| Arc::new(a.clone()))
        .collect();
    let components = |h: &ContentHash| w.components.get(h).cloned();
    let plan = plan(
        &w.control,
        &Tick {
            agents: &agents,
            pass,
            components: &components,
            grace: w.grace,
            now: at(w.now),
        },
    );
    let unstored: HashSet<String> = unstored.iter().map(|s| s.to_string()).collect();
    let stored = plan
        .updates
        .iter()
        .filter(|u| !unstored.contains(&u.rollout.id))
        .map(|u| {
            let sent = u.sent.iter().map(idx).collect();
            (u.rollout.id.clone(), u.rollout.progress.state, sent)
        })
        .collect();
    let settled = w.control.settle(plan, &unstored);
    let mut told = Vec::new();
    for tell in settled.tells {
        let i = idx(&tell.uid);
        if full.contains(&i) {
            w.control.retry_later();
            continue;
        }
        w.control.told(tell.uid, tell.key);
        told.push((i, summary(&tell.directive)));
        w.held.insert(i, tell.directive);
    }
    Out {
        pass: Some(pass),
        stored,
        told,
    }
}

fn told(pairs: &[(u8, &str)]) -> Vec<(u8, String)> {
    pairs.iter().map(|(i, s)| (*i, s.to_string())).collect()
}

#[test]
fn rule_1_agents_are_assigned_to_one_configuration() {
    // (labels, the configuration it takes the version of, what it is told)
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Labels, Option<&str>, &str); 4] = [
        (&[("env", "prod")], Some("prod"), "v1"),
        (&[("env", "prod"), ("canary", "")], Some("canary"), "v2"),
        (
            &[("env", "prod"), ("canary", ""), ("configuration", "prod")],
            Some("prod"),
            "v1",
        ),
        (&[("env", "dev")], None, "-"),
    ];
    let mut w = World::new(0);
    for (i, (labels, _, _)) in (0u8..).zip(&cases) {
        w.add(i);
        let a = w.agent(i);
        a.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
    w.put("prod", "env=prod", 0, DEBUG);
    w.put("canary", "canary", 10, DEBUG);
    w.put("canary", "canary", 10, "exporters:\n  debug:\n  nop:\n");
    w.start("p", config("prod"), 10, 1);
    w.start("c", config("canary"), 10, 1);
    let out = tick(&mut w, &[], &[]);
    for (i, (labels, takes, told)) in (0u8..).zip(&cases) {
        for name in ["prod", "canary"] {
            let id = &name[..1];
            assert_eq!(
                out.sent(id).contains(&i),
                *takes == Some(name),
                "{labels:?} in {name}"
            );
        }
        assert_eq!(out.told(i), Some(*told), "{labels:?}");
    }

    // An agent sent prod's version and pinned to canary since still reports on it.
    let prod_v1 = w.held[&0].version.clone().unwrap();
    w.agent(0)
        .labels
        .insert("configuration".into(), "canary".into());
    w.report(0, &prod_v1.hash, RemoteConfigStatus::Applied);
    tick(&mut w, &[], &[]);
    assert_eq!(w.phases("p"), [(0, "completed"), (2, "sent")]);
}

#[test]
fn rule_2_agents_not_managed_are_skipped_with_their_reason_and_never_sent_anything() {
    use AdminState::*;
    // (admin state, skipped reason, told for a configuration, told for an upgrade)
    let cases = [
        (Managed, None, Some("v1"), Some("pkg 0.2")),
        (
            Discovered,
            Some("not managed (discovered)"),
            Some("-"),
            Some("-"),
        ),
        (
            Registered,
            Some("not managed (registered)"),
            Some("-"),
            Some("-"),
        ),
        (Ignored, Some("not managed (ignored)"), Some("-"), Some("-")),
        (
            NotFound,
            Some("not managed (not_found)"),
            Some("-"),
            Some("-"),
        ),
        // Told nothing: it keeps the directive it had.
        (MAINTENANCE, Some("in maintenance"), None, None),
        (
            Maintenance(Resume::Registered),
            Some("in maintenance"),
            None,
            None,
        ),
    ];
    for (state, reason, for_config, for_upgrade) in cases {
        for (target, told) in [
            (config("prod"), for_config),
            (upgrade("0.2", ""), for_upgrade),
        ] {
            let mut w = World::new(2);
            w.agent(0).admin_state = state;
            w.put("prod", "env=prod", 0, DEBUG);
            w.package("0.2", "");
            w.start("r", target.clone(), 10, 1);
            let out = tick(&mut w, &[], &[]);
            let expect_sent: &[u8] = if state == Managed { &[0, 1] } else { &[1] };
            assert_eq!(out.sent("r"), expect_sent, "{state:?} {target:?}");
            let skipped: Vec<_> = reason.iter().map(|r| (0, r.to_string())).collect();
            assert_eq!(w.skipped("r"), skipped, "{state:?} {target:?}");
            assert_eq!(out.told(0), told, "{state:?} {target:?}");
        }
    }
}

#[test]
fn rule_2_agents_in_maintenance_count_neither_as_pending_nor_as_errors() {
    let mut w = World::new(4);
    let v1 = w.put("prod", "env=prod", 0, DEBUG);
    w.start("r", config("prod"), 2, 1);
    let out = tick(&mut w, &[], &[]);
    assert_eq!(out.sent("r"), [0, 1]);

    // 0 failed and is taken in for repair, 1 is silent in maintenance, 3 was still waiting.
    w.report(0, &v1.hash, RemoteConfigStatus::Failed);
    for i in [0, 1, 3] {
        w.agent(i).admin_state = MAINTENANCE;
    }
    w.now += 2 * TIMEOUT as i64;
    let out = tick(&mut w, &[], &[]);
    assert_eq!(out.stored, [("r".to_string(), State::Started, vec![2])]);
    assert_eq!(w.phases("r"), [(2, "sent")]);
    let counts = w.rollout("r").progress.counts();
    assert_eq!((counts.pending, counts.errors), (0, 0));
    assert_eq!(out.told, told(&[(2, "v1")]), "nothing new for 0, 1 or 3");
    let in_maintenance = [0, 1, 3].map(|i| (i, "in maintenance".to_string()));
    assert_eq!(w.skipped("r"), in_maintenance);
}

#[test]
fn rule_2_a_deleted_agent_leaves_the_progress() {
    let mut w = World::new(4);
    w.put("prod", "env=prod", 0, DEBUG);
    w.start("r", config("prod"), 2, 1);
    let out = tick(&mut w, &[], &[]);
    assert_eq!(out.sent("r"), [0, 1]);
    w.agents.remove(&1);
    w.control.force_full();
    let out = tick(&mut w, &[], &[]);
    assert_eq!(
        w.phases("r"),
        [(0, "sent"), (2, "waiting"), (3, "waiting")],
        "{:?}",
        out.stored
    );
    assert_eq!(w.rollout("r").progress.counts().errors, 0);
}

#[test]
fn rule_2_an_agent_leaving_maintenance_joins_the_remaining_waves() {
    let mut w = World::new(4);
    w.put("prod", "env=prod", 0, DEBUG);
    w.agent(1).admin_state = MAINTENANCE;
    w.start("r", config("prod"), 1, 1);
    let mut waves = Vec::new();
    for step in 0..8 {
        if step == 2 {
            w.agent(1).admin_state = AdminState::Managed;
        }
        let out = tick(&mut w, &[], &[]);
        if !out.sent("r").is_empty() {
            waves.push(out.sent("r"));
        }
        if step < 2 {
            assert_eq!(out.told(1), None, "told nothing in maintenance");
        }
        w.apply_held();
    }
    assert_eq!(waves, [vec![0], vec![2], vec![1], vec![3]]);
    assert_eq!(w.rollout("r").progress.state, State::Stable);
    assert_eq!(w.skipped("r"), []);
}

#[test]
fn rule_3_agents_a_rollout_cannot_serve_are_skipped_with_the_reason() {
    type Setup = fn(&mut AgentRecord);
    let cases: [(&str, RolloutTarget, Setup, Option<&str>); 6] = [
        (
            "no remote config",
            config("prod"),
            |a| a.capabilities = AgentCapabilities::ACCEPTS_PACKAGES,
            Some("agent does not accept remote config"),
        ),
        (
            "missing components",
            config("prod"),
            |a| a.components_hash = Some(ContentHash(vec![1])),
            Some("agent lacks components: exporters/kafka"),
        ),
        (
            "disconnected",
            config("prod"),
            |a| a.status = Status::Disconnected,
            Some("disconnected"),
        ),
        (
            "no packages",
            upgrade("0.2", ""),
            |a| a.capabilities = AgentCapabilities::ACCEPTS_REMOTE_CONFIG,
            Some("agent does not accept packages"),
        ),
        (
            "another platform",
            upgrade("0.2", ""),
            |a| {
                a.labels.insert("os.type".into(), "windows".into());
            },
            Some("no package for os.type=windows host.arch="),
        ),
        (
            "disconnected",
            upgrade("0.2", ""),
            |a| {
                a.status = Status::Disconnected;
                a.labels.insert("os.type".into(), "linux".into());
            },
            Some("disconnected"),
        ),
    ];
    for (name, target, setup, reason) in cases {
        let mut w = World::new(2);
        let debug_only: ComponentSet = [("exporters", "debug")].into_iter().collect();
        w.components
            .insert(ContentHash(vec![1]), Arc::new(debug_only));
        setup(w.agent(0));
        w.put("prod", "env=prod", 0, KAFKA);
        w.package("0.2", "linux");
        w.agent(1).labels.insert("os.type".into(), "linux".into());
        w.start("r", target, 10, 1);
        let out = tick(&mut w, &[], &[]);
        assert_eq!(out.sent("r"), [1], "{name}");
        let skipped: Vec<_> = reason.iter().map(|r| (0, r.to_string())).collect();
        assert_eq!(w.skipped("r"), skipped, "{name}");
        assert_eq!(w.phases("r"), [(1, "sent")], "{name}: not waiting either");
    }
}

#[test]
fn rule_4_a_managed_agent_gets_its_version_and_the_newest_upgrade_that_takes_it() {
    let mut w = World::new(3);
    w.agent(1).labels.insert("os.type".into(), "linux".into());
    w.agent(2).admin_state = AdminState::Registered;
    w.put("prod", "env=prod", 0, DEBUG);
    w.package("0.2", "");
    w.package("0.3", "");
    w.start("c", config("prod"), 10, 1);
    w.start("u2", upgrade("0.2", "env=prod"), 10, 1);
    tick(&mut w, &[], &[]);
    // A newer upgrade of the same package replaces the older; it takes only linux agents.
    w.start("u3", upgrade("0.3", "os.type=linux"), 10, 1);
    let out = tick(&mut w, &[], &[]);
    assert_eq!(w.rollout("u2").progress.state, State::Replaced);
    assert_eq!(out.sent("u3"), [1]);
    assert_eq!(out.told, told(&[(1, "v1 pkg 0.3")]));
    // 0 is no linux agent: the replaced upgrade it took up still decides its package.
    assert_eq!(summary(&w.held[&0]), "v1 pkg 0.2");
    assert_eq!(w.held[&2], Directive::default());
}

#[test]
fn rule_5_a_directive_is_told_only_when_it_changed() {
    let mut w = World::new(2);
    w.put("prod", "env=prod", 0, DEBUG);
    w.start("r", config("prod"), 10, 1);
    let out = tick(&mut w, &[], &[1]);
    assert_eq!(out.told, told(&[(0, "v1")]), "1's mailbox is full");
    // Nothing changed for 0; 1 is told now that its mailbox has room.
    let out = tick(&mut w, &[], &[]);
    assert_eq!(out.told, told(&[(1, "v1")]));
    w.apply_held();
    let out = tick(&mut w, &[], &[]);
    assert_eq!(out.stored, [("r".to_string(), State::Stable, vec![])]);
    assert_eq!(out.told, [], "the same version, now stable");
    // A record change that does not change its directive tells nothing.
    w.agent(0).labels.insert("team".into(), "a".into());
    let out = tick(&mut w, &[], &[]);
    assert_eq!((out.pass, out.told), (Some(Pass::Changed), vec![]));
}

#[test]
fn rule_6_only_a_full_pass_steps_rollouts() {
    // The pass, tick after tick: (what happens before it, the pass expected).
    type Before = fn(&mut World);
    let cases: [(&str, Before, Option<Pass>); 6] = [
        ("the first tick", |_| {}, Some(Pass::Full)),
        ("nothing changed", |_| {}, None),
        (
            "a record changed",
            |w| w.agent(0).status_reason = "x".into(),
            Some(Pass::Changed),
        ),
        ("a request", |w| w.control.force_full(), Some(Pass::Full)),
        (
            "a rollout runs",
            |w| w.start("r", config("prod"), 1, 1),
            Some(Pass::Full),
        ),
        ("it still runs", |_| {}, Some(Pass::Full)),
    ];
    let mut w = World::new(3);
    w.put("prod", "env=prod", 0, DEBUG);
    for (name, before, pass) in cases {
        before(&mut w);
        assert_eq!(tick(&mut w, &[], &[]).pass, pass, "{name}");
    }

    // A changed-only pass that saw only agent 2 must not step: it would drop 1, waiting.
    let agents = [Arc::new(w.agents[&2].clone())];
    let components = |_: &ContentHash| -> Option<Arc<ComponentSet>> { None };
    let changed_only = Tick {
        agents: &agents,
        pass: Pass::Changed,
        components: &components,
        grace: false,
        now: at(w.now + TIMEOUT as i64 * 2),
    };
    let plan = plan(&w.control, &changed_only);
    assert_eq!((plan.updates, plan.seen), (vec![], None));
    assert_eq!(w.phases("r"), [(0, "sent"), (1, "waiting"), (2, "waiting")]);

    // A full pass forgets agents gone from the fleet: one that comes back is told afresh.
    w.agents.remove(&2);
    tick(&mut w, &[], &[]);
    w.add(2);
    let out = tick(&mut w, &[], &[]);
    assert_eq!(out.told(2), Some("pending"));
}

#[test]
fn rule_7_restored_rollouts_wait_out_the_grace() {
    let mut w = World::new(2);
    w.put("prod", "env=prod", 0, DEBUG);
    w.start("old", config("prod"), 1, 1);
    tick(&mut w, &[], &[]);
    assert_eq!(w.phases("old"), [(0, "sent"), (1, "waiting")]);

    // A restart: everything read back, agents not yet reconnected.
    let view = w.control.view();
    w.control = Control::new(
        view.configurations.iter().map(|c| (**c).clone()).collect(),
        view.rollouts.iter().map(|r| (**r).clone()).collect(),
        vec![],
        at(w.now + SEC),
    );
    w.now += 2 * TIMEOUT as i64;
    for i in [0, 1] {
        w.agent(i).status = Status::Disconnected;
    }
    w.grace = true;
    w.put("other", "env=dev", 0, DEBUG);
    w.start("new", config("other"), 1, 1);
    let out = tick(&mut w, &[], &[]);
    assert_eq!(out.stored, [("new".to_string(), State::Stable, vec![])]);
    assert_eq!(
        w.phases("old"),
        [(0, "sent"), (1, "waiting")],
        "not stepped"
    );
    assert_eq!(out.told, told(&[(0, "v1"), (1, "pending")]), "still holds");

    w.grace = false;
    let out = tick(&mut w, &[], &[]);
    assert_eq!(out.stored, [("old".to_string(), State::Error, vec![])]);
    assert_eq!(w.phases("old"), [(0, "timed_out")]);
}

#[test]
fn rule_8_a_wave_is_sent_only_once_stored() {
    let mut w = World::new(2);
    w.put("prod", "env=prod", 0, DEBUG);
    w.put("edge", "edge", 1, DEBUG);
    w.agent(1).labels.insert("edge".into(), String::new());
    w.start("r", config("prod"), 10, 1);
    let out = tick(&mut w, &["r"], &[]);
    assert_eq!(out.stored, []);
    assert_eq!(w.rollout("r").progress.state, State::Pending);
    assert_eq!(
        out.told,
        told(&[(1, "-")]),
        "what needs no update still goes"
    );

    let out = tick(&mut w, &[], &[]);
    assert_eq!(out.stored, [("r".to_string(), State::Started, vec![0])]);
    assert_eq!(out.told, told(&[(0, "v1")]));
}

/// One agent of the simulated fleet, at random.
fn any_agent() -> impl Strategy<Value = (u8, bool, bool, bool, bool)> {
    (
        0u8..7,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
}

fn admin_state(n: u8) -> AdminState {
    // Managed half the time: the others are rarer in a real fleet.
    match n {
        0 => AdminState::Discovered,
        1 => AdminState::Registered,
        2 => AdminState::Ignored,
        3 => AdminState::NotFound,
        4 => MAINTENANCE,
        _ => AdminState::Managed,
    }
}

/// Ticks a random fleet through a configuration rollout and an upgrade while agents change
/// admin state, apply, fail and drop off, and checks the rules that hold for every tick.
fn run(agents: Vec<(u8, bool, bool, bool, bool)>, seed: [u8; 32]) -> Result<(), TestCaseError> {
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    let mut w = World::new(0);
    for (i, (state, linux, packages, remote_config, connected)) in (0u8..).zip(&agents) {
        w.add(i);
        let a = w.agent(i);
        a.admin_state = admin_state(*state);
        if *linux {
            a.labels.insert("os.type".into(), "linux".into());
        }
        a.capabilities
            .set(AgentCapabilities::ACCEPTS_PACKAGES, *packages);
        a.capabilities
            .set(AgentCapabilities::ACCEPTS_REMOTE_CONFIG, *remote_config);
        if !connected {
            a.status = Status::Disconnected;
        }
    }
    w.put("prod", "env=prod", 0, DEBUG);
    w.package("0.2", "linux");
    w.start("c", config("prod"), 1, 2);
    w.start("u", upgrade("0.2", ""), 2, 1);
    let mut was_managed: BTreeMap<u8, bool> = BTreeMap::new();
    for _ in 0..40 {
        // Admins move agents; agents apply or fail what their actor holds.
        let n = agents.len() as u8;
        for i in 0..n {
            if rng.random_ratio(1, 10) {
                w.agent(i).admin_state = admin_state(rng.random_range(0..8));
            }
            let held = w.held.get(&i).cloned().unwrap_or_default();
            if let Some(v) = held.version
                && rng.random_ratio(1, 3)
            {
                let status = if rng.random_ratio(1, 8) {
                    RemoteConfigStatus::Failed
                } else {
                    RemoteConfigStatus::Applied
                };
                w.report(i, &v.hash, status);
            }
            if held.package.is_some() && rng.random_ratio(1, 3) {
                w.agent(i)
                    .labels
                    .insert("service.version".into(), "0.2".into());
            }
        }
        for (i, a) in &w.agents {
            was_managed.insert(*i, a.admin_state.is_managed());
        }
        let unstored: &[&str] = match rng.random_range(0..6) {
            0 => &["c"],
            1 => &["u"],
            _ => &[],
        };
        w.now += rng.random_range(0..TIMEOUT as i64);

        // Rule 9: the agents' order does not matter.
        let all: Vec<_> = w.agents.values().map(|a| Arc::new(a.clone())).collect();
        let mut reversed = all.clone();
        reversed.reverse();
        let components = |_: &ContentHash| -> Option<Arc<ComponentSet>> { None };
        let [forward, backward] = [&all, &reversed].map(|agents| {
            let tick = Tick {
                agents,
                pass: Pass::Full,
                components: &components,
                grace: false,
                now: at(w.now),
            };
            plan(&w.control, &tick)
        });
        prop_assert_eq!(forward, backward);

        let before: BTreeMap<u8, Directive> = w.held.clone();
        let out = tick(&mut w, unstored, &[]);
        for (i, told) in &out.told {
            let state = w.agents[i].admin_state;
            // Rule 4: nobody who is not managed is given a version or a package.
            if !state.is_managed() {
                prop_assert_eq!(told.as_str(), "-", "agent {} {:?}", i, state);
            }
            prop_assert!(
                !matches!(state, AdminState::Maintenance(_)),
                "agent {} told in maintenance",
                i
            );
        }
        for (i, held) in &w.held {
            if matches!(w.agents[i].admin_state, AdminState::Maintenance(_)) {
                prop_assert_eq!(Some(held), before.get(i), "{} frozen", i);
            }
        }
        // Rule 2: waves go to managed agents only, and the others are no part of the count.
        for (_, _, sent) in &out.stored {
            for i in sent {
                prop_assert!(was_managed[i], "agent {} sent while not managed", i);
            }
        }
        for id in ["c", "u"] {
            for (i, phase) in w.phases(id) {
                if !w.agents[&i].admin_state.is_managed() && out.stored.iter().any(|s| s.0 == id) {
                    prop_assert_eq!(phase, "completed", "{} of {} not managed", i, id);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_agent_that_is_not_managed_is_ever_sent_a_version(
        agents in proptest::collection::vec(any_agent(), 0..12),
        seed in any::<[u8; 32]>(),
    ) {
        run(agents, seed)?;
    }
}
