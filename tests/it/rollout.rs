use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::sim::{FAIL_MARKER, SimAgent, Via};

const GOOD: &str = "receivers:\n  otlp:\n    protocols:\n      grpc:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n";

const NEEDS_KAFKA: &str = "receivers:\n  otlp:\nexporters:\n  debug:\n  kafka/eu:\n    brokers: [kafka:9092]\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug, kafka/eu]\n";

fn yaml(extra: &str) -> String {
    format!("{GOOD}# {extra}\n")
}

async fn put_config(server: &TestServer, name: &str, selector: &str, body: &str) -> (u64, String) {
    let request = json!({
        "selector": selector,
        "priority": 0,
        "files": {"collector.yaml": {"body": body, "content_type": "text/yaml"}},
    });
    let (status, reply) = server
        .put(
            &format!("/api/v1/configurations/{name}"),
            &request.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    (
        reply["version"].as_u64().unwrap(),
        reply["hash"].as_str().unwrap().to_string(),
    )
}

async fn fleet(
    server: &TestServer,
    n: usize,
    via: impl Fn(usize) -> Via,
    labels: &[(&str, &str)],
) -> Vec<SimAgent> {
    let agents: Vec<_> = (0..n)
        .map(|i| SimAgent::spawn(server, via(i), "otelcol", labels, None))
        .collect();
    server.wait_connected(n as i64).await;
    agents
}

fn mixed(i: usize) -> Via {
    if i.is_multiple_of(2) {
        Via::WebSocket
    } else {
        Via::Http
    }
}

fn sent(r: &Value) -> u64 {
    let c = &r["counts"];
    c["completed"].as_u64().unwrap()
        + c["errors"].as_u64().unwrap()
        + c["configuring"].as_u64().unwrap()
}

#[tokio::test]
async fn fifty_mixed_agents_roll_out_in_waves_of_3_15_32() {
    let server = TestServer::start().await;
    let agents = fleet(&server, 50, mixed, &[("env", "prod")]).await;
    let (_, hash) = put_config(&server, "prod", "env=prod", GOOD).await;
    let id = server
        .start_rollout(
            json!({"configuration": "prod", "initial": 3, "multiplier": 5, "maximum": 100}),
        )
        .await;

    let mut saw_pending = false;
    let mut most_by_wave = [0u64; 4];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let r = server.rollout(&id).await;
        let wave = r["wave"].as_u64().unwrap() as usize;
        if wave < 4 {
            most_by_wave[wave] = most_by_wave[wave].max(sent(&r));
        }
        saw_pending |= server.fleet().await.by_status["pending"] > 0;
        if r["state"] == "stable" {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(last["wave"], 3, "{last}");
    assert!(
        most_by_wave[1] <= 3 && most_by_wave[2] <= 18,
        "{most_by_wave:?}"
    );
    assert_eq!(last["counts"]["completed"], 50);
    assert_eq!(last["counts"]["errors"], 0);
    assert!(
        saw_pending,
        "agents waiting for a later wave show as pending"
    );

    let hash_bytes = hex::decode(&hash).unwrap();
    for agent in &agents {
        assert_eq!(
            agent.times_received(&hash_bytes),
            1,
            "each agent is sent the version once"
        );
        let a = server.wait_status(&agent.uid, "connected").await.agent;
        let cfg = a.configuration.expect("assigned");
        assert_eq!(
            (cfg.name.as_str(), cfg.current_version, cfg.target_version),
            ("prod", Some(1), Some(1))
        );
        assert_eq!(a.remote_config.unwrap().hash, hash);
    }
    // An agent that starts matching after the rollout gets the version directly.
    let late = SimAgent::spawn(&server, Via::Http, "otelcol", &[("env", "prod")], None);
    server
        .wait_agent(&late.uid, |a| {
            a.agent
                .remote_config
                .as_ref()
                .is_some_and(|rc| rc.hash == hash && rc.status == "applied")
        })
        .await;
}

#[tokio::test]
async fn a_failing_version_stops_at_max_errors_and_leaves_the_rest_untouched() {
    let server = TestServer::start().await;
    let agents = fleet(&server, 20, mixed, &[("env", "prod")]).await;
    let (_, hash) = put_config(&server, "prod", "env=prod", &yaml(FAIL_MARKER)).await;
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 3, "max_errors": 0}))
        .await;
    server.wait_rollout(&id, "error").await;
    // The rest of the first wave may still be applying when it stops.
    let deadline = tokio::time::Instant::now() + WAIT;
    let r = loop {
        let r = server.rollout(&id).await;
        if r["counts"]["configuring"] == 0 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r["state"], "error");
    assert_eq!(r["counts"]["errors"], 3, "{r}");
    assert_eq!(r["counts"]["completed"], 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let hash_bytes = hex::decode(&hash).unwrap();
    let reached: Vec<_> = agents
        .iter()
        .filter(|a| a.times_received(&hash_bytes) > 0)
        .collect();
    assert_eq!(
        reached.len(),
        3,
        "no agent beyond the first wave was sent it"
    );
    for agent in &reached {
        let a = server.wait_status(&agent.uid, "error").await.agent;
        assert!(
            a.status_reason.contains("invalid configuration"),
            "{}",
            a.status_reason
        );
    }
    assert_eq!(
        server.fleet().await.by_status["pending"],
        0,
        "waiting agents leave pending"
    );
    assert_eq!(server.fleet().await.by_status["connected"], 17);
}

#[tokio::test]
async fn rollback_returns_the_agents_that_took_a_failing_version() {
    let server = TestServer::start().await;
    let agents = fleet(&server, 8, mixed, &[("env", "prod")]).await;
    let (_, good) = put_config(&server, "prod", "env=prod", GOOD).await;
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 8}))
        .await;
    server.wait_rollout(&id, "stable").await;
    let (version, _) = put_config(&server, "prod", "env=prod", &yaml(FAIL_MARKER)).await;
    assert_eq!(version, 2);
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 2, "rollback_on_failure": true}))
        .await;
    let r = server.wait_rollout(&id, "error").await;
    assert_eq!(r["previous_version"], 1);
    let good_bytes = hex::decode(&good).unwrap();
    for agent in &agents {
        server
            .wait_agent(&agent.uid, |a| {
                a.agent
                    .remote_config
                    .as_ref()
                    .is_some_and(|rc| rc.hash == good && rc.status == "applied")
            })
            .await;
        assert_eq!(
            agent.seen.lock().applied.as_deref(),
            Some(good_bytes.as_slice())
        );
    }
    let rolled_back = agents
        .iter()
        .filter(|a| a.times_received(&good_bytes) == 2)
        .count();
    assert_eq!(
        rolled_back, 2,
        "the two that took version 2 were sent version 1 again"
    );
}

#[tokio::test]
async fn pause_holds_the_next_wave_and_resume_finishes() {
    let server = TestServer::start().await;
    let _agents = fleet(&server, 12, mixed, &[("env", "prod")]).await;
    put_config(&server, "prod", "env=prod", GOOD).await;
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 2, "multiplier": 2}))
        .await;
    let client = server.client();
    let paused: Value = client
        .post(server.api_url(&format!("/api/v1/rollouts/{id}/pause")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paused["state"], "paused", "{paused}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = server.rollout(&id).await;
    assert_eq!(r["state"], "paused");
    assert!(sent(&r) <= 2, "only the first wave went out: {r}");
    let response = client
        .post(server.api_url(&format!("/api/v1/rollouts/{id}/pause")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409, "pausing twice is a conflict");
    client
        .post(server.api_url(&format!("/api/v1/rollouts/{id}/resume")))
        .send()
        .await
        .unwrap();
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["counts"]["completed"], 12);
}

#[tokio::test]
async fn a_restart_mid_rollout_resumes_in_the_same_wave_without_resending() {
    // Restored rollouts wait 2.5 heartbeats for agents to come back: keep that short here.
    let quick = || Options {
        heartbeat_interval: Some(1),
        ..Options::default()
    };
    let server = TestServer::with(quick()).await;
    let agents = fleet(&server, 12, |_| Via::WebSocket, &[("env", "prod")]).await;
    let (_, hash) = put_config(&server, "prod", "env=prod", GOOD).await;
    let id = server
        .start_rollout(
            json!({"configuration": "prod", "initial": 3, "multiplier": 1, "maximum": 3}),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let before = loop {
        let r = server.rollout(&id).await;
        if r["wave"].as_u64().unwrap() >= 2 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (opamp, api) = (server.opamp, server.api);
    let dir = server.stop().await;
    let server = TestServer::restart_at(dir, quick(), opamp, api).await;
    let after = server.rollout(&id).await;
    assert_eq!(after["state"], "started", "{after}");
    assert!(
        after["wave"].as_u64() >= before["wave"].as_u64(),
        "{before} {after}"
    );
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["counts"]["completed"], 12, "{r}");
    let hash_bytes = hex::decode(&hash).unwrap();
    for agent in &agents {
        assert_eq!(
            agent.times_received(&hash_bytes),
            1,
            "no agent is sent the same config twice"
        );
    }
}

#[tokio::test]
async fn incompatible_agents_are_skipped_with_the_reason() {
    let server = TestServer::start().await;
    let full = vec![
        ("receivers", "otlp"),
        ("exporters", "debug"),
        ("exporters", "kafka"),
    ];
    let lacking = vec![("receivers", "otlp"), ("exporters", "debug")];
    let able: Vec<_> = (0..3)
        .map(|i| {
            SimAgent::spawn(
                &server,
                mixed(i),
                "otelcol",
                &[("env", "prod")],
                Some(full.clone()),
            )
        })
        .collect();
    let unable: Vec<_> = (0..3)
        .map(|i| {
            SimAgent::spawn(
                &server,
                mixed(i),
                "otelcol",
                &[("env", "prod")],
                Some(lacking.clone()),
            )
        })
        .collect();
    server.wait_connected(6).await;
    let (_, hash) = put_config(&server, "prod", "env=prod", NEEDS_KAFKA).await;
    let (_, v) = server.get("/api/v1/configurations/prod/versions/1").await;
    assert!(
        v["components"]
            .as_array()
            .unwrap()
            .contains(&json!("exporters/kafka")),
        "{v}"
    );
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 10}))
        .await;
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["counts"]["total"], 3, "{r}");
    assert_eq!(
        r["counts"]["skipped"],
        json!({"agent lacks components: exporters/kafka": 3}),
        "{r}"
    );
    assert_eq!(r["skipped"].as_array().unwrap().len(), 3, "{r}");
    let hash_bytes = hex::decode(&hash).unwrap();
    for agent in &unable {
        let a = server.wait_status(&agent.uid, "incompatible").await.agent;
        assert!(
            a.status_reason.contains("exporters/kafka"),
            "{}",
            a.status_reason
        );
        assert_eq!(a.configuration.unwrap().compatibility, "incompatible");
        assert_eq!(agent.times_received(&hash_bytes), 0);
    }
    for agent in &able {
        assert_eq!(agent.times_received(&hash_bytes), 1);
        let a = server.wait_status(&agent.uid, "connected").await.agent;
        assert_eq!(a.configuration.unwrap().compatibility, "compatible");
    }
}

#[tokio::test]
async fn configurations_are_versioned_idempotently_and_validated() {
    let server = TestServer::start().await;
    let (v1, h1) = put_config(&server, "edge", "tier in (edge,gateway),!canary", GOOD).await;
    let (again, h_again) =
        put_config(&server, "edge", "tier in (edge,gateway),!canary", GOOD).await;
    assert_eq!(
        (v1, again),
        (1, 1),
        "unchanged content makes no new version"
    );
    assert_eq!(h1, h_again);
    let (v2, h2) = put_config(&server, "edge", "tier=edge", &yaml("v2")).await;
    assert_eq!(v2, 2);
    assert_ne!(h1, h2);
    let (_, c) = server.get("/api/v1/configurations/edge").await;
    assert_eq!(c["versions"].as_array().unwrap().len(), 2);
    assert_eq!(c["selector"], "tier=edge");
    let (status, _) = server.get("/api/v1/configurations/edge/versions/3").await;
    assert_eq!(status, 404);
    for (name, body) in [
        ("Bad Name", json!({"files": {"c.yaml": {"body": GOOD}}})),
        (
            "ok",
            json!({"selector": "env in (", "files": {"c.yaml": {"body": GOOD}}}),
        ),
        ("ok", json!({"files": {}})),
        (
            "ok",
            json!({"files": {"c.yaml": {"body": "receivers: [unclosed", "content_type": "text/yaml"}}}),
        ),
        (
            "ok",
            json!({"files": {"c.yaml": {"body": GOOD}}, "colour": "red"}),
        ),
    ] {
        let (status, reply) = server
            .put(&format!("/api/v1/configurations/{name}"), &body.to_string())
            .await;
        assert_eq!(status, 400, "{name} {body}: {reply}");
        assert!(reply["error"].is_string());
    }
    let response = server
        .client()
        .post(server.api_url("/api/v1/rollouts"))
        .json(&json!({"configuration": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn an_unknown_component_hash_is_asked_for_once_and_remembered() {
    use corral::edge::protocol::proto;
    let server = TestServer::start().await;
    let uid = new_uid();
    let hash = bytes::Bytes::from_static(&[0x5a; 32]);
    let only_hash = proto::AvailableComponents {
        components: Default::default(),
        hash: hash.clone(),
    };
    let mut first = full_report(&uid, 1, "otelcol");
    first.capabilities |= 0x4000;
    first.available_components = Some(only_hash.clone());
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let reply = agent.exchange(&first).await;
    assert_eq!(reply.flags & 0x2, 0x2, "ReportAvailableComponents");
    let mut hb = heartbeat(&uid, 2);
    hb.available_components = Some(only_hash.clone());
    assert_eq!(
        agent.exchange(&hb).await.flags & 0x2,
        0,
        "asked once per connection"
    );

    let mut full = heartbeat(&uid, 3);
    let mut components = std::collections::BTreeMap::new();
    components.insert(
        "exporters".to_string(),
        proto::ComponentDetails {
            sub_component_map: [("debug".to_string(), proto::ComponentDetails::default())].into(),
            ..Default::default()
        },
    );
    full.available_components = Some(proto::AvailableComponents { components, hash });
    agent.exchange(&full).await;
    put_config(&server, "prod", "", NEEDS_KAFKA).await;
    let a = server.agent(&uid).await.unwrap().agent;
    let config = a.configuration.unwrap();
    assert_eq!(
        config.compatibility, "incompatible",
        "judged against the latest version before any rollout"
    );
    assert_eq!(
        config.incompatible_reason.as_deref(),
        Some(
            "configuration prod v1 needs components the agent lacks: exporters/kafka, receivers/otlp"
        ),
        "an incompatible configuration always says why"
    );

    // Another agent with the same set sends only the hash: it is known now.
    let other = new_uid();
    let mut msg = full_report(&other, 1, "otelcol");
    msg.capabilities |= 0x4000;
    msg.available_components = Some(only_hash);
    let mut agent2 = WsAgent::connect(&server.ws_url()).await;
    assert_eq!(agent2.exchange(&msg).await.flags & 0x2, 0);
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 5}))
        .await;
    server.wait_rollout(&id, "stable").await;
    for uid in [&uid, &other] {
        let a = server.wait_status(uid, "incompatible").await.agent;
        assert!(
            a.status_reason.contains("exporters/kafka"),
            "{}",
            a.status_reason
        );
        assert!(
            !a.status_reason.contains("exporters/debug"),
            "{}",
            a.status_reason
        );
    }
}

#[tokio::test]
async fn a_failed_version_is_sent_again_only_when_an_admin_asks() {
    use corral::edge::protocol::proto::{self, RemoteConfigStatuses};
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let mut first = full_report(&uid, 1, "otelcol");
    first
        .agent_description
        .as_mut()
        .unwrap()
        .non_identifying_attributes
        .push(proto::KeyValue {
            key: "env".into(),
            value: Some(proto::AnyValue {
                value: Some(proto::any_value::Value::StringValue("prod".into())),
            }),
        });
    agent.exchange(&first).await;
    put_config(&server, "prod", "env=prod", GOOD).await;
    let id = server.start_rollout(json!({"configuration": "prod"})).await;
    let pushed = agent.recv().await;
    let config = pushed.remote_config.expect("the rollout pushes the config");
    let mut failed = heartbeat(&uid, 2);
    failed.remote_config_status = Some(remote_config_status(
        RemoteConfigStatuses::Failed,
        &config.config_hash,
        "port in use",
    ));
    agent.exchange(&failed).await;
    server.wait_rollout(&id, "error").await;
    let a = server.wait_status(&uid, "error").await;
    assert!(a.agent.status_reason.contains("port in use"));
    // Heartbeats do not bring it back.
    for seq in 3..6 {
        assert!(
            agent
                .exchange(&heartbeat(&uid, seq))
                .await
                .remote_config
                .is_none()
        );
    }
    let path = format!("/api/v1/agents/{}/retry-config", uuid_str(&uid));
    let client = server.client();
    let response = client.post(server.api_url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let again = agent.recv().await.remote_config.expect("sent once more");
    assert_eq!(again.config_hash, config.config_hash);
    let mut applied = heartbeat(&uid, 6);
    applied.remote_config_status = Some(remote_config_status(
        RemoteConfigStatuses::Applied,
        &config.config_hash,
        "",
    ));
    agent.exchange(&applied).await;
    server.wait_status(&uid, "connected").await;
    let response = client.post(server.api_url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 409, "nothing failed, nothing to retry");
}

#[tokio::test]
async fn the_cli_applies_a_configuration_and_watches_its_rollout() {
    let server = TestServer::start().await;
    let _agents = fleet(&server, 6, mixed, &[("env", "prod")]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collector.yaml");
    std::fs::write(&file, GOOD).unwrap();
    let file = file.to_str().unwrap();
    let out = succeeded(
        server
            .cli(&[
                "config",
                "apply",
                "prod",
                "-f",
                file,
                "--selector",
                "env=prod",
            ])
            .await,
    );
    assert!(out.contains("prod: version 1 created"), "{out}");
    let out = succeeded(
        server
            .cli(&[
                "config",
                "apply",
                "prod",
                "-f",
                file,
                "--selector",
                "env=prod",
            ])
            .await,
    );
    assert!(out.contains("unchanged at version 1"), "{out}");
    let out = succeeded(server.cli(&["config", "list"]).await);
    assert!(out.contains("env=prod") && out.contains(" 6 "), "{out}");
    let out = succeeded(
        server
            .cli(&[
                "rollout",
                "start",
                "prod",
                "--initial",
                "2",
                "--multiplier",
                "2",
            ])
            .await,
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let out = succeeded(server.cli(&["rollout", "status", &id, "--watch"]).await);
    assert!(out.contains("stable"), "{out}");
    assert!(out.contains("6 of 6 completed"), "{out}");
    let out = succeeded(server.cli(&["rollout", "list"]).await);
    assert!(out.contains(&id) && out.contains("6/6"), "{out}");
}

/// With no rollout running, the controller looks only at agents whose records changed. An
/// agent that connects after the rollout went stable, and one relabelled into the selector,
/// must still get the version; agents already on it must not get it again.
#[tokio::test]
async fn agents_that_match_after_a_stable_rollout_get_the_version_once() {
    let server = TestServer::start().await;
    let agents = fleet(&server, 4, mixed, &[("env", "prod")]).await;
    let bystander = SimAgent::spawn(&server, Via::WebSocket, "otelcol", &[("env", "dev")], None);
    server.wait_connected(5).await;
    let (_, hash) = put_config(&server, "prod", "env=prod", GOOD).await;
    let hash = hex::decode(hash).unwrap();
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 4, "multiplier": 2}))
        .await;
    server.wait_rollout(&id, "stable").await;

    let late = SimAgent::spawn(&server, Via::WebSocket, "otelcol", &[("env", "prod")], None);
    let late_http = SimAgent::spawn(&server, Via::Http, "otelcol", &[("env", "prod")], None);
    let path = format!("/api/v1/agents/{}/labels", uuid_str(&bystander.uid));
    let (status, _) = server.put(&path, r#"{"labels": {"env": "prod"}}"#).await;
    assert_eq!(status, 200);
    for agent in [&late, &late_http, &bystander] {
        let mut waited = 0;
        while agent.times_received(&hash) == 0 {
            assert!(
                waited < 100,
                "an agent that matched later never got the version"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    for agent in agents.iter().chain([&late, &late_http, &bystander]) {
        assert_eq!(agent.times_received(&hash), 1, "sent once");
    }
}
