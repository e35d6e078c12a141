//! The fleet admin's workflow through the real server and the real CLI: configuration changes
//! that keep what they leave out and say whom they move, no push outside a rollout, versions and
//! diffs, deletes with their refusals, and rollouts that say honestly whom they reach.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::sim::{FAIL_MARKER, SimAgent, Via};

const GOOD: &str = "receivers:\n  otlp:\n    protocols:\n      grpc:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n";

const NEEDS_KAFKA: &str = "receivers:\n  otlp:\nexporters:\n  debug:\n  kafka/eu:\n    brokers: [kafka:9092]\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug, kafka/eu]\n";

fn yaml(extra: &str) -> String {
    format!("{GOOD}# {extra}\n")
}

async fn put(server: &TestServer, name: &str, body: Value) -> (u16, Value) {
    server
        .put(&format!("/api/v1/configurations/{name}"), &body.to_string())
        .await
}

fn files(body: &str) -> Value {
    json!({"collector.yaml": {"body": body, "content_type": "text/yaml"}})
}

fn spawn(server: &TestServer, n: usize, labels: &[(&str, &str)]) -> Vec<SimAgent> {
    (0..n)
        .map(|_| SimAgent::spawn(server, Via::WebSocket, "otelcol", labels, None))
        .collect()
}

/// `n` WebSocket agents labelled env=prod, connected, and a configuration prod (one version,
/// no rollout yet) assigned to them.
async fn prod_fleet(server: &TestServer, n: usize) -> Vec<SimAgent> {
    let agents = spawn(server, n, &[("env", "prod")]);
    server.wait_connected(n as i64).await;
    let (status, body) = put(
        server,
        "prod",
        json!({"selector": "env=prod", "files": files(GOOD)}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    agents
}

/// Waits until `check` holds for the value `read` gives, or fails with the last value.
async fn eventually<F, Fut>(what: &str, mut read: F, check: impl Fn(&Value) -> bool) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = read().await;
        if check(&value) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {value}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn apply_keeps_what_it_leaves_out_and_asks_before_moving_agents_which_then_wait_for_a_rollout()
 {
    let server = TestServer::start().await;
    let _prod = spawn(&server, 4, &[("env", "prod")]);
    let staging = spawn(&server, 3, &[("env", "staging")]);
    server.wait_connected(7).await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = write(&dir, "collector.yaml", &yaml("prod one"));
    let args = |extra: &[&str]| {
        let mut all = vec!["config", "apply", "prod", "-f", v1.as_str()];
        all.extend_from_slice(extra);
        all.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let server = &server;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            server.cli(&args).await
        }
    };
    let out = succeeded(run(args(&["--selector", "env=prod", "--priority", "5"])).await);
    assert!(out.contains("prod: version 1 created"), "{out}");
    let (status, _) = put(
        &server,
        "staging",
        json!({"selector": "env=staging", "files": files(&yaml("staging"))}),
    )
    .await;
    assert_eq!(status, 200);
    for name in ["prod", "staging"] {
        let id = server
            .start_rollout(json!({"configuration": name, "initial": 10}))
            .await;
        server.wait_rollout(&id, "stable").await;
    }

    // New content, no selector or priority given: both stay.
    let v2 = write(&dir, "collector.yaml", &yaml("prod two"));
    let out = succeeded(server.cli(&["config", "apply", "prod", "-f", &v2]).await);
    assert!(out.contains("prod: changes content"), "{out}");
    assert!(
        out.contains("-# prod one") && out.contains("+# prod two"),
        "{out}"
    );
    assert!(out.contains("no agent moves"), "{out}");
    assert!(out.contains("prod: version 2 created"), "{out}");
    let (_, prod) = server.get("/api/v1/configurations/prod").await;
    assert_eq!(
        (prod["selector"].as_str(), prod["priority"].as_i64()),
        (Some("env=prod"), Some(5))
    );
    let out = succeeded(server.cli(&["config", "apply", "prod", "-f", &v2]).await);
    assert!(out.contains("prod unchanged at version 2"), "{out}");

    // Widening the selector would move the staging agents: shown, asked, not done unasked.
    let widen = ["config", "apply", "prod", "--selector", ""];
    let dry = succeeded(server.cli(&[&widen[..], &["--dry-run"]].concat()).await);
    assert!(
        dry.contains("selector: 'env=prod' -> '' (every agent)"),
        "{dry}"
    );
    assert!(dry.contains("3 agents change configuration"), "{dry}");
    assert!(dry.contains("3 from staging to prod"), "{dry}");
    for agent in &staging {
        assert!(
            dry.contains(&uuid_str(&agent.uid)),
            "a sample names them: {dry}"
        );
    }
    assert!(dry.contains("dry run: nothing stored"), "{dry}");
    let refused = server.cli(&widen).await;
    assert!(!refused.ok, "no answer on stdin is no");
    assert!(
        refused.stderr.contains("nothing changed"),
        "{}",
        refused.stderr
    );
    let (_, prod) = server.get("/api/v1/configurations/prod").await;
    assert_eq!(prod["selector"], "env=prod", "neither run changed it");

    let out = succeeded(server.cli(&[&widen[..], &["--yes"]].concat()).await);
    assert!(
        out.contains("prod: version 2 kept, selector changed"),
        "{out}"
    );
    let (_, v) = server.get("/api/v1/configurations/prod/versions/2").await;
    let prod_v2 = hex::decode(v["hash"].as_str().unwrap()).unwrap();
    for agent in &staging {
        let a = server.wait_status(&agent.uid, "pending").await.agent;
        assert!(
            a.status_reason.contains("waits for a rollout of prod"),
            "{}",
            a.status_reason
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    for agent in &staging {
        assert_eq!(
            agent.times_received(&prod_v2),
            0,
            "no push outside a rollout"
        );
    }

    // A rollout of prod takes them, in waves, with the prod agents still on v1.
    let out = succeeded(server.cli(&["rollout", "start", "prod"]).await);
    assert!(
        out.contains("7 agents matched, 7 eligible"),
        "the answer says whom it reaches: {out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["counts"]["completed"], 7, "{r}");
    for agent in &staging {
        assert_eq!(agent.times_received(&prod_v2), 1);
        server.wait_status(&agent.uid, "connected").await;
    }

    let out = succeeded(server.cli(&["config", "diff", "prod", "1", "2"]).await);
    assert!(out.contains("--- prod v1/collector.yaml"), "{out}");
    assert!(out.contains("-# prod one\n+# prod two"), "{out}");
    let out = succeeded(server.cli(&["config", "versions", "prod"]).await);
    assert!(out.contains('1') && out.contains('2'), "{out}");
    let out = succeeded(server.cli(&["config", "show", "prod", "-o", "json"]).await);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["latest_version"], 2);
    let out = succeeded(
        server
            .cli(&["config", "show", "prod", "--version", "1"])
            .await,
    );
    assert!(out.contains("# prod one"), "{out}");
}

#[tokio::test]
async fn configurations_that_cannot_be_used_are_refused() {
    let server = TestServer::start().await;
    let agent = SimAgent::spawn(&server, Via::WebSocket, "otelcol", &[], None);
    server.wait_connected(1).await;
    let (status, body) = put(&server, "blank", json!({"files": files(" \n\n")})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("empty"), "{body}");
    let (status, body) = put(&server, "new", json!({"selector": "env=x"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("give its files"),
        "{body}"
    );
    let path = format!("/api/v1/agents/{}/labels", uuid_str(&agent.uid));
    let (status, body) = server
        .put(&path, r#"{"labels": {"configuration": "nope"}}"#)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("does not exist"),
        "{body}"
    );
    let (status, body) = server
        .get("/api/v1/configurations/nope/diff?from=1&to=2")
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn deletes_are_refused_while_in_use_unless_forced() {
    let server = TestServer::start().await;
    let agents = prod_fleet(&server, 2).await;
    let (status, _) = put(
        &server,
        "unused",
        json!({"selector": "env=none", "files": files(GOOD)}),
    )
    .await;
    assert_eq!(status, 200);

    let (status, body) = server.delete("/api/v1/configurations/prod").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("2 agents are assigned"),
        "{body}"
    );
    let out = server.cli(&["config", "delete", "prod"]).await;
    assert!(
        !out.ok && out.stderr.contains("2 agents are assigned"),
        "{}",
        out.stderr
    );
    let out = succeeded(server.cli(&["config", "delete", "prod", "--force"]).await);
    assert!(out.contains("configuration prod deleted"), "{out}");
    let (status, _) = server.get("/api/v1/configurations/prod").await;
    assert_eq!(status, 404);
    for agent in &agents {
        let a = server.agent(&agent.uid).await.unwrap().agent;
        assert!(a.configuration.is_none());
    }
    let (status, _) = server.delete("/api/v1/configurations/unused").await;
    assert_eq!(status, 204, "nobody uses it: no force needed");
    let (status, body) = server.delete("/api/v1/configurations/unused").await;
    assert_eq!(status, 404, "{body}");

    // A package version: refused while a rollout offers it, deleted once none does.
    for version in ["v9.9.9", "v9.9.10"] {
        let response = server
            .client()
            .post(server.api_url(&format!("/api/v1/packages?version={version}")))
            .body(vec![7u8; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let upgrade = |version: &str| json!({"package": {"name": "", "version": version}, "selector": "env=nobody"});
    let id = server.start_rollout(upgrade("v9.9.9")).await;
    server.wait_rollout(&id, "stable").await;
    let (status, body) = server.delete("/api/v1/packages?version=v9.9.9").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&id), "{body}");
    let out = server
        .cli(&["package", "delete", "--version", "v9.9.9"])
        .await;
    assert!(
        !out.ok && out.stderr.contains("still offers"),
        "{}",
        out.stderr
    );
    server.start_rollout(upgrade("v9.9.10")).await;
    let out = succeeded(
        server
            .cli(&["package", "delete", "--version", "v9.9.9"])
            .await,
    );
    assert!(out.contains("deleted"), "{out}");
    let (_, list) = server.get("/api/v1/packages").await;
    let left: Vec<&str> = list["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["version"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["v9.9.10"]);
    let (status, _) = server.delete("/api/v1/packages?version=v9.9.9").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_rollout_with_no_eligible_agent_says_so_and_lists_them() {
    let server = TestServer::start().await;
    let lacking = Some(vec![("receivers", "otlp"), ("exporters", "debug")]);
    let agents: Vec<_> = (0..4)
        .map(|_| {
            SimAgent::spawn(
                &server,
                Via::WebSocket,
                "otelcol",
                &[("env", "prod")],
                lacking.clone(),
            )
        })
        .collect();
    server.wait_connected(4).await;
    let (status, _) = put(
        &server,
        "prod",
        json!({"selector": "env=prod", "files": files(NEEDS_KAFKA)}),
    )
    .await;
    assert_eq!(status, 200);
    let id = server.start_rollout(json!({"configuration": "prod"})).await;
    let r = eventually(
        "every agent listed as skipped",
        || server.rollout(&id),
        |r| r["skipped"].as_array().is_some_and(|s| s.len() == 4),
    )
    .await;
    assert_eq!(
        (r["matched"].as_u64(), r["eligible"].as_u64()),
        (Some(4), Some(0)),
        "{r}"
    );
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary
            == "4 agents matched, 0 eligible, 4 skipped (agent lacks components: exporters/kafka)",
        "{summary}"
    );
    assert_eq!(r["wave_sizes"], json!([]), "no wave for nobody: {r}");
    let out = succeeded(server.cli(&["rollout", "status", &id]).await);
    assert!(out.contains("0 eligible"), "{out}");
    for agent in &agents {
        assert!(out.contains(&uuid_str(&agent.uid)), "{out}");
    }
}

#[tokio::test]
async fn resuming_an_errored_rollout_sends_one_agent_first() {
    let server = TestServer::start().await;
    // Polling agents too: a wave sent to them is in flight until they poll.
    let agents: Vec<_> = (0..10)
        .map(|i| {
            let via = if i % 2 == 0 {
                Via::WebSocket
            } else {
                Via::Http
            };
            SimAgent::spawn(&server, via, "otelcol", &[("env", "prod")], None)
        })
        .collect();
    server.wait_connected(10).await;
    let (status, body) = put(
        &server,
        "prod",
        json!({"selector": "env=prod", "files": files(&yaml(FAIL_MARKER))}),
    )
    .await;
    assert_eq!(status, 200);
    let hash = hex::decode(body["hash"].as_str().unwrap()).unwrap();
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 3, "max_errors": 0}))
        .await;
    let reached = || {
        agents
            .iter()
            .filter(|a| a.times_received(&hash) > 0)
            .count()
    };
    let stopped = eventually(
        "the first wave fails",
        || server.rollout(&id),
        |r| r["state"] == "error" && r["counts"]["configuring"] == 0,
    )
    .await;
    // What was sent and not taken up when it stopped is not in flight, and nobody else gets it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let errors = server.rollout(&id).await["counts"]["errors"]
        .as_u64()
        .unwrap();
    assert_eq!(reached() as u64, errors, "{stopped}");
    let out = succeeded(server.cli(&["rollout", "status", &id]).await);
    assert!(
        out.contains("errors:") && out.contains("invalid configuration"),
        "{out}"
    );

    let out = succeeded(server.cli(&["rollout", "resume", &id]).await);
    assert!(out.contains("is started"), "{out}");
    let r = eventually(
        "the canary fails too",
        || server.rollout(&id),
        |r| r["state"] == "error" && r["counts"]["errors"] == errors + 1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        reached() as u64,
        errors + 1,
        "one agent after the resume, not a wave: {r}"
    );
    assert_eq!(
        r["errors"].as_array().unwrap().len() as u64,
        errors + 1,
        "{r}"
    );
}

#[tokio::test]
async fn a_cancelled_rollout_has_nothing_in_flight_and_no_next_wave() {
    let server = TestServer::start().await;
    let _agents = prod_fleet(&server, 6).await;
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 2, "multiplier": 1}))
        .await;
    let (status, _) = server
        .post_json(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let paused = eventually(
        "the first wave lands",
        || server.rollout(&id),
        |r| r["counts"]["completed"] == 2,
    )
    .await;
    assert_eq!(
        paused["wave_sizes"],
        json!([2, 2]),
        "done, and next: {paused}"
    );
    let (status, r) = server
        .post_json(&format!("/api/v1/rollouts/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(r["state"], "cancelled");
    let c = &r["counts"];
    assert_eq!(
        (c["configuring"].as_u64(), c["pending"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(c["left_out"], 4, "{r}");
    assert_eq!(
        r["wave_sizes"],
        json!([2]),
        "no next wave once it ended: {r}"
    );
    let out = succeeded(server.cli(&["rollout", "status", &id]).await);
    assert!(!out.contains("next") && !out.contains("running"), "{out}");
    assert!(
        out.contains("4 agents were sent it or waiting when it ended"),
        "{out}"
    );
}

#[tokio::test]
async fn after_a_restart_agents_that_applied_count_before_the_grace_ends() {
    // The default heartbeat: restored rollouts wait 75 s before they step again.
    let server = TestServer::start().await;
    let agents = prod_fleet(&server, 6).await;
    let id = server
        .start_rollout(
            json!({"configuration": "prod", "initial": 3, "multiplier": 1, "maximum": 3}),
        )
        .await;
    // Stop as soon as the first wave is sent, before its agents are seen to apply.
    eventually("a wave is sent", || server.rollout(&id), |r| r["wave"] == 1).await;
    let (opamp, api) = (server.opamp, server.api);
    let dir = server.stop().await;
    let server = TestServer::restart_at(dir, Options::default(), opamp, api).await;
    let r = eventually(
        "the first wave counted",
        || server.rollout(&id),
        |r| r["counts"]["completed"] == 3,
    )
    .await;
    assert_eq!(r["state"], "started", "{r}");
    assert_eq!(r["wave"], 1, "no new wave during the grace: {r}");
    drop(agents);
}

#[tokio::test]
async fn rollout_flags_the_server_would_refuse_are_named_as_typed() {
    let server = TestServer::start().await;
    let (status, _) = put(&server, "prod", json!({"files": files(GOOD)})).await;
    assert_eq!(status, 200);
    for (flags, says) in [
        (
            &["--wave-timeout", "0"][..],
            "--wave-timeout must be at least 1",
        ),
        (
            &["--initial", "5", "--maximum", "2"][..],
            "--maximum (2) must be at least --initial (5)",
        ),
    ] {
        let out = server
            .cli(&[&["rollout", "start", "prod"][..], flags].concat())
            .await;
        assert!(
            !out.ok && out.stderr.contains(says),
            "{flags:?}: {}",
            out.stderr
        );
    }
    let out = succeeded(server.cli(&["config", "list", "-o", "json"]).await);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["configurations"][0]["name"], "prod");
    let (status, body) = server
        .post_json(
            "/api/v1/rollouts",
            &json!({"configuration": "prod", "wave_timeout_seconds": 0}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("wave_timeout_seconds"),
        "{body}"
    );
}

#[tokio::test]
async fn names_reach_only_their_own_route_and_a_confirmed_change_must_still_hold() {
    let server = TestServer::start().await;
    let agent = prod_fleet(&server, 1).await.remove(0);
    let uid = uuid_str(&agent.uid);
    for name in [
        "prod?force=true",
        &format!("../agents/{uid}"),
        "prod#x",
        "..",
    ] {
        let out = server.cli(&["config", "delete", name]).await;
        assert!(!out.ok, "{name}: {}", out.stdout);
    }
    assert!(
        server.agent(&agent.uid).await.is_some(),
        "the agent is still there"
    );
    let (status, _) = server.get("/api/v1/configurations/prod").await;
    assert_eq!(status, 200, "and so is prod");

    // A change confirmed for one count of moved agents is refused once it would move another.
    let widen = json!({"selector": ""});
    let path = "/api/v1/configurations/other";
    let (status, _) = put(
        &server,
        "other",
        json!({"selector": "env=none", "files": files(GOOD)}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .put(
            &format!("{path}?expected_reassigned=0"),
            &json!({"selector": "", "priority": 9}).to_string(),
        )
        .await;
    assert_eq!(status, 409, "it moves the prod agent: {body}");
    let (status, body) = server
        .put(
            &format!("{path}?expected_reassigned=1&expected_reassigned=1"),
            &widen.to_string(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .put(
            &format!("{path}?dry_run=true&dry_run=false"),
            &widen.to_string(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (_, other) = server.get(path).await;
    assert_eq!(other["selector"], "env=none", "nothing was stored");
}
