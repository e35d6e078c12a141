//! The administrative lifecycle through the real server: admission, approval, ignore,
//! maintenance, pre-registration, deletion, forced disconnects, bulk actions and retention.

use corral::edge::protocol::proto;
use serde_json::{Value, json};

use crate::common::*;

const ACCEPTS_CONFIG: u64 = 0x2;

fn path(uid: &[u8]) -> String {
    format!("/api/v1/agents/{}", uuid_str(uid))
}

async fn move_to(server: &TestServer, uid: &[u8], state: &str) -> (u16, Value) {
    server
        .post_json(
            &format!("{}/admin-state", path(uid)),
            &json!({ "state": state }),
        )
        .await
}

/// A report asking for settings and configurations, as a collector's is.
fn collector_report(uid: &[u8; 16], seq: u64, service: &str) -> proto::AgentToServer {
    let mut report = full_report(uid, seq, service);
    report.capabilities |= ACCEPTS_SETTINGS | ACCEPTS_CONFIG;
    report
}

async fn put_config(server: &TestServer, selector: &str) {
    let body = json!({
        "selector": selector,
        "files": {"collector.yaml": {"body": "receivers:\n  otlp:\n", "content_type": "text/yaml"}}
    });
    let (status, body) = server
        .put("/api/v1/configurations/prod", &body.to_string())
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Rows that mention `uid` in any table of the store, read from the database file.
async fn rows_about(server: &TestServer, uid: &[u8]) -> i64 {
    let url = format!(
        "sqlite://{}?mode=ro",
        server.dir.path().join("corral.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open db");
    let mut total = 0;
    for table in ["agents", "agent_history", "rollout_agents"] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE instance_uid = ?"
        ))
        .bind(uid.to_vec())
        .fetch_one(&pool)
        .await
        .expect("count");
        total += n;
    }
    pool.close().await;
    total
}

#[tokio::test]
async fn manual_admission_answers_a_new_agent_but_sends_nothing_until_approved() {
    let server = TestServer::with(Options {
        admission: Some("manual".into()),
        ..Options::default()
    })
    .await;
    put_config(&server, "").await;
    let rollout = server.start_rollout(json!({"configuration": "prod"})).await;
    server.wait_rollout(&rollout, "stable").await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let reply = agent.exchange(&collector_report(&uid, 1, "otelcol")).await;
    assert!(
        reply.connection_settings.is_none(),
        "no settings for a discovered agent"
    );
    assert!(reply.remote_config.is_none());
    let a = server
        .wait_agent(&uid, |a| a.agent.admin_state == "discovered")
        .await;
    assert_eq!(a.agent.status, "connected", "its status is tracked");
    assert_eq!(server.fleet().await.by_admin_state["discovered"], 1);

    let (status, body) = move_to(&server, &uid, "maintenance").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["allowed"], json!(["registered", "managed", "ignored"]));

    let out = succeeded(server.cli(&["agents", "approve", &uuid_str(&uid)]).await);
    assert!(out.contains("managed"), "{out}");
    let config = agent.recv().await;
    assert!(
        config.remote_config.is_some(),
        "the assigned configuration goes out once approved"
    );
    assert_eq!(
        server
            .metric("corral_agents_by_admin_state{admin_state=\"managed\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn ignore_survives_a_reconnect_and_a_restart() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "noisy")).await;
    let (status, body) = move_to(&server, &uid, "ignored").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["admin_state"], "ignored");
    drop(agent);

    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let reply = agent.exchange(&full_report(&uid, 1, "renamed")).await;
    assert_eq!(reply.flags, 0, "answered minimally");
    let a = server.agent(&uid).await.expect("kept");
    assert_eq!(a.agent.admin_state, "ignored");
    assert_eq!(
        a.agent.identifying_attributes["service.name"], "noisy",
        "nothing an ignored agent says is kept"
    );
    drop(agent);

    let dir = server.stop().await;
    let server = TestServer::start_with(
        dir,
        Options {
            ignored_agents: Some("refuse".into()),
            ..Options::default()
        },
    )
    .await;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let reply = agent.exchange(&full_report(&uid, 1, "noisy")).await;
    assert!(reply.error_response.is_some(), "refused when so configured");
    assert_eq!(agent.closed_with().await, 1008);
    assert_eq!(
        server.agent(&uid).await.expect("kept").agent.admin_state,
        "ignored"
    );
    let response = server
        .post(
            "application/x-protobuf",
            prost::Message::encode_to_vec(&heartbeat(&uid, 2)),
            &[],
        )
        .await;
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn an_ignore_rule_ignores_matching_agents_on_first_contact() {
    let server = TestServer::start().await;
    let (status, rule) = server
        .post_json("/api/v1/ignore-rules", &json!({"selector": ""}))
        .await;
    assert_eq!(status, 400, "a rule that ignores everyone: {rule}");
    let (status, rule) = server
        .post_json(
            "/api/v1/ignore-rules",
            &json!({"selector": "service.name=scratch"}),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    let (scratch, real) = (new_uid(), new_uid());
    server.poll(&full_report(&scratch, 1, "scratch")).await;
    server.poll(&full_report(&real, 1, "otelcol")).await;
    assert_eq!(
        server.agent(&scratch).await.unwrap().agent.admin_state,
        "ignored"
    );
    assert_eq!(
        server.agent(&real).await.unwrap().agent.admin_state,
        "managed"
    );
    let id = rule["id"].as_str().unwrap();
    let (status, _) = server.delete(&format!("/api/v1/ignore-rules/{id}")).await;
    assert_eq!(status, 204);
    let (_, rules) = server.get("/api/v1/ignore-rules").await;
    assert_eq!(rules["rules"], json!([]));
}

#[tokio::test]
async fn delete_leaves_nothing_and_a_returning_agent_is_discovered_anew() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    let mut sick = heartbeat(&uid, 2);
    sick.health = Some(proto::ComponentHealth {
        healthy: false,
        last_error: "disk full".into(),
        ..Default::default()
    });
    agent.exchange(&sick).await;
    server.wait_status(&uid, "error").await;
    server
        .put(
            &format!("{}/labels", path(&uid)),
            r#"{"labels": {"env": "prod"}}"#,
        )
        .await;
    assert!(rows_about(&server, &uid).await > 0);

    let (status, _) = server.delete(&path(&uid)).await;
    assert_eq!(status, 204);
    assert_eq!(agent.closed_with().await, 1000, "its connection is closed");
    assert_eq!(server.get(&path(&uid)).await.0, 404);
    assert_eq!(
        rows_about(&server, &uid).await,
        0,
        "nothing left in the store"
    );
    assert_eq!(server.fleet().await.total, 0);
    assert_eq!(server.delete(&path(&uid)).await.0, 404);

    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 3, "otelcol")).await;
    let a = server.wait_status(&uid, "connected").await;
    assert!(
        a.agent.labels.is_empty(),
        "a new agent: {:?}",
        a.agent.labels
    );
    assert_eq!(a.history.len(), 1, "its history starts again");

    let dir = server.stop().await;
    drop(agent);
    let server = TestServer::start_with(dir, Options::default()).await;
    assert!(
        server.agent(&uid).await.is_some(),
        "the new agent was stored"
    );
}

#[tokio::test]
async fn a_pre_registered_uid_is_not_found_until_it_connects_then_registered() {
    let server = TestServer::with(Options {
        admission: Some("register".into()),
        ..Options::default()
    })
    .await;
    let uid = new_uid();
    let (status, body) = server
        .post_json(
            "/api/v1/agents",
            &json!({"instance_uid": uuid_str(&uid), "labels": {"site": "paris"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["admin_state"], "not_found");
    assert_eq!(body["status"], "disconnected");
    let (status, _) = server
        .post_json("/api/v1/agents", &json!({"instance_uid": uuid_str(&uid)}))
        .await;
    assert_eq!(status, 409, "known already");

    let dir = server.stop().await;
    let server = TestServer::start_with(
        dir,
        Options {
            admission: Some("register".into()),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        server.agent(&uid).await.expect("kept").agent.admin_state,
        "not_found"
    );
    server.poll(&full_report(&uid, 1, "otelcol")).await;
    let a = server
        .wait_agent(&uid, |a| a.agent.admin_state == "registered")
        .await;
    assert_eq!(a.agent.labels["site"], "paris");
    assert!(a.agent.pre_registered);
}

#[tokio::test]
async fn an_agent_expected_by_its_attributes_is_admitted_with_its_labels() {
    let server = TestServer::with(Options {
        admission: Some("manual".into()),
        ..Options::default()
    })
    .await;
    let (status, expected) = server
        .post_json(
            "/api/v1/agents",
            &json!({"identifying_attributes": {"service.name": "edge-gw"}, "labels": {"tier": "edge"}}),
        )
        .await;
    assert_eq!(status, 201, "{expected}");
    let (_, list) = server.get("/api/v1/expected-agents").await;
    assert_eq!(list["expected"].as_array().unwrap().len(), 1);
    let (stranger, gateway) = (new_uid(), new_uid());
    server.poll(&full_report(&stranger, 1, "otelcol")).await;
    server.poll(&full_report(&gateway, 1, "edge-gw")).await;
    assert_eq!(
        server.agent(&stranger).await.unwrap().agent.admin_state,
        "discovered"
    );
    let a = server.agent(&gateway).await.unwrap();
    assert_eq!(a.agent.admin_state, "registered");
    assert_eq!(a.agent.labels["tier"], "edge");
    let (_, list) = server.get("/api/v1/expected-agents").await;
    assert_eq!(list["expected"], json!([]), "used up");
}

#[tokio::test]
async fn maintenance_refuses_restarts_and_resume_returns_where_it_came_from() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let mut report = full_report(&uid, 1, "otelcol");
    report.capabilities |= 0x400; // AcceptsRestartCommand
    agent.exchange(&report).await;
    assert_eq!(move_to(&server, &uid, "maintenance").await.0, 200);
    let (status, body) = server
        .post_json(&format!("{}/restart", path(&uid)), &json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = move_to(&server, &uid, "registered").await;
    assert_eq!(status, 409);
    assert_eq!(body["allowed"], json!(["managed"]));
    let out = succeeded(server.cli(&["agents", "resume", &uuid_str(&uid)]).await);
    assert!(out.contains("managed"), "{out}");
    let (status, _) = server
        .post_json(&format!("{}/restart", path(&uid)), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert!(agent.recv().await.command.is_some());
}

#[tokio::test]
async fn an_admin_disconnect_closes_the_socket_and_the_agent_comes_back() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    let (status, _) = server
        .post_json(&format!("{}/disconnect", path(&uid)), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(agent.closed_with().await, 1000);
    server.wait_status(&uid, "disconnected").await;
    let (status, _) = server
        .post_json(&format!("{}/disconnect", path(&uid)), &json!({}))
        .await;
    assert_eq!(status, 409, "not connected");
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 2, "otelcol")).await;
    server.wait_status(&uid, "connected").await;
}

#[tokio::test]
async fn a_bulk_action_is_refused_when_the_count_differs_from_the_confirmed_one() {
    let server = TestServer::start().await;
    let uids: Vec<[u8; 16]> = (0..5).map(|_| new_uid()).collect();
    for (i, uid) in uids.iter().enumerate() {
        let service = if i < 3 { "staging" } else { "prod" };
        server.poll(&full_report(uid, 1, service)).await;
    }
    assert_eq!(move_to(&server, &uids[0], "maintenance").await.0, 200);
    let dry = json!({"selector": "service.name=staging", "state": "registered", "dry_run": true});
    let (status, body) = server.post_json("/api/v1/agents/admin-state", &dry).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], 2);
    assert_eq!(body["excluded"]["in maintenance"], 1);
    let stale =
        json!({"selector": "service.name=staging", "state": "registered", "expected_count": 3});
    let (status, body) = server.post_json("/api/v1/agents/admin-state", &stale).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["matched"], 2);
    assert_eq!(
        server.fleet().await.by_admin_state["managed"],
        4,
        "nothing moved"
    );
    let (status, body) = server
        .post_json(
            "/api/v1/agents/admin-state",
            &json!({"selector": "service.name=staging", "state": "registered", "expected_count": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done"], 2);
    assert_eq!(server.fleet().await.by_admin_state["registered"], 2);

    let (status, body) = server
        .post_json(
            "/api/v1/agents/delete",
            &json!({"selector": "service.name=prod", "expected_count": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.fleet().await.total, 3);
    let (status, _) = server
        .post_json(
            "/api/v1/agents/delete",
            &json!({"selector": "service.name=staging"}),
        )
        .await;
    assert_eq!(status, 400, "no count, no dry run");
}

#[tokio::test]
async fn agents_disconnected_past_the_retention_are_deleted_or_back_to_not_found() {
    let server = TestServer::with(Options {
        forget_disconnected_after: Some(1),
        ..Options::default()
    })
    .await;
    let (gone, named) = (new_uid(), new_uid());
    server
        .post_json("/api/v1/agents", &json!({"instance_uid": uuid_str(&named)}))
        .await;
    for uid in [&gone, &named] {
        let mut agent = WsAgent::connect(&server.ws_url()).await;
        agent.exchange(&full_report(uid, 1, "otelcol")).await;
        let mut bye = heartbeat(uid, 2);
        bye.agent_disconnect = Some(proto::AgentDisconnect {});
        agent.exchange(&bye).await;
    }
    // Retention is no admin write: its delete reaches the store with the next flush.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.agent(&gone).await.is_some() || rows_about(&server, &gone).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never deleted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let a = server
        .wait_agent(&named, |a| a.agent.admin_state == "not_found")
        .await;
    assert_eq!(a.agent.status, "disconnected");
}

#[tokio::test]
async fn an_agent_in_maintenance_is_left_out_of_a_rollout_and_gets_it_when_it_resumes() {
    let server = TestServer::start().await;
    put_config(&server, "").await;
    let (busy, resting) = (new_uid(), new_uid());
    let mut a = WsAgent::connect(&server.ws_url()).await;
    a.exchange(&collector_report(&busy, 1, "otelcol")).await;
    let mut b = WsAgent::connect(&server.ws_url()).await;
    b.exchange(&collector_report(&resting, 1, "otelcol")).await;
    assert_eq!(move_to(&server, &resting, "maintenance").await.0, 200);

    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 5}))
        .await;
    let offer = a
        .recv()
        .await
        .remote_config
        .expect("the managed agent gets it");
    let mut applied = heartbeat(&busy, 2);
    applied.remote_config_status = Some(remote_config_status(
        proto::RemoteConfigStatuses::Applied,
        &offer.config_hash,
        "",
    ));
    a.send(&applied).await;
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["counts"]["completed"], 1, "{r}");
    assert_eq!(r["counts"]["skipped"]["in maintenance"], 1, "{r}");
    let b_status = server.agent(&resting).await.unwrap().agent.status;
    assert_eq!(b_status, "connected", "not pending, not configuring");

    let (status, body) = move_to(&server, &resting, "managed").await;
    assert_eq!(status, 200, "{body}");
    let late = b.recv().await.remote_config.expect("sent once it resumes");
    assert_eq!(late.config_hash, offer.config_hash);
}

#[tokio::test]
async fn an_unknown_agent_is_asked_who_it_is_and_kept_only_once_it_says() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let reply = server.poll(&heartbeat(&uid, 7)).await;
    assert_eq!(reply.flags & 0x1, 0x1, "asked for its full state");
    assert!(server.agent(&uid).await.is_none(), "nothing kept of it yet");
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let reply = agent.exchange(&heartbeat(&uid, 8)).await;
    assert_eq!(reply.flags & 0x1, 0x1);
    assert_eq!(server.fleet().await.total, 0);
    agent.exchange(&full_report(&uid, 9, "otelcol")).await;
    server.wait_status(&uid, "connected").await;
}

#[tokio::test]
async fn an_ignored_agent_asking_for_a_new_uid_stays_ignored() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "noisy")).await;
    assert_eq!(move_to(&server, &uid, "ignored").await.0, 200);
    let mut again = full_report(&uid, 2, "noisy");
    again.flags = 0x1; // RequestInstanceUid
    let reply = agent.exchange(&again).await;
    let new_uid = reply
        .agent_identification
        .expect("a new uid")
        .new_instance_uid;
    let a = server.agent(&new_uid).await.expect("kept");
    assert_eq!(a.agent.admin_state, "ignored");
    assert_eq!(a.agent.identifying_attributes["service.name"], "noisy");
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, Options::default()).await;
    let a = server.agent(&new_uid).await.expect("stored");
    assert_eq!(
        a.agent.admin_state, "ignored",
        "the decision survives a restart"
    );
}

#[tokio::test]
async fn a_deleted_agent_that_comes_back_gets_its_configuration_again() {
    let server = TestServer::start().await;
    put_config(&server, "").await;
    let rollout = server.start_rollout(json!({"configuration": "prod"})).await;
    server.wait_rollout(&rollout, "stable").await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&collector_report(&uid, 1, "otelcol")).await;
    assert!(agent.recv().await.remote_config.is_some());
    assert_eq!(server.delete(&path(&uid)).await.0, 204);

    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let first = agent.exchange(&collector_report(&uid, 1, "otelcol")).await;
    let offer = match first.remote_config {
        Some(offer) => offer,
        None => agent.recv().await.remote_config.expect("told again"),
    };
    assert!(!offer.config_hash.is_empty());
}

/// `corral agents ARGS…`, which must succeed; its output.
async fn agents_cli(server: &TestServer, args: &[&str]) -> String {
    let mut all = vec!["agents"];
    all.extend_from_slice(args);
    succeeded(server.cli(&all).await)
}

#[tokio::test]
async fn the_cli_acts_on_a_selector_after_showing_the_count() {
    let server = TestServer::start().await;
    let uids: Vec<[u8; 16]> = (0..3).map(|_| new_uid()).collect();
    for uid in &uids {
        server.poll(&full_report(uid, 1, "staging")).await;
    }
    server.poll(&full_report(&new_uid(), 1, "prod")).await;
    let staging = ["--selector", "service.name=staging"];
    let out = agents_cli(&server, &["maintenance", staging[0], staging[1]]).await;
    assert!(out.contains("3 agents"), "{out}");
    assert!(
        out.contains("nothing done"),
        "no terminal to say yes: {out}"
    );
    let out = agents_cli(&server, &["maintenance", staging[0], staging[1], "--yes"]).await;
    assert!(out.contains("done for 3 of 3"), "{out}");
    let out = agents_cli(&server, &["list", "--admin-state", "maintenance"]).await;
    assert!(out.contains("3 of 3 agents"), "{out}");
    let out = agents_cli(&server, &["resume", staging[0], staging[1], "--yes"]).await;
    assert!(out.contains("resume to managed: done for 3 of 3"), "{out}");
    assert_eq!(server.fleet().await.by_admin_state["managed"], 4);
    let first = uuid_str(&uids[0]);
    let out = server.cli(&["agents", "manage", &first]).await;
    assert!(
        out.ok,
        "asking for the state it is in is no error: {}",
        out.stderr
    );
    let out = server.cli(&["agents", "approve", &first]).await;
    assert!(out.ok);
    let out = server.cli(&["agents", "resume", &first]).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("not in maintenance"), "{}", out.stderr);
}

#[tokio::test]
async fn ignore_rules_and_expected_agents_survive_a_restart() {
    let server = TestServer::start().await;
    server
        .post_json(
            "/api/v1/ignore-rules",
            &json!({"selector": "service.name=scratch"}),
        )
        .await;
    server
        .post_json(
            "/api/v1/agents",
            &json!({"identifying_attributes": {"service.name": "edge-gw"}}),
        )
        .await;
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, Options::default()).await;
    let (_, rules) = server.get("/api/v1/ignore-rules").await;
    assert_eq!(rules["rules"][0]["selector"], "service.name=scratch");
    let (_, expected) = server.get("/api/v1/expected-agents").await;
    assert_eq!(
        expected["expected"][0]["identifying_attributes"]["service.name"],
        "edge-gw"
    );
    let scratch = new_uid();
    server.poll(&full_report(&scratch, 1, "scratch")).await;
    assert_eq!(
        server.agent(&scratch).await.unwrap().agent.admin_state,
        "ignored"
    );
}
