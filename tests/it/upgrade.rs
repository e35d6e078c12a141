use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;

use crate::common::*;
use crate::sim::{SimAgent, SimOptions, Via};

const NEW: &str = "v0.116.0";

fn artifact(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn upload(server: &TestServer, bytes: Vec<u8>, query: &str) -> Value {
    let response = server
        .client()
        .post(server.api_url(&format!("/api/v1/packages?{query}")))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn upgradable(labels: &[(&str, &str)]) -> SimOptions {
    SimOptions {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        packages: true,
        ..SimOptions::default()
    }
}

#[tokio::test]
async fn an_upgrade_rolls_out_in_waves_and_skips_agents_without_packages() {
    let server = TestServer::start().await;
    let upgradable_agents: Vec<_> = (0..30)
        .map(|i| {
            let via = if i % 2 == 0 {
                Via::WebSocket
            } else {
                Via::Http
            };
            SimAgent::spawn_with(&server, via, "otelcol", upgradable(&[("os.type", "linux")]))
        })
        .collect();
    let fixed: Vec<_> = (0..3)
        .map(|_| {
            SimAgent::spawn(
                &server,
                Via::WebSocket,
                "otelcol",
                &[("os.type", "linux")],
                None,
            )
        })
        .collect();
    server.wait_connected(33).await;
    let bytes = artifact(300_000, 1);
    let package = upload(&server, bytes.clone(), &format!("version={NEW}")).await;
    assert_eq!(package["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    let (_, list) = server.get("/api/v1/packages").await;
    assert_eq!(list["packages"].as_array().unwrap().len(), 1);

    let id = server.start_rollout(json!({"package": {"name": "", "version": NEW}, "selector": "os.type=linux", "initial": 3, "multiplier": 3}),
    )
    .await;
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["counts"]["completed"], 30, "{r}");
    assert_eq!(r["counts"]["errors"], 0);
    assert_eq!(r["wave"], 3, "waves of 3, 9, 18: {r}");
    let skipped = r["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 3, "{r}");
    assert!(
        skipped
            .iter()
            .all(|s| s["reason"] == "agent does not accept packages")
    );
    assert_eq!(
        r["counts"]["skipped"],
        json!({"agent does not accept packages": 3}),
        "{r}"
    );

    for agent in &upgradable_agents {
        let a = server
            .wait_agent(&agent.uid, |a| {
                a.agent.identifying_attributes["service.version"] == NEW
                    && a.agent.status == "connected"
            })
            .await;
        assert!(
            a.history.iter().any(|h| h.to == "upgrading"),
            "{:?}",
            a.history
        );
        assert_eq!(agent.seen.lock().installs, 1);
        assert!(
            agent.seen.lock().packages_offered.values().all(|n| *n == 1),
            "offered once"
        );
        let pkg = &a.agent.packages[0];
        assert_eq!(
            (pkg.version.as_str(), pkg.status.as_str()),
            (NEW, "installed")
        );
    }
    for agent in &fixed {
        let a = server.agent(&agent.uid).await.unwrap();
        assert_eq!(a.agent.status, "connected");
        assert!(
            a.history.iter().all(|h| h.to != "pending"),
            "never stuck in pending"
        );
    }
}

#[tokio::test]
async fn a_corrupt_download_is_install_failed_and_an_error() {
    let server = TestServer::start().await;
    let agents: Vec<_> = (0..4)
        .map(|_| SimAgent::spawn_with(&server, Via::WebSocket, "otelcol", upgradable(&[])))
        .collect();
    server.wait_connected(4).await;
    let bytes = artifact(50_000, 2);
    let package = upload(&server, bytes.clone(), &format!("version={NEW}")).await;
    // The stored bytes go bad on disk.
    let path = server
        .dir
        .path()
        .join("packages")
        .join(package["sha256"].as_str().unwrap());
    std::fs::write(&path, artifact(50_000, 3)).unwrap();
    let id = server
        .start_rollout(
            json!({"package": {"name": "", "version": NEW}, "initial": 1, "max_errors": 0}),
        )
        .await;
    let r = server.wait_rollout(&id, "error").await;
    assert_eq!(r["counts"]["errors"], 1, "{r}");
    let failed: Vec<_> = agents
        .iter()
        .filter(|a| !a.seen.lock().packages_offered.is_empty())
        .collect();
    assert_eq!(failed.len(), 1, "the rollout stopped after the first wave");
    let a = server.wait_status(&failed[0].uid, "error").await.agent;
    assert!(
        a.status_reason.contains("does not match its content hash"),
        "{}",
        a.status_reason
    );
    assert_eq!(a.packages[0].status, "install_failed");
}

#[tokio::test]
async fn packages_go_only_to_agents_of_their_platform() {
    let server = TestServer::start().await;
    let linux = SimAgent::spawn_with(
        &server,
        Via::Http,
        "otelcol",
        upgradable(&[("os.type", "linux")]),
    );
    let windows = SimAgent::spawn_with(
        &server,
        Via::Http,
        "otelcol",
        upgradable(&[("os.type", "windows")]),
    );
    server.wait_connected(2).await;
    upload(
        &server,
        artifact(10_000, 4),
        &format!("version={NEW}&platform=windows"),
    )
    .await;
    let id = server
        .start_rollout(json!({"package": {"name": "", "version": NEW}, "initial": 5}))
        .await;
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["counts"]["completed"], 1, "{r}");
    assert!(
        r["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("os.type=linux"),
        "{r}"
    );
    assert!(
        linux.seen.lock().packages_offered.is_empty(),
        "never offered another platform's build"
    );
    assert_eq!(windows.seen.lock().installs, 1);
}

#[tokio::test]
async fn downloads_support_range_requests_to_resume() {
    let server = TestServer::start().await;
    let bytes = artifact(100_000, 5);
    let package = upload(&server, bytes.clone(), "version=v1.0.0").await;
    // The same bytes again: stored once.
    upload(&server, bytes.clone(), "version=v1.0.1").await;
    assert_eq!(
        std::fs::read_dir(server.dir.path().join("packages"))
            .unwrap()
            .count(),
        1
    );
    let url = format!(
        "http://{}/v1/packages/{}",
        server.opamp,
        package["sha256"].as_str().unwrap()
    );
    let client = server.client();
    let head: Vec<u8> = client
        .get(&url)
        .header("range", "bytes=0-39999")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let response = client
        .get(&url)
        .header("range", "bytes=40000-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        "bytes 40000-99999/100000"
    );
    let tail = response.bytes().await.unwrap();
    assert_eq!(
        [head, tail.to_vec()].concat(),
        bytes,
        "a resumed download is the whole file"
    );
    let whole = client
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(
        whole.headers().get("content-encoding").is_none(),
        "served as stored"
    );
    assert_eq!(whole.headers()["content-length"], "100000");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    let missing = client
        .get(format!(
            "http://{}/v1/packages/{}",
            server.opamp,
            "0".repeat(64)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad = client
        .get(format!("http://{}/v1/packages/..%2f..%2fetc", server.opamp))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 404);
}

#[tokio::test]
async fn bad_uploads_are_refused_with_a_clear_error() {
    let server = TestServer::start().await;
    let client = server.client();
    for (query, body) in [
        ("name=x", vec![1u8]),
        ("version=v1&name=a%20b", vec![1]),
        ("version=v1&colour=red", vec![1]),
        ("version=v1", vec![]),
    ] {
        let response = client
            .post(server.api_url(&format!("/api/v1/packages?{query}")))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string());
    }
    let response = client
        .post(server.api_url("/api/v1/rollouts"))
        .json(&json!({"package": {"name": "", "version": "v9"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "no such package");
}

#[tokio::test]
async fn the_restart_command_round_trips_and_needs_the_capability() {
    let server = TestServer::start().await;
    let ws = SimAgent::spawn_with(&server, Via::WebSocket, "otelcol", upgradable(&[]));
    let http = SimAgent::spawn_with(&server, Via::Http, "otelcol", upgradable(&[]));
    let plain = SimAgent::spawn(&server, Via::WebSocket, "otelcol", &[], None);
    server.wait_connected(3).await;
    let client = server.client();
    for agent in [&ws, &http] {
        let path = format!("/api/v1/agents/{}/restart", uuid_str(&agent.uid));
        let response = client.post(server.api_url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let deadline = tokio::time::Instant::now() + WAIT;
        while agent.seen.lock().restarts == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no restart command arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.wait_status(&agent.uid, "connected").await;
    }
    let path = format!("/api/v1/agents/{}/restart", uuid_str(&plain.uid));
    let response = client.post(server.api_url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("restart"),
        "{body}"
    );
}

#[tokio::test]
async fn own_telemetry_destinations_go_to_agents_that_can_send_it() {
    let server = TestServer::with(Options {
        own_metrics_endpoint: Some("http://otel-gateway:4318".into()),
        ..Options::default()
    })
    .await;
    let uid = new_uid();
    let mut msg = full_report(&uid, 1, "otelcol");
    msg.capabilities |= 0x40;
    let reply = WsAgent::connect(&server.ws_url())
        .await
        .exchange(&msg)
        .await;
    let offer = reply.connection_settings.expect("settings offered");
    assert_eq!(
        offer.own_metrics.unwrap().destination_endpoint,
        "http://otel-gateway:4318"
    );
    assert!(offer.own_logs.is_none());
    let other = new_uid();
    let reply = server.poll(&full_report(&other, 1, "otelcol")).await;
    assert!(
        reply.connection_settings.is_none(),
        "not to an agent that cannot send metrics"
    );
}

#[tokio::test]
async fn the_cli_uploads_packages_starts_upgrades_and_restarts_by_selector() {
    let server = TestServer::start().await;
    let agents: Vec<_> = (0..3)
        .map(|_| {
            SimAgent::spawn_with(
                &server,
                Via::WebSocket,
                "otelcol",
                upgradable(&[("env", "staging")]),
            )
        })
        .collect();
    server.wait_connected(3).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otelcol.tar.gz");
    std::fs::write(&file, artifact(20_000, 9)).unwrap();
    let CliOutput {
        ok,
        stdout: out,
        stderr: err,
    } = server
        .cli(&[
            "package",
            "upload",
            file.to_str().unwrap(),
            "--version",
            NEW,
        ])
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("20000 bytes"), "{out}");
    let CliOutput {
        ok: _,
        stdout: out,
        stderr: _,
    } = server.cli(&["package", "list"]).await;
    assert!(out.contains(NEW), "{out}");
    let CliOutput {
        ok,
        stdout: out,
        stderr: err,
    } = server
        .cli(&[
            "rollout",
            "start",
            "--package",
            "",
            "--version",
            NEW,
            "--selector",
            "env=staging",
            "--initial",
            "3",
        ])
        .await;
    assert!(ok, "{err}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    server.wait_rollout(&id, "stable").await;
    // They restart into the new build and come back.
    for agent in &agents {
        server
            .wait_agent(&agent.uid, |a| {
                a.agent.status == "connected"
                    && a.agent.identifying_attributes["service.version"] == NEW
            })
            .await;
    }

    // Without --yes and without a terminal to say yes, nothing is restarted.
    let CliOutput {
        ok,
        stdout: out,
        stderr: _,
    } = server
        .cli(&["agents", "restart", "--selector", "env=staging"])
        .await;
    assert!(ok);
    assert!(out.contains("3 agents"), "{out}");
    assert!(out.contains("nothing done"), "{out}");
    assert!(agents.iter().all(|a| a.seen.lock().restarts == 0));
    let CliOutput {
        ok,
        stdout: out,
        stderr: err,
    } = server
        .cli(&["agents", "restart", "--selector", "env=staging", "--yes"])
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("restart: done for 3 of 3 agents"), "{out}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while agents.iter().any(|a| a.seen.lock().restarts == 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every agent restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_restart_over_http_does_not_swallow_what_is_due() {
    let server = TestServer::start().await;
    let agent = SimAgent::spawn_with(
        &server,
        Via::Http,
        "otelcol",
        upgradable(&[("env", "prod")]),
    );
    server.wait_connected(1).await;
    let body =
        json!({"selector": "env=prod", "files": {"c.yaml": {"body": "receivers:\n  otlp:\n"}}});
    let (status, put) = server
        .put("/api/v1/configurations/prod", &body.to_string())
        .await;
    assert_eq!(status, 200, "{put}");
    let path = format!("/api/v1/agents/{}/restart", uuid_str(&agent.uid));
    let (status, _) = server.post_json(&path, &json!({})).await;
    assert_eq!(status, 200);
    let id = server
        .start_rollout(json!({"configuration": "prod", "initial": 1}))
        .await;
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["counts"]["completed"], 1);
    assert_eq!(agent.seen.lock().restarts, 1);
    let hash = hex::decode(put["hash"].as_str().unwrap()).unwrap();
    assert_eq!(agent.times_received(&hash), 1);
}

/// Regression: a second upload of a version with other bytes silently replaced the artifact
/// agents may already have installed.
#[tokio::test]
async fn a_package_version_never_changes_under_its_agents() {
    let server = TestServer::start().await;
    let first = upload(&server, b"first build".to_vec(), "version=v2.0.0").await;
    let again = upload(&server, b"first build".to_vec(), "version=v2.0.0").await;
    assert_eq!(
        again["sha256"], first["sha256"],
        "the same bytes again: the same package"
    );
    let response = server
        .client()
        .post(server.api_url("/api/v1/packages?version=v2.0.0"))
        .header("content-type", "application/octet-stream")
        .body(b"other build".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let (_, list) = server.get("/api/v1/packages").await;
    assert_eq!(list["packages"].as_array().unwrap().len(), 1);
    assert_eq!(list["packages"][0]["sha256"], first["sha256"]);
}
