//! The real OpenTelemetry Collector against the real server: the distribution in
//! `tests/collector` (its opamp extension, a nop pipeline and nothing else), built by
//! `tests/collector/build.sh`. The binaries are found through `CORRAL_OTELCOL` (and
//! `CORRAL_OPAMP_SUPERVISOR`), else in the build script's cache. Under CI a missing binary fails
//! the test; elsewhere it is skipped with a note.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use corral::edge::api::dto::AgentDetailDto;
use serde_json::json;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::common::*;

/// The collector release `tests/collector/go.mod` pins.
const RELEASE: &str = "0.158.0";
/// The `service.name` the distribution reports (its command name).
const SERVICE: &str = "otelcol-corral";

/// The collector and the supervisor, as built by `tests/collector/build.sh`.
struct Binaries {
    collector: PathBuf,
    supervisor: PathBuf,
}

/// The binaries, from the environment or the build script's cache; `None` (a loud skip)
/// outside CI when they are missing, a failure under CI.
fn binaries() -> Option<Binaries> {
    let from_env = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let found = match (
        from_env("CORRAL_OTELCOL"),
        from_env("CORRAL_OPAMP_SUPERVISOR"),
    ) {
        (Some(collector), Some(supervisor)) => Some(Binaries {
            collector,
            supervisor,
        }),
        _ => cached(),
    }
    .filter(|b| b.collector.is_file() && b.supervisor.is_file());
    if found.is_some() {
        return found;
    }
    let hint = "build them with tests/collector/build.sh (needs Go), or set CORRAL_OTELCOL and \
                CORRAL_OPAMP_SUPERVISOR";
    if std::env::var_os("CI").is_some() {
        panic!("the collector and supervisor binaries are missing: {hint}");
    }
    eprintln!("!!!! skipping: the collector and supervisor binaries are missing: {hint} !!!!");
    None
}

/// What `build.sh --cached` prints: the paths of binaries already built for these sources.
fn cached() -> Option<Binaries> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("tests/collector/build.sh"))
        .arg("--cached")
        .current_dir(root)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let stdout = String::from_utf8(out.stdout).ok()?;
    let mut last = stdout.lines().rev();
    let supervisor = PathBuf::from(last.next()?);
    let collector = PathBuf::from(last.next()?);
    Some(Binaries {
        collector,
        supervisor,
    })
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Transport {
    WebSocket,
    Http,
}

/// The collector's configuration: the opamp extension with a known instance uid, and the
/// smallest pipeline a collector accepts (nop to nop, no port). Its own metrics are off, so it
/// binds no port at all.
fn collector_config(uid: &str, server: &TestServer, transport: Transport) -> String {
    let client = match transport {
        Transport::WebSocket => format!("      ws:\n        endpoint: {}\n", server.ws_url()),
        // A short poll, so the test sees the connection and its end without waiting 30 s.
        Transport::Http => format!(
            "      http:\n        endpoint: {}\n        polling_interval: 500ms\n",
            server.http_url()
        ),
    };
    format!(
        "extensions:
  opamp:
    instance_uid: {uid}
    server:
{client}        tls:
          insecure: true
receivers:
  nop:
exporters:
  nop:
service:
  extensions: [opamp]
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [nop]
      exporters: [nop]
"
    )
}

/// A running collector (or supervisor); its log is printed if the test fails while it is held.
struct Collector {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Collector {
    fn start(binary: &Path, config: &str) -> Self {
        let dir = TempDir::new().expect("tempdir");
        let config_path = dir.path().join("collector.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("collector.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            // Its own process group: a supervisor's collector goes down with it (see `kill`).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as a service manager stops it; waits for it to exit cleanly.
    async fn terminate(&mut self) {
        let pid = self.child.id().expect("collector running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("collector exits in time")
            .expect("collector exit status");
        assert!(exit.success(), "collector exited with {exit}");
    }

    /// SIGSTOP to its process group: it hangs, its connection stays open and silent.
    fn freeze(&self) {
        assert!(self.signal_group("STOP"), "collector running");
    }

    /// SIGKILL to its process group, as a container's end takes it: no goodbye. The group,
    /// since a supervisor killed alone leaves its collector running.
    async fn kill(&mut self) {
        assert!(self.signal_group("KILL"), "collector running");
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("killed in time")
            .expect("exit status");
    }

    fn signal_group(&self, signal: &str) -> bool {
        self.child.id().is_some_and(|pid| {
            std::process::Command::new("kill")
                .args([&format!("-{signal}"), "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- collector log ----\n{}", self.log());
        }
        // Whatever it started goes too (`kill_on_drop` reaches only the process itself).
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal_group("KILL");
        }
    }
}

/// Connected with everything a settled collector reports.
fn settled(a: &AgentDetailDto, transport: &str) -> bool {
    let a = &a.agent;
    a.status == "connected"
        && a.transport.as_deref() == Some(transport)
        && a.effective_config_hash.is_some()
        && a.health
            .as_ref()
            .is_some_and(|h| h.healthy && h.status == "StatusOK")
}

/// Scenario 1: the collector connects, Corral shows its description, health, effective
/// configuration and components, and a SIGTERM leaves it disconnected.
async fn scenario_connects_and_stops(transport: Transport) {
    let Some(bin) = binaries() else { return };
    let server = TestServer::start().await;
    let uid = new_uid();
    let uid_text = uuid_str(&uid);
    let mut collector = Collector::start(
        &bin.collector,
        &collector_config(&uid_text, &server, transport),
    );
    let transport_name = match transport {
        Transport::WebSocket => "websocket",
        Transport::Http => "http",
    };

    let a = server
        .wait_agent(&uid, |a| settled(a, transport_name))
        .await
        .agent;
    let ids = &a.identifying_attributes;
    assert_eq!(ids["service.name"], SERVICE, "{ids:?}");
    assert_eq!(ids["service.version"], RELEASE, "{ids:?}");
    assert!(ids["service.instance.id"].is_string(), "{ids:?}");
    let others = &a.non_identifying_attributes;
    assert_eq!(others["os.type"], "linux", "{others:?}");
    assert!(others["host.name"].is_string(), "{others:?}");
    for cap in [
        "ReportsStatus",
        "ReportsEffectiveConfig",
        "ReportsHealth",
        "ReportsAvailableComponents",
    ] {
        assert!(
            a.capabilities.iter().any(|c| c == cap),
            "{cap}: {:?}",
            a.capabilities
        );
    }
    assert!(
        !a.capabilities.iter().any(|c| c == "AcceptsRemoteConfig"),
        "the extension takes no remote configuration: {:?}",
        a.capabilities
    );

    // Health: the collector's tree, pipeline by pipeline.
    let health = a.health.expect("health");
    let pipeline = &health.components["pipeline:traces"];
    assert!(pipeline.healthy, "{pipeline:?}");
    for component in ["receiver:nop", "exporter:nop"] {
        assert!(
            pipeline.components[component].healthy,
            "{component}: {pipeline:?}"
        );
    }
    assert!(
        health.components["extensions"].components["extension:opamp"].healthy,
        "{health:?}"
    );

    // The effective configuration: the collector's YAML, as it runs it.
    let (status, config) = server
        .get(&format!("/api/v1/agents/{uid_text}/effective-config"))
        .await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["hash"], json!(a.effective_config_hash), "{config}");
    let file = &config["files"][""];
    assert_eq!(file["content_type"], "text/yaml", "{config}");
    let body = file["body"].as_str().expect("config body");
    assert!(body.contains(&uid_text), "{body}");
    assert!(body.contains("pipelines:"), "{body}");

    // Its available components decide which configurations it can run.
    assert_compatibility(&server, &uid, ("fits", 0), FITS, "compatible").await;
    let a = assert_compatibility(
        &server,
        &uid,
        ("needs-kafka", 1),
        NEEDS_KAFKA,
        "incompatible",
    )
    .await;
    let reason = a.configuration.and_then(|c| c.incompatible_reason);
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("exporters/kafka")),
        "{reason:?}"
    );

    if transport == Transport::Http {
        // The extension's goodbye over HTTP is cancelled by its own shutdown, so the server
        // finds it gone by its silence: let it learn the poll pace first (30 s until then).
        heard_polls(&server, &uid, 4).await;
    }
    collector.terminate().await;
    let detail = server.wait_status(&uid, "disconnected").await;
    // Starting and stopping are reported unhealthy without an error: no pass through Error.
    assert!(
        detail.history.iter().all(|h| h.to != "error"),
        "{:?}",
        detail.history
    );
    let a = detail.agent;
    assert_eq!(a.transport, None, "not connected any more");
    if transport == Transport::WebSocket {
        // Over WebSocket the extension says goodbye; over HTTP its last request is cancelled
        // by its own shutdown, and the server notices the silence.
        assert_eq!(a.status_reason, "agent disconnected", "{a:?}");
        // Its close frame is answered: a clean close, nothing logged as an error.
        let log = collector.log();
        assert!(!log.contains("\terror\t"), "{log}");
    }
    server.stop().await;
}

/// Waits until the server has seen `n` distinct `last_seen` times: that many polls heard.
async fn heard_polls(server: &TestServer, uid: &[u8], n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n {
        let a = server.agent(uid).await.expect("agent");
        seen.insert(a.agent.last_seen);
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} polls heard",
            seen.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Components this distribution has.
const FITS: &str = "receivers:
  otlp:
    protocols:
      grpc:
processors:
  batch:
exporters:
  debug:
  nop:
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [debug, nop]
";

/// An exporter it lacks.
const NEEDS_KAFKA: &str = "receivers:
  otlp:
    protocols:
      grpc:
exporters:
  kafka:
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [kafka]
";

/// Assigns the collector a configuration (by its service name, above those assigned before)
/// and waits until Corral has judged it against the collector's components.
async fn assert_compatibility(
    server: &TestServer,
    uid: &[u8],
    (name, priority): (&str, u32),
    body: &str,
    expected: &str,
) -> corral::edge::api::dto::AgentDto {
    let request = json!({
        "selector": format!("service.name={SERVICE}"),
        "priority": priority,
        "files": {"collector.yaml": {"body": body, "content_type": "text/yaml"}},
    });
    let (status, reply) = server
        .put(
            &format!("/api/v1/configurations/{name}"),
            &request.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let a = server
        .wait_agent(uid, |a| {
            a.agent
                .configuration
                .as_ref()
                .is_some_and(|c| c.name == name && c.compatibility != "unknown")
        })
        .await
        .agent;
    let config = a.configuration.as_ref().expect("configuration");
    assert_eq!(config.compatibility, expected, "{name}: {a:?}");
    a
}

#[tokio::test]
async fn collector_over_websocket_connects_reports_and_disconnects() {
    scenario_connects_and_stops(Transport::WebSocket).await;
}

#[tokio::test]
async fn collector_over_http_connects_reports_and_disconnects() {
    scenario_connects_and_stops(Transport::Http).await;
}

/// The supervisor's configuration, the one README shows: remote configuration accepted and
/// reported, components and heartbeats reported, connection settings accepted (Corral offers
/// its heartbeat interval only to agents that take them), state kept in `storage`. The
/// collector's own metrics are off in every run, the supervisor's bootstrap run included (it
/// would bind port 8888, and fail if that is taken). It logs at debug level, so a test can
/// read what it was sent (README leaves that out).
fn supervisor_config(server: &TestServer, collector: &Path, storage: &Path) -> String {
    format!(
        "server:
  endpoint: {}
  tls:
    insecure: true
capabilities:
  accepts_remote_config: true
  reports_remote_config: true
  reports_effective_config: true
  reports_health: true
  reports_available_components: true
  reports_heartbeat: true
  accepts_opamp_connection_settings: true
  reports_own_metrics: false
agent:
  executable: {}
  args: [\"--set=service.telemetry.metrics.level=none\"]
storage:
  directory: {}
telemetry:
  logs:
    level: debug
",
        server.ws_url(),
        collector.display(),
        storage.display()
    )
}

/// A supervisor run against `server`, its state in `storage` (which outlives the run).
fn start_supervisor(bin: &Binaries, server: &TestServer, storage: &Path) -> Collector {
    Collector::start(
        &bin.supervisor,
        &supervisor_config(server, &bin.collector, storage),
    )
}

/// The instance uid the supervisor picked (it keeps it in its storage), once it is connected
/// with everything reported and takes remote configuration.
async fn supervised_agent(server: &TestServer, supervisor: &Collector) -> [u8; 16] {
    let deadline = tokio::time::Instant::now() + WAIT;
    let uid = loop {
        let (_, list) = server.get("/api/v1/agents").await;
        if let Some(uid) = list["agents"][0]["instance_uid"].as_str() {
            break *uuid::Uuid::parse_str(uid).expect("uuid").as_bytes();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the supervisor never connected:\n{}",
            supervisor.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    server
        .wait_agent(&uid, |a| {
            settled(a, "websocket")
                && a.agent
                    .capabilities
                    .iter()
                    .any(|c| c == "AcceptsRemoteConfig")
        })
        .await;
    uid
}

/// Puts a new version of the configuration `name` for this distribution.
async fn put_configuration(server: &TestServer, name: &str, body: &str) {
    let request = json!({
        "selector": format!("service.name={SERVICE}"),
        "files": {"collector.yaml": {"body": body, "content_type": "text/yaml"}},
    });
    let (status, reply) = server
        .put(
            &format!("/api/v1/configurations/{name}"),
            &request.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

/// Rolls out version 1 of `fleet` ([`REMOTE`]) and waits until the supervisor runs it.
async fn roll_out_version_1(server: &TestServer, uid: &[u8]) -> AgentDetailDto {
    put_configuration(server, "fleet", REMOTE).await;
    let id = server
        .start_rollout(json!({"configuration": "fleet"}))
        .await;
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["version"], 1, "{r}");
    assert_eq!(r["counts"]["completed"], 1, "{r}");
    server.wait_agent(uid, on_version_1).await
}

/// Settled, having applied version 1.
fn on_version_1(a: &AgentDetailDto) -> bool {
    let agent = &a.agent;
    settled(a, "websocket")
        && agent
            .configuration
            .as_ref()
            .is_some_and(|c| c.current_version == Some(1))
        && agent
            .remote_config
            .as_ref()
            .is_some_and(|r| r.status == "applied")
}

/// What the supervisor logs (at debug level) when it is sent a configuration.
const RECEIVED: &str = "Received remote config from server";

/// What the supervisor is sent: a pipeline that binds no port, and no metrics port either.
const REMOTE: &str = "receivers:
  nop:
exporters:
  debug:
    verbosity: basic
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [nop]
      exporters: [debug]
";

/// A pipeline naming a receiver it does not define: the collector has every component, yet
/// cannot start.
const BROKEN: &str = "receivers:
  nop:
exporters:
  debug:
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [nop/missing]
      exporters: [debug]
";

/// Scenario 2: the OpAMP supervisor runs the collector; a rollout of a configuration reaches
/// it (applying, then applied), a version needing a component it lacks is held back, and a
/// SIGTERM leaves it disconnected.
#[tokio::test]
async fn supervisor_takes_a_rolled_out_configuration() {
    let Some(bin) = binaries() else { return };
    let server = TestServer::start().await;
    let storage = TempDir::new().expect("tempdir");
    let mut supervisor = start_supervisor(&bin, &server, storage.path());
    let uid = supervised_agent(&server, &supervisor).await;
    let a = server.agent(&uid).await.expect("agent").agent;
    assert_eq!(a.configuration, None, "{a:?}");
    assert_eq!(a.identifying_attributes["service.name"], SERVICE, "{a:?}");
    assert_eq!(
        a.identifying_attributes["service.instance.id"],
        uuid_str(&uid)
    );

    let a = roll_out_version_1(&server, &uid).await;
    assert!(
        a.history.iter().any(|h| h.to == "configuring"),
        "applying, then applied: {:?}",
        a.history
    );
    let (_, effective) = server
        .get(&format!(
            "/api/v1/agents/{}/effective-config",
            uuid_str(&uid)
        ))
        .await;
    let files = effective["files"].as_object().expect("files");
    assert!(
        files
            .values()
            .any(|f| f["body"].as_str().is_some_and(|b| b.contains("debug"))),
        "{effective}"
    );

    // A version that needs a component the collector lacks is not sent.
    put_configuration(&server, "fleet", NEEDS_KAFKA).await;
    let id = server
        .start_rollout(json!({"configuration": "fleet"}))
        .await;
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(
        r["counts"]["skipped"],
        json!({"agent lacks components: exporters/kafka": 1}),
        "{r}"
    );
    let a = server.wait_status(&uid, "incompatible").await.agent;
    assert_eq!(
        a.configuration.and_then(|c| c.current_version),
        Some(1),
        "it keeps running version 1"
    );

    supervisor.terminate().await;
    let a = server.wait_status(&uid, "disconnected").await.agent;
    assert_eq!(a.status_reason, "agent disconnected", "{a:?}");
    server.stop().await;
}

/// Scenario 3: a version the collector cannot start, rolled out with no error tolerated and
/// rollback on: the supervisor reports it failed, Corral shows the agent in error with the
/// supervisor's message and stops the rollout, and the agent gets version 1 back and runs it
/// as before.
#[tokio::test]
async fn supervisor_fails_a_broken_configuration_and_is_rolled_back() {
    let Some(bin) = binaries() else { return };
    let server = TestServer::start().await;
    let storage = TempDir::new().expect("tempdir");
    let supervisor = start_supervisor(&bin, &server, storage.path());
    let uid = supervised_agent(&server, &supervisor).await;
    let good = roll_out_version_1(&server, &uid).await.agent;

    put_configuration(&server, "fleet", BROKEN).await;
    let id = server
        .start_rollout(json!({
            "configuration": "fleet",
            "max_errors": 0,
            "rollback_on_failure": true,
        }))
        .await;
    let r = server.wait_rollout(&id, "error").await;
    assert_eq!(r["version"], 2, "{r}");
    assert_eq!(r["previous_version"], 1, "{r}");
    assert_eq!(r["counts"]["errors"], 1, "{r}");
    let error = &r["errors"][0];
    assert_eq!(error["instance_uid"], uuid_str(&uid), "{r}");
    assert_eq!(error["phase"], "failed", "{r}");
    // What the supervisor said, kept with the failure although the rollback clears it.
    let said = error["message"].as_str().unwrap_or_default();
    assert!(said.contains("exited unexpectedly"), "{r}");

    // Version 1 again, the same collector configuration running, healthy.
    let back = server
        .wait_agent(&uid, |a| {
            on_version_1(a)
                && a.agent.effective_config_hash == good.effective_config_hash
                && a.agent
                    .configuration
                    .as_ref()
                    .is_some_and(|c| c.target_version == Some(1))
        })
        .await;
    // In between: applying version 2, its failure with what the supervisor said, and back.
    let since: Vec<_> = back
        .history
        .iter()
        .skip_while(|h| h.to != "error")
        .collect();
    let failed = since.first().expect("an error in the history");
    assert_eq!(failed.from.as_deref(), Some("configuring"), "{failed:?}");
    assert!(
        failed.reason.starts_with("remote config failed: ")
            && failed.reason.contains("exited unexpectedly"),
        "{failed:?}"
    );
    assert_eq!(
        since.iter().map(|h| h.to.as_str()).collect::<Vec<_>>(),
        ["error", "configuring", "connected"],
        "{:?}",
        back.history
    );
    server.stop().await;
}

/// Scenario 5: the supervisor keeps the heartbeat interval Corral offers; hung, it is found
/// gone by its silence; killed and started again on the same storage, it is the same agent,
/// with its history, and the configuration it already runs is not sent again.
#[tokio::test]
async fn supervisor_keeps_the_offered_heartbeat_and_comes_back_after_a_kill() {
    let Some(bin) = binaries() else { return };
    let server = TestServer::with(Options {
        heartbeat_interval: Some(1),
        ..Options::default()
    })
    .await;
    let storage = TempDir::new().expect("tempdir");
    let mut supervisor = start_supervisor(&bin, &server, storage.path());
    let uid = supervised_agent(&server, &supervisor).await;
    let before = roll_out_version_1(&server, &uid).await;
    for cap in ["AcceptsOpAMPConnectionSettings", "ReportsHeartbeat"] {
        assert!(before.agent.capabilities.iter().any(|c| c == cap), "{cap}");
    }

    // Every second, as offered, instead of the protocol's 30 s: five heartbeats (four gaps)
    // take about four seconds.
    let start = tokio::time::Instant::now();
    heard_polls(&server, &uid, 5).await;
    let pace = start.elapsed();
    assert!(
        pace > std::time::Duration::from_millis(2500),
        "faster than offered: {pace:?}"
    );

    // Hung, its connection open: Corral holds it to the interval it accepted.
    supervisor.freeze();
    let gone = server.wait_status(&uid, "disconnected").await.agent;
    assert_eq!(
        gone.status_reason, "no message for 3s (expected every 1s)",
        "{gone:?}"
    );
    supervisor.kill().await;
    assert!(supervisor.log().contains(RECEIVED), "{}", supervisor.log());

    let supervisor = start_supervisor(&bin, &server, storage.path());
    let back = server
        .wait_agent(&uid, |a| {
            a.agent.connected_at != before.agent.connected_at && on_version_1(a)
        })
        .await;
    let (_, list) = server.get("/api/v1/agents").await;
    assert_eq!(list["total"], 1, "the same agent: {list}");
    assert_eq!(back.agent.remote_config, before.agent.remote_config);
    // Its history goes on from where it was, and nothing was applied again: the supervisor
    // told Corral the hash it runs, and was not sent the configuration.
    assert!(!supervisor.log().contains(RECEIVED), "{}", supervisor.log());
    assert!(
        back.history.starts_with(&before.history),
        "{:?}",
        back.history
    );
    assert_eq!(
        back.history[before.history.len()..]
            .iter()
            .map(|h| h.to.as_str())
            .collect::<Vec<_>>(),
        ["disconnected", "connected"],
        "{:?}",
        back.history
    );
    server.stop().await;
}
