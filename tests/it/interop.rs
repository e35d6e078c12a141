//! Third-party OpAMP clients against the real server: the Python package
//! `opentelemetry-opamp-client` and the npm package `@elastic/opamp-client-node`, installed by
//! `.ci/install-interop`. Under CI a missing client fails the test; elsewhere it is skipped
//! with a note.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::common::*;

const AGENTS: usize = 3;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Whether the Python client is installed (under CI its absence is a failure).
fn python_client() -> bool {
    let installed = std::process::Command::new("python3")
        .args(["-c", "import opentelemetry._opamp.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    available("opentelemetry-opamp-client (PyPI)", installed)
}

/// Whether the Node client is installed (under CI its absence is a failure).
fn node_client() -> bool {
    let installed = interop_dir()
        .join("node_modules/@elastic/opamp-client-node")
        .exists();
    available("@elastic/opamp-client-node (npm)", installed)
}

/// Whether the client is installed; under CI its absence is a failure.
fn available(name: &str, installed: bool) -> bool {
    if installed {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is not installed; run .ci/install-interop");
    }
    eprintln!("skipping: {name} is not installed (run .ci/install-interop)");
    false
}

struct Driver {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Driver {
    fn spawn(program: &str, script: &str, endpoint: &str, service: &str) -> Self {
        let mut child = Command::new(program)
            .arg(interop_dir().join(script))
            .args(["--endpoint", endpoint, "--agents", &AGENTS.to_string()])
            .args(["--poll-seconds", "0.5", "--service-name", service])
            .args(["--label", "env=interop"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    async fn event(&mut self, name: &str) -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {name} event in time"))
                .unwrap()
                .unwrap_or_else(|| panic!("driver ended before {name}"));
            let event: Value = serde_json::from_str(&line).unwrap();
            if event["event"] == name {
                return event;
            }
        }
    }

    /// Closes stdin: the driver stops its agents the way the library stops them.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        self.event("stopped").await;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
}

fn uid_bytes(uid: &Value) -> [u8; 16] {
    *uuid::Uuid::parse_str(uid.as_str().unwrap())
        .unwrap()
        .as_bytes()
}

/// A server and the client's agents, all connected.
async fn connected_fleet(
    program: &str,
    script: &str,
    service: &str,
) -> (TestServer, Driver, Vec<[u8; 16]>) {
    let server = TestServer::start().await;
    let mut driver = Driver::spawn(program, script, &server.http_url(), service);
    let started = driver.event("started").await;
    let uids: Vec<[u8; 16]> = started["instance_uids"]
        .as_array()
        .unwrap()
        .iter()
        .map(uid_bytes)
        .collect();
    assert_eq!(uids.len(), AGENTS);
    for uid in &uids {
        server.wait_status(uid, "connected").await;
    }
    (server, driver, uids)
}

async fn run_fleet(program: &str, script: &str, service: &str) {
    let (server, driver, uids) = connected_fleet(program, script, service).await;
    for uid in &uids {
        let a = server.wait_status(uid, "connected").await.agent;
        assert_eq!(a.transport.as_deref(), Some("http"));
        assert_eq!(a.identifying_attributes["service.name"], service);
        assert_eq!(a.non_identifying_attributes["env"], "interop");
    }
    let (_, list) = server
        .get(&format!("/api/v1/agents?label=service.name={service}"))
        .await;
    assert_eq!(list["total"], AGENTS);
    // Long enough for the server to learn the clients' poll pace.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for uid in &uids {
        assert_eq!(
            server.agent(uid).await.unwrap().agent.status,
            "connected",
            "no false disconnect"
        );
    }
    driver.stop().await;
    for uid in &uids {
        server.wait_status(uid, "disconnected").await;
    }
    let fleet = server.fleet().await;
    assert_eq!(fleet.by_status["disconnected"], AGENTS as i64);
}

#[tokio::test]
async fn python_opamp_client_agents_connect_and_disconnect() {
    if python_client() {
        run_fleet("python3", "python_agents.py", "interop-python").await;
    }
}

#[tokio::test]
async fn node_opamp_client_agents_connect_and_disconnect() {
    if node_client() {
        run_fleet("node", "node_agents.mjs", "interop-node").await;
    }
}

/// A configuration rolled out to third-party clients reaches them and is reported applied.
async fn roll_out_to(program: &str, script: &str, service: &str) {
    let (server, mut driver, uids) = connected_fleet(program, script, service).await;
    let body = serde_json::json!({
        "selector": format!("service.name={service}"),
        "files": {"collector.yaml": {"body": "receivers:\n  otlp:\nexporters:\n  debug:\n", "content_type": "text/yaml"}},
    });
    let (status, put) = server
        .put("/api/v1/configurations/interop", &body.to_string())
        .await;
    assert_eq!(status, 200, "{put}");
    let hash = put["hash"].as_str().unwrap().to_string();
    let rollout: Value = server
        .client()
        .post(server.api_url("/api/v1/rollouts"))
        .json(&serde_json::json!({"configuration": "interop", "initial": 1, "multiplier": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = rollout["id"].as_str().unwrap().to_string();
    let mut received = std::collections::HashSet::new();
    while received.len() < AGENTS {
        let event = driver.event("remote_config").await;
        assert_eq!(event["hash"], hash.as_str());
        received.insert(event["instance_uid"].as_str().unwrap().to_string());
    }
    for uid in &uids {
        server
            .wait_agent(uid, |a| {
                a.agent
                    .remote_config
                    .as_ref()
                    .is_some_and(|rc| rc.hash == hash && rc.status == "applied")
                    && a.agent.status == "connected"
            })
            .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, r) = server.get(&format!("/api/v1/rollouts/{id}")).await;
        if r["state"] == "stable" {
            assert_eq!(r["counts"]["completed"], AGENTS);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver.stop().await;
}

#[tokio::test]
async fn python_opamp_client_agents_take_a_rolled_out_configuration() {
    if python_client() {
        roll_out_to("python3", "python_agents.py", "interop-python-config").await;
    }
}

#[tokio::test]
async fn node_opamp_client_agents_take_a_rolled_out_configuration() {
    if node_client() {
        roll_out_to("node", "node_agents.mjs", "interop-node-config").await;
    }
}
