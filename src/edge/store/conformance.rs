//! The behaviour every [`Store`] implementation must have. Each implementation's tests call
//! [`run`] on a fresh, empty store, with a [`Probe`] that reads its database directly.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use futures_util::FutureExt;

use super::{Store, StoreError, WriteBatch, WriteBuffer};
use crate::core::config::{ComponentSet, ConfigVersion, Configuration, Selector};
use crate::core::domain::{
    AgentCapabilities, AgentDescription, AgentRecord, AttributeValue, ConfigFile, ConfigMap,
    ContentHash, HISTORY_LIMIT, Health, HistoryEntry, InstanceUid, KeptConfig, RemoteConfigState,
    RemoteConfigStatus, StrMap, Transport,
};
use crate::core::keys::{ApiKey, KeyHash, Role};
use crate::core::lifecycle::{AdminState, Expected, IgnoreRule, Resume};
use crate::core::packages::Package;
use crate::core::rollout::{
    ConfigPayload, PackagePayload, Params, Payload, Phase, Progress, Rollout, State,
};
use crate::core::status::Status;
use crate::telemetry::Metrics;

/// Reads an implementation's database behind the [`Store`] trait's back, so the suite sees
/// what is really stored and not what the trait chooses to load.
#[async_trait]
pub trait Probe: Sync {
    /// Every table holding rows about the agent, with how many; tables without any are left
    /// out, so an agent the store knows nothing of gets an empty list.
    async fn rows_about(&self, uid: InstanceUid) -> Vec<(String, u64)>;
}

/// Runs every check in order on an empty store; panics with the failing check's message.
pub async fn run(store: &dyn Store, probe: &dyn Probe) {
    starts_empty(store).await;
    round_trips_an_agent(store).await;
    upserts_replace_the_record(store).await;
    keeps_only_the_latest_history(store).await;
    effective_configs_by_hash(store).await;
    released_configs_go_when_unreferenced(store).await;
    component_sets_by_hash(store).await;
    configurations_keep_every_version(store).await;
    rollouts_keep_their_progress(store).await;
    packages_by_identity(store).await;
    deleting_a_configuration_takes_its_rollouts(store).await;
    deleting_a_package_version_takes_every_build(store).await;
    fleet_sized_batches(store).await;
    admin_states_round_trip(store).await;
    deletes_leave_nothing_of_the_agent(store, probe).await;
    a_write_after_a_delete_survives(store, probe).await;
    sync_waits_until_the_writes_are_stored(store).await;
    expected_agents_by_id(store).await;
    ignore_rules_by_id(store).await;
    api_keys_by_id(store).await;
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid timestamp")
}

fn sample_agent(uid: InstanceUid) -> AgentRecord {
    let mut component = Health {
        healthy: false,
        last_error: "connection refused".into(),
        ..Health::default()
    };
    component.attributes.insert(
        "endpoint".into(),
        AttributeValue::String("otlp:4317".into()),
    );
    let mut health = Health {
        healthy: true,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        status: "StatusOK".into(),
        ..Health::default()
    };
    health.components.insert("exporter:otlp".into(), component);
    AgentRecord {
        status: Status::Error,
        admin_state: crate::core::lifecycle::AdminState::Managed,
        status_reason: "exporter:otlp: connection refused".into(),
        transport: Some(Transport::WebSocket),
        labels: BTreeMap::from([
            ("env".into(), "prod".into()),
            ("région".into(), "ça".into()),
        ]),
        description: Arc::new(AgentDescription {
            identifying: StrMap::from_iter([
                (
                    "service.name".into(),
                    AttributeValue::String("otelcol".into()),
                ),
                ("pid".into(), AttributeValue::Int(7)),
            ]),
            non_identifying: StrMap::from_iter([(
                "tags".into(),
                AttributeValue::Array(vec![
                    AttributeValue::Bool(true),
                    AttributeValue::Double(1.5),
                ]),
            )]),
        }),
        capabilities: AgentCapabilities::REPORTS_STATUS | AgentCapabilities::REPORTS_HEALTH,
        health: Some(Arc::new(crate::edge::protocol::health_report(
            crate::edge::protocol::health_to_proto(&health),
        ))),
        effective_config_hash: Some(crate::core::domain::ContentHash(vec![1, 2, 3])),
        remote_config: Some(RemoteConfigState {
            hash: crate::core::domain::ContentHash(vec![9; 32]),
            status: RemoteConfigStatus::Failed,
            error: "bad yaml".into(),
        }),
        last_seen: at(10),
        connected_at: Some(at(5)),
        applied_config_hash: Some(crate::core::domain::ContentHash(vec![8; 32])),
        offered_package_hash: Some(crate::core::domain::ContentHash(vec![6; 32])),
        packages: Some(Arc::new(crate::core::domain::PackageReports {
            packages: StrMap::from_iter([(
                Default::default(),
                crate::core::domain::PackageReport {
                    agent_has_version: "v0.115.0".into(),
                    agent_has_hash: crate::core::domain::ContentHash(vec![1; 32]),
                    server_offered_version: "v0.116.0".into(),
                    server_offered_hash: crate::core::domain::ContentHash(vec![6; 32]),
                    state: crate::core::domain::PackageState::Downloading,
                    error: String::new(),
                    download_percent: Some(42.5),
                },
            )]),
            ..Default::default()
        })),
        ..AgentRecord::new(uid, at(0))
    }
}

async fn load(store: &dyn Store) -> Vec<AgentRecord> {
    let loaded = store.load_agents().await.expect("load_agents");
    assert!(loaded.set_aside.is_empty(), "{:?}", loaded.set_aside);
    loaded.agents
}

async fn write(store: &dyn Store, batch: WriteBatch) {
    store.write(&batch).await.expect("write");
}

async fn starts_empty(store: &dyn Store) {
    assert!(load(store).await.is_empty(), "a new store has no agents");
    write(store, WriteBatch::default()).await;
}

async fn round_trips_an_agent(store: &dyn Store) {
    let uid = InstanceUid::new_v7();
    let agent = sample_agent(uid);
    let entry = HistoryEntry {
        at: at(5),
        from: None,
        to: Status::Connected,
        reason: "connected".into(),
    };
    write(
        store,
        WriteBatch {
            agents: vec![Arc::new(agent.clone())],
            history: vec![(uid, entry.clone())],
            ..WriteBatch::default()
        },
    )
    .await;
    let loaded = load(store).await;
    let found = loaded
        .iter()
        .find(|a| a.uid == uid)
        .expect("agent is stored");
    let expected = AgentRecord {
        history: Arc::from([entry]),
        ..agent
    };
    assert_eq!(found, &expected, "an agent reads back as written");
}

async fn upserts_replace_the_record(store: &dyn Store) {
    let uid = InstanceUid::new_v7();
    let first = sample_agent(uid);
    write(
        store,
        WriteBatch {
            agents: vec![Arc::new(first.clone())],
            ..WriteBatch::default()
        },
    )
    .await;
    let second = AgentRecord {
        status: Status::Disconnected,
        status_reason: "websocket closed".into(),
        labels: BTreeMap::new(),
        health: None,
        remote_config: None,
        connected_at: None,
        last_seen: at(99),
        ..first
    };
    write(
        store,
        WriteBatch {
            agents: vec![Arc::new(second.clone())],
            ..WriteBatch::default()
        },
    )
    .await;
    let loaded = load(store).await;
    let found: Vec<_> = loaded.iter().filter(|a| a.uid == uid).collect();
    assert_eq!(found, vec![&second], "the second write replaces the first");
}

async fn keeps_only_the_latest_history(store: &dyn Store) {
    let uid = InstanceUid::new_v7();
    let statuses = [Status::Connected, Status::Error];
    let entries: Vec<_> = (0..HISTORY_LIMIT + 20)
        .map(|i| HistoryEntry {
            at: at(i as i64),
            from: Some(statuses[i % 2]),
            to: statuses[(i + 1) % 2],
            reason: format!("change {i}"),
        })
        .collect();
    let (early, late) = entries.split_at(30);
    let agent = Arc::new(AgentRecord::new(uid, at(0)));
    for part in [early, late] {
        write(
            store,
            WriteBatch {
                agents: vec![agent.clone()],
                history: part.iter().map(|e| (uid, e.clone())).collect(),
                ..WriteBatch::default()
            },
        )
        .await;
    }
    let loaded = load(store).await;
    let found = loaded
        .iter()
        .find(|a| a.uid == uid)
        .expect("agent is stored");
    assert_eq!(found.history.len(), HISTORY_LIMIT, "history is bounded");
    assert_eq!(
        &found.history[..],
        &entries[20..],
        "the newest entries are kept, oldest first"
    );
    assert!(found.history[0].at < found.history[HISTORY_LIMIT - 1].at + Duration::seconds(1));
}

async fn effective_configs_by_hash(store: &dyn Store) {
    let config = ConfigMap {
        files: BTreeMap::from([(
            String::new(),
            ConfigFile {
                body: Bytes::from_static(b"receivers:\n  otlp:\n"),
                content_type: "text/yaml".into(),
            },
        )]),
    };
    let hash = config.hash();
    assert_eq!(store.effective_config(&hash).await.expect("read"), None);
    for _ in 0..2 {
        write(
            store,
            WriteBatch {
                effective_configs: vec![(hash.clone(), KeptConfig::Whole(config.clone()))],
                ..WriteBatch::default()
            },
        )
        .await;
    }
    assert_eq!(
        store.effective_config(&hash).await.expect("read"),
        Some(KeptConfig::Whole(config)),
        "an effective config reads back by its hash, written twice without error"
    );
    let large = ContentHash(vec![0x1a; 32]);
    let withheld = KeptConfig::TooLarge { bytes: 3_000_000 };
    write(
        store,
        WriteBatch {
            effective_configs: vec![(large.clone(), withheld.clone())],
            ..WriteBatch::default()
        },
    )
    .await;
    assert_eq!(
        store.effective_config(&large).await.expect("read"),
        Some(withheld),
        "a config too large to keep reads back as its size"
    );
}

/// An effective config an agent stopped reporting goes once no agent refers to it; one that
/// another agent still reports stays.
async fn released_configs_go_when_unreferenced(store: &dyn Store) {
    let (changes, keeps) = (InstanceUid::new_v7(), InstanceUid::new_v7());
    let (old, shared, new) = (
        config_with("released: old\n"),
        config_with("released: shared\n"),
        config_with("released: new\n"),
    );
    let with_config = |uid, config: &ConfigMap| AgentRecord {
        effective_config_hash: Some(config.hash()),
        ..sample_agent(uid)
    };
    let kept = |config: &ConfigMap| (config.hash(), KeptConfig::Whole(config.clone()));
    write(
        store,
        WriteBatch {
            agents: vec![
                Arc::new(with_config(changes, &old)),
                Arc::new(with_config(keeps, &shared)),
            ],
            effective_configs: vec![kept(&old), kept(&shared)],
            ..WriteBatch::default()
        },
    )
    .await;
    // `changes` reports `new` (a later flush), then `shared`: both earlier ones are released.
    write(
        store,
        WriteBatch {
            agents: vec![Arc::new(with_config(changes, &new))],
            released_configs: vec![old.hash()],
            effective_configs: vec![kept(&new)],
            ..WriteBatch::default()
        },
    )
    .await;
    assert!(!stored_config(store, &old).await, "no agent refers to it");
    assert!(stored_config(store, &new).await);
    write(
        store,
        WriteBatch {
            agents: vec![Arc::new(with_config(changes, &shared))],
            released_configs: vec![new.hash()],
            ..WriteBatch::default()
        },
    )
    .await;
    assert!(!stored_config(store, &new).await);
    assert!(
        stored_config(store, &shared).await,
        "another agent refers to it"
    );
}

async fn component_sets_by_hash(store: &dyn Store) {
    let set: ComponentSet = [("receivers", "otlp"), ("exporters", "kafka")]
        .into_iter()
        .collect();
    let hash = crate::core::domain::ContentHash(vec![7; 32]);
    for _ in 0..2 {
        write(
            store,
            WriteBatch {
                component_sets: vec![(hash.clone(), set.clone())],
                ..WriteBatch::default()
            },
        )
        .await;
    }
    let sets = store
        .load_component_sets()
        .await
        .expect("load component sets");
    assert_eq!(
        sets,
        vec![(hash, set)],
        "a component set reads back by its hash, once"
    );
}

fn collector_yaml(body: &'static str) -> ConfigMap {
    ConfigMap {
        files: BTreeMap::from([(
            "collector.yaml".to_string(),
            ConfigFile {
                body: Bytes::from_static(body.as_bytes()),
                content_type: "text/yaml".into(),
            },
        )]),
    }
}

async fn configurations_keep_every_version(store: &dyn Store) {
    assert!(store.load_configurations().await.expect("load").is_empty());
    let v1 = Arc::new(
        ConfigVersion::new(1, collector_yaml("receivers:\n  otlp:\n"), at(1)).expect("v1"),
    );
    let mut config = Configuration {
        name: "prod".into(),
        selector: Selector::parse("env=prod,region in (eu,us),!canary").expect("selector"),
        priority: 5,
        versions: vec![v1.clone()],
        created_at: at(1),
        updated_at: at(1),
    };
    store
        .save_configuration(&config, Some(&v1))
        .await
        .expect("save v1");
    let v2 = Arc::new(
        ConfigVersion::new(2, collector_yaml("exporters:\n  kafka:\n"), at(2)).expect("v2"),
    );
    config.versions.push(v2.clone());
    config.priority = 7;
    config.updated_at = at(2);
    store
        .save_configuration(&config, Some(&v2))
        .await
        .expect("save v2");
    let loaded = store.load_configurations().await.expect("load");
    assert_eq!(
        loaded,
        vec![config.clone()],
        "a configuration reads back with every version"
    );
    assert!(
        store.save_configuration(&config, Some(&v2)).await.is_err(),
        "a version number is never written twice"
    );
}

async fn rollouts_keep_their_progress(store: &dyn Store) {
    assert!(store.load_rollouts().await.expect("load").is_empty());
    let (a, b, c) = (
        InstanceUid::new_v7(),
        InstanceUid::new_v7(),
        InstanceUid::new_v7(),
    );
    let mut rollout = Rollout {
        id: "r-1".into(),
        payload: Payload::Config(ConfigPayload {
            configuration: "prod".into(),
            version: 2,
            hash: crate::core::domain::ContentHash::default(),
            previous_version: Some(1),
        }),
        params: Params {
            initial: 3,
            multiplier: 5,
            maximum: 100,
            max_errors: 1,
            wave_timeout_ms: 300_000,
        },
        rollback: true,
        progress: Progress::new(),
        created_at: at(10),
        updated_at: at(10),
    };
    store.save_rollout(&rollout, &[]).await.expect("save");
    rollout.progress.state = State::Started;
    rollout.progress.wave = 1;
    rollout.progress.agents = BTreeMap::from([
        (
            a,
            Phase::Sent {
                wave: 0,
                at_ms: 1_234,
            },
        ),
        (b, Phase::Waiting),
        (c, Phase::Failed),
    ]);
    rollout.updated_at = at(11);
    let rows: Vec<_> = rollout
        .progress
        .agents
        .iter()
        .map(|(u, p)| (*u, Some(*p)))
        .collect();
    store
        .save_rollout(&rollout, &rows)
        .await
        .expect("save progress");
    rollout.progress.agents.remove(&b);
    rollout.progress.agents.insert(a, Phase::Completed);
    rollout.progress.canary = true;
    store
        .save_rollout(&rollout, &[(a, Some(Phase::Completed)), (b, None)])
        .await
        .expect("save changes");
    let upgrade = Rollout {
        id: "r-2".into(),
        payload: Payload::Package(PackagePayload {
            name: String::new(),
            version: "v0.116.0".into(),
            selector: Selector::parse("os.type=linux").expect("selector"),
        }),
        rollback: false,
        created_at: at(12),
        updated_at: at(12),
        ..rollout.clone()
    };
    store
        .save_rollout(&upgrade, &[])
        .await
        .expect("save upgrade");
    let loaded = store.load_rollouts().await.expect("load");
    let mut upgrade_as_loaded = upgrade;
    upgrade_as_loaded.progress.agents.clear();
    assert_eq!(
        loaded,
        vec![rollout, upgrade_as_loaded],
        "rollouts read back with their payload and per-agent progress, oldest first"
    );
}

async fn packages_by_identity(store: &dyn Store) {
    assert!(store.load_packages().await.expect("load").is_empty());
    let mut package = Package {
        name: String::new(),
        version: "v0.116.0".into(),
        platform: "linux".into(),
        arch: "amd64".into(),
        sha256: crate::core::domain::ContentHash(vec![3; 32]),
        size: 1234,
        created_at: at(20),
    };
    store.save_package(&package).await.expect("save");
    package.sha256 = crate::core::domain::ContentHash(vec![4; 32]);
    store.save_package(&package).await.expect("replace");
    let other = Package {
        platform: "windows".into(),
        ..package.clone()
    };
    store.save_package(&other).await.expect("save other");
    assert_eq!(
        store.load_packages().await.expect("load"),
        vec![package, other],
        "one entry per name, version, platform and arch; the last upload wins"
    );
}

async fn deleting_a_configuration_takes_its_rollouts(store: &dyn Store) {
    let rollouts = store.load_rollouts().await.expect("load");
    assert!(rollouts.iter().any(|r| r.configuration() == Some("prod")));
    store.delete_configuration("prod").await.expect("delete");
    assert!(store.load_configurations().await.expect("load").is_empty());
    let left = store.load_rollouts().await.expect("load");
    assert_eq!(
        left,
        rollouts
            .into_iter()
            .filter(|r| r.configuration() != Some("prod"))
            .collect::<Vec<_>>(),
        "its rollouts go with it; the upgrades stay"
    );
    store
        .delete_configuration("prod")
        .await
        .expect("deleting nothing is no error");
}

async fn deleting_a_package_version_takes_every_build(store: &dyn Store) {
    let before = store.load_packages().await.expect("load");
    assert_eq!(before.len(), 2);
    let kept = Package {
        version: "v0.117.0".into(),
        ..before[0].clone()
    };
    store.save_package(&kept).await.expect("save");
    store.delete_package("", "v0.116.0").await.expect("delete");
    assert_eq!(store.load_packages().await.expect("load"), vec![kept]);
}

/// A wave landing or a fleet reconnecting writes thousands of rows in one batch.
async fn fleet_sized_batches(store: &dyn Store) {
    const N: usize = 2_500;
    let before = load(store).await.len();
    let uids: Vec<_> = (0..N).map(|_| InstanceUid::new_v7()).collect();
    let entry = |i: usize| HistoryEntry {
        at: at(i as i64),
        from: None,
        to: Status::Connected,
        reason: format!("entry {i}"),
    };
    write(
        store,
        WriteBatch {
            agents: uids.iter().map(|u| Arc::new(sample_agent(*u))).collect(),
            history: uids.iter().map(|u| (*u, entry(0))).collect(),
            ..WriteBatch::default()
        },
    )
    .await;
    let loaded = load(store).await;
    assert_eq!(
        loaded.len(),
        before + N,
        "every agent of the batch is stored"
    );
    let last = loaded
        .iter()
        .find(|a| a.uid == uids[N - 1])
        .expect("the last agent of the batch is stored");
    assert_eq!(last.history.len(), 1);

    let mut rollout = Rollout {
        id: "r-fleet".into(),
        payload: Payload::Config(ConfigPayload {
            configuration: "fleet".into(),
            version: 1,
            hash: crate::core::domain::ContentHash::default(),
            previous_version: None,
        }),
        params: Params {
            initial: 100,
            multiplier: 10,
            maximum: 10_000,
            max_errors: 10,
            wave_timeout_ms: 300_000,
        },
        rollback: false,
        progress: Progress::new(),
        created_at: at(20),
        updated_at: at(20),
    };
    rollout.progress.state = State::Started;
    rollout.progress.agents = uids.iter().map(|u| (*u, Phase::Waiting)).collect();
    let rows: Vec<_> = uids.iter().map(|u| (*u, Some(Phase::Waiting))).collect();
    store.save_rollout(&rollout, &rows).await.expect("save");
    // The first 1,500 leave the rollout; the rest are sent.
    let (gone, sent) = uids.split_at(1_500);
    let sent_phase = Phase::Sent { wave: 1, at_ms: 9 };
    let mut changes: Vec<_> = gone.iter().map(|u| (*u, None)).collect();
    changes.extend(sent.iter().map(|u| (*u, Some(sent_phase))));
    for (uid, phase) in &changes {
        match phase {
            Some(p) => rollout.progress.agents.insert(*uid, *p),
            None => rollout.progress.agents.remove(uid),
        };
    }
    store
        .save_rollout(&rollout, &changes)
        .await
        .expect("save changes");
    let loaded = store.load_rollouts().await.expect("load");
    let found = loaded
        .iter()
        .find(|r| r.id == "r-fleet")
        .expect("rollout is stored");
    assert_eq!(found.progress.agents.len(), N - 1_500);
    assert!(found.progress.agents.values().all(|p| *p == sent_phase));
}

async fn admin_states_round_trip(store: &dyn Store) {
    let agents: Vec<AgentRecord> = AdminState::ALL
        .into_iter()
        .map(|admin_state| AgentRecord {
            admin_state,
            ..sample_agent(InstanceUid::new_v7())
        })
        .collect();
    // An agent pre-registered by uid: only what the admin gave, never heard from.
    let pre_registered = AgentRecord {
        admin_state: AdminState::NotFound,
        status: Status::Disconnected,
        labels: BTreeMap::from([("team".into(), "edge".into())]),
        ..AgentRecord::new(InstanceUid::new_v7(), at(30))
    };
    write(
        store,
        WriteBatch {
            agents: agents
                .iter()
                .chain([&pre_registered])
                .cloned()
                .map(Arc::new)
                .collect(),
            ..WriteBatch::default()
        },
    )
    .await;
    let loaded = load(store).await;
    for agent in agents.iter().chain([&pre_registered]) {
        let found = loaded
            .iter()
            .find(|a| a.uid == agent.uid)
            .expect("agent is stored");
        assert_eq!(
            found, agent,
            "an agent in {:?} reads back as written",
            agent.admin_state
        );
    }
    // Out of and back into maintenance: where it returns to is kept, both ways.
    let uid = agents[0].uid;
    for admin_state in [
        AdminState::Maintenance(Resume::Registered),
        AdminState::Registered,
        AdminState::Maintenance(Resume::Managed),
    ] {
        let moved = AgentRecord {
            admin_state,
            ..agents[0].clone()
        };
        write(
            store,
            WriteBatch {
                agents: vec![Arc::new(moved)],
                ..WriteBatch::default()
            },
        )
        .await;
        let loaded = load(store).await;
        let found = loaded.iter().find(|a| a.uid == uid).expect("stored");
        assert_eq!(
            found.admin_state, admin_state,
            "an upsert replaces the admin state"
        );
    }
}

fn config_with(body: &'static str) -> ConfigMap {
    ConfigMap {
        files: BTreeMap::from([(
            String::new(),
            ConfigFile {
                body: Bytes::from_static(body.as_bytes()),
                content_type: "text/yaml".into(),
            },
        )]),
    }
}

async fn flush(buffer: &WriteBuffer, store: &dyn Store) {
    assert!(
        buffer.flush(store, &Metrics::default()).await,
        "the flush writes"
    );
}

async fn stored_config(store: &dyn Store, config: &ConfigMap) -> bool {
    store
        .effective_config(&config.hash())
        .await
        .expect("read effective config")
        .is_some()
}

async fn deletes_leave_nothing_of_the_agent(store: &dyn Store, probe: &dyn Probe) {
    let (gone, also_gone, stays) = (
        InstanceUid::new_v7(),
        InstanceUid::new_v7(),
        InstanceUid::new_v7(),
    );
    let own = config_with("gone: own\n");
    let newer = config_with("gone: newer\n");
    let shared = config_with("shared\n");
    let set: ComponentSet = [("receivers", "filelog")].into_iter().collect();
    let set_hash = crate::core::domain::ContentHash(vec![0x5e; 32]);
    let with_config = |uid, config: &ConfigMap| AgentRecord {
        effective_config_hash: Some(config.hash()),
        components_hash: Some(set_hash.clone()),
        ..sample_agent(uid)
    };
    let entry = HistoryEntry {
        at: at(40),
        from: None,
        to: Status::Connected,
        reason: "connected".into(),
    };
    write(
        store,
        WriteBatch {
            agents: vec![
                Arc::new(with_config(gone, &own)),
                Arc::new(with_config(also_gone, &shared)),
                Arc::new(with_config(stays, &shared)),
            ],
            history: [gone, also_gone, stays]
                .into_iter()
                .map(|u| (u, entry.clone()))
                .collect(),
            effective_configs: [&own, &newer, &shared]
                .into_iter()
                .map(|c| (c.hash(), KeptConfig::Whole(c.clone())))
                .collect(),
            component_sets: vec![(set_hash.clone(), set.clone())],
            ..WriteBatch::default()
        },
    )
    .await;
    let mut rollout = Rollout {
        id: "r-delete".into(),
        payload: Payload::Config(ConfigPayload {
            configuration: "prod".into(),
            version: 2,
            hash: crate::core::domain::ContentHash::default(),
            previous_version: None,
        }),
        params: Params {
            initial: 1,
            multiplier: 2,
            maximum: 10,
            max_errors: 0,
            wave_timeout_ms: 60_000,
        },
        rollback: false,
        progress: Progress::new(),
        created_at: at(41),
        updated_at: at(41),
    };
    rollout.progress.state = State::Started;
    rollout.progress.agents = [gone, also_gone, stays]
        .into_iter()
        .map(|u| (u, Phase::Waiting))
        .collect();
    let rows: Vec<_> = [gone, also_gone, stays]
        .into_iter()
        .map(|u| (u, Some(Phase::Waiting)))
        .collect();
    store.save_rollout(&rollout, &rows).await.expect("save");
    for uid in [gone, also_gone, stays] {
        let rows = probe.rows_about(uid).await;
        assert_eq!(
            rows.len(),
            3,
            "the probe sees the record, history and rollout progress: {rows:?}"
        );
    }

    let buffer = WriteBuffer::default();
    // Changes still pending when the delete comes are dropped with the agent, and a config
    // only its unwritten record referred to goes too.
    buffer.agent(Arc::new(with_config(gone, &newer)));
    buffer.history(gone, entry.clone());
    buffer.delete_agent(gone);
    buffer.delete_agent(also_gone);
    flush(&buffer, store).await;
    // Released configs go a flush later (see `WriteBuffer`).
    flush(&buffer, store).await;

    for uid in [gone, also_gone] {
        assert_eq!(
            probe.rows_about(uid).await,
            Vec::<(String, u64)>::new(),
            "no row in any table mentions a deleted agent"
        );
    }
    assert!(
        !stored_config(store, &own).await,
        "an agent's own config goes with it"
    );
    assert!(
        !stored_config(store, &newer).await,
        "a config only a dropped record referred to goes too"
    );
    assert!(
        stored_config(store, &shared).await,
        "a config another agent refers to stays"
    );
    assert!(
        store
            .load_component_sets()
            .await
            .expect("load component sets")
            .contains(&(set_hash.clone(), set)),
        "component sets are shared by hash and stay"
    );
    assert_eq!(
        probe.rows_about(stays).await.len(),
        3,
        "other agents keep everything"
    );
    let loaded = load(store).await;
    assert!(loaded.iter().all(|a| a.uid != gone && a.uid != also_gone));
    let rollouts = store.load_rollouts().await.expect("load rollouts");
    let progress = &rollouts
        .iter()
        .find(|r| r.id == "r-delete")
        .expect("rollout is stored")
        .progress
        .agents;
    assert_eq!(
        progress.keys().collect::<Vec<_>>(),
        vec![&stays],
        "rollout progress keeps only agents that are not deleted"
    );

    // An agent that just reported a config may have its record in the next flush: a config
    // written in the same flush as a delete stays even if no stored record refers to it yet.
    let reporter = InstanceUid::new_v7();
    let fresh = config_with("fresh\n");
    write(
        store,
        WriteBatch {
            agents: vec![Arc::new(with_config(reporter, &fresh))],
            effective_configs: vec![(fresh.hash(), KeptConfig::Whole(fresh.clone()))],
            ..WriteBatch::default()
        },
    )
    .await;
    buffer.delete_agent(reporter);
    buffer.effective_config(fresh.hash(), KeptConfig::Whole(fresh.clone()));
    flush(&buffer, store).await;
    assert_eq!(
        probe.rows_about(reporter).await,
        Vec::<(String, u64)>::new()
    );
    assert!(
        stored_config(store, &fresh).await,
        "a config written in the flush of a delete stays"
    );
}

async fn a_write_after_a_delete_survives(store: &dyn Store, probe: &dyn Probe) {
    let uid = InstanceUid::new_v7();
    let old = HistoryEntry {
        at: at(50),
        from: None,
        to: Status::Connected,
        reason: "first life".into(),
    };
    write(
        store,
        WriteBatch {
            agents: vec![Arc::new(sample_agent(uid))],
            history: vec![(uid, old.clone())],
            ..WriteBatch::default()
        },
    )
    .await;
    let buffer = WriteBuffer::default();
    buffer.history(uid, old);
    buffer.delete_agent(uid);
    // The agent reconnects and is discovered anew before the flush.
    let reborn = AgentRecord {
        admin_state: AdminState::Discovered,
        ..AgentRecord::new(uid, at(60))
    };
    let new = HistoryEntry {
        at: at(60),
        from: None,
        to: Status::Connected,
        reason: "second life".into(),
    };
    buffer.agent(Arc::new(reborn.clone()));
    buffer.history(uid, new.clone());
    flush(&buffer, store).await;
    let loaded = load(store).await;
    let found = loaded
        .iter()
        .find(|a| a.uid == uid)
        .expect("the record written after the delete is stored");
    assert_eq!(
        found,
        &AgentRecord {
            history: Arc::from([new]),
            ..reborn
        },
        "only what came after the delete is kept"
    );
    assert_eq!(
        probe.rows_about(uid).await.len(),
        2,
        "a record and its new history, no rollout progress"
    );
}

async fn sync_waits_until_the_writes_are_stored(store: &dyn Store) {
    let metrics = Metrics::default();
    let buffer = WriteBuffer::default();
    let uid = InstanceUid::new_v7();
    buffer.agent(Arc::new(sample_agent(uid)));
    let mut synced = Box::pin(buffer.sync());
    assert!(
        (&mut synced).now_or_never().is_none(),
        "sync waits for a flush"
    );
    assert!(buffer.flush(store, &metrics).await);
    synced.await.expect("synced");
    assert!(
        load(store).await.iter().any(|a| a.uid == uid),
        "once sync returns, the write is stored"
    );

    // Nothing pending: the next flush ends the wait and writes nothing.
    let flushes = metrics.store_flushes.get();
    let synced = buffer.sync();
    assert!(buffer.flush(store, &metrics).await);
    synced.await.expect("synced");
    assert_eq!(
        metrics.store_flushes.get(),
        flushes,
        "a flush with nothing pending does not write"
    );

    // A flush that ended before the call does not count.
    buffer.delete_agent(uid);
    assert!(buffer.flush(store, &metrics).await);
    let mut synced = Box::pin(buffer.sync());
    assert!((&mut synced).now_or_never().is_none());
    assert!(buffer.flush(store, &metrics).await);
    synced.await.expect("synced");

    drop(buffer);
    let buffer = WriteBuffer::default();
    let synced = buffer.sync();
    drop(buffer);
    assert!(
        matches!(synced.await, Err(StoreError::Closed)),
        "a buffer dropped before its flush fails the wait"
    );
}

async fn expected_agents_by_id(store: &dyn Store) {
    assert!(store.load_expected().await.expect("load").is_empty());
    let mut web = Expected {
        id: "web-1".into(),
        identifying_attributes: BTreeMap::from([
            ("service.name".into(), "otelcol".into()),
            ("host.name".into(), "web-1".into()),
        ]),
        labels: BTreeMap::from([
            ("env".into(), "prod".into()),
            ("région".into(), "ça".into()),
        ]),
        created_at: at(70),
    };
    let db = Expected {
        id: "db-1".into(),
        identifying_attributes: BTreeMap::from([("host.name".into(), "db-1".into())]),
        labels: BTreeMap::new(),
        created_at: at(71),
    };
    store.save_expected(&web).await.expect("save");
    store.save_expected(&db).await.expect("save");
    web.labels.insert("tier".into(), "front".into());
    store.save_expected(&web).await.expect("replace");
    assert_eq!(
        store.load_expected().await.expect("load"),
        vec![web.clone(), db.clone()],
        "pre-registrations read back by id, oldest first, the last save winning"
    );
    assert!(store.delete_expected("db-1").await.expect("delete"));
    assert!(
        !store.delete_expected("db-1").await.expect("delete"),
        "a second delete finds nothing"
    );
    assert_eq!(store.load_expected().await.expect("load"), vec![web]);
}

async fn ignore_rules_by_id(store: &dyn Store) {
    assert!(store.load_ignore_rules().await.expect("load").is_empty());
    let mut test = IgnoreRule {
        id: "test-hosts".into(),
        selector: Selector::parse("env in (test,dev),!keep").expect("selector"),
        created_at: at(80),
    };
    let ci = IgnoreRule {
        id: "ci".into(),
        selector: Selector::parse("host.name=ci-runner").expect("selector"),
        created_at: at(81),
    };
    store.save_ignore_rule(&test).await.expect("save");
    store.save_ignore_rule(&ci).await.expect("save");
    test.selector = Selector::parse("env=test").expect("selector");
    store.save_ignore_rule(&test).await.expect("replace");
    assert_eq!(
        store.load_ignore_rules().await.expect("load"),
        vec![test.clone(), ci.clone()],
        "ignore rules read back by id, oldest first, the last save winning"
    );
    assert!(
        store
            .delete_ignore_rule("test-hosts")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_ignore_rule("test-hosts")
            .await
            .expect("delete")
    );
    assert_eq!(store.load_ignore_rules().await.expect("load"), vec![ci]);
}

async fn api_keys_by_id(store: &dyn Store) {
    let key = |id: &str, role: Role, n: u8| ApiKey {
        id: id.into(),
        name: format!("{id} key"),
        role,
        hash: KeyHash([n; 32]),
        created_at: at(n.into()),
        expires_at: (n == 2).then(|| at(100)),
        last_used_at: None,
    };
    assert!(store.load_api_keys().await.expect("load").is_empty());
    let (viewer, admin) = (key("k1", Role::Viewer, 1), key("k2", Role::Admin, 2));
    store.save_api_key(&admin).await.expect("save");
    store.save_api_key(&viewer).await.expect("save");
    assert_eq!(
        store.load_api_keys().await.expect("load"),
        [viewer.clone(), admin.clone()],
        "oldest first, every field kept"
    );
    assert!(
        store
            .save_api_key(&key("k3", Role::Operator, 1))
            .await
            .is_err(),
        "two keys with one hash"
    );
    assert!(
        store
            .save_api_key(&key("k1", Role::Operator, 3))
            .await
            .is_err(),
        "two keys with one id"
    );
    store
        .touch_api_keys(&[("k1".into(), at(50)), ("gone".into(), at(50))])
        .await
        .expect("touch");
    store
        .touch_api_keys(&[("k1".into(), at(40))])
        .await
        .expect("an earlier use does not move it back");
    let loaded = store.load_api_keys().await.expect("load");
    assert_eq!(loaded[0].last_used_at, Some(at(50)));
    assert_eq!(loaded[1].last_used_at, None);
    assert!(store.delete_api_key("k1").await.expect("delete"));
    assert!(!store.delete_api_key("k1").await.expect("delete"));
    assert_eq!(store.load_api_keys().await.expect("load"), [admin]);
    assert!(store.delete_api_key("k2").await.expect("delete"));
}
