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
        Self::start_in(TempDir::new().expect("tempdir"), binary, config)
    }

    fn start_in(dir: TempDir, binary: &Path, config: &str) -> Self {
        let config_path = dir.path().join("collector.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("collector.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
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
}

impl Drop for Collector {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- collector log ----\n{}", self.log());
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

/// The supervisor's configuration: remote configuration accepted and reported, components
/// reported, state kept in `storage`. The collector's own metrics are off in every run, the
/// supervisor's bootstrap run included (it would bind port 8888, and fail if that is taken).
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
  reports_own_metrics: false
agent:
  executable: {}
  args: [\"--set=service.telemetry.metrics.level=none\"]
storage:
  directory: {}
",
        server.ws_url(),
        collector.display(),
        storage.display()
    )
}

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

/// Scenario 2: the OpAMP supervisor runs the collector; a rollout of a configuration reaches
/// it (applying, then applied), a version needing a component it lacks is held back, and a
/// SIGTERM leaves it disconnected.
#[tokio::test]
async fn supervisor_takes_a_rolled_out_configuration() {
    let Some(bin) = binaries() else { return };
    let server = TestServer::start().await;
    let dir = TempDir::new().expect("tempdir");
    let storage = dir.path().join("storage");
    let config = supervisor_config(&server, &bin.collector, &storage);
    let mut supervisor = Collector::start_in(dir, &bin.supervisor, &config);

    // The supervisor picks the instance uid and keeps it in its storage.
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
    let a = server
        .wait_agent(&uid, |a| {
            settled(a, "websocket")
                && a.agent.configuration.is_none()
                && a.agent
                    .capabilities
                    .iter()
                    .any(|c| c == "AcceptsRemoteConfig")
        })
        .await
        .agent;
    assert_eq!(a.identifying_attributes["service.name"], SERVICE, "{a:?}");
    assert_eq!(
        a.identifying_attributes["service.instance.id"],
        uuid_str(&uid)
    );

    let request = json!({
        "selector": format!("service.name={SERVICE}"),
        "files": {"collector.yaml": {"body": REMOTE, "content_type": "text/yaml"}},
    });
    let (status, reply) = server
        .put("/api/v1/configurations/fleet", &request.to_string())
        .await;
    assert_eq!(status, 200, "{reply}");
    let id = server
        .start_rollout(json!({"configuration": "fleet"}))
        .await;
    let r = server.wait_rollout(&id, "stable").await;
    assert_eq!(r["counts"]["completed"], 1, "{r}");
    let a = server
        .wait_agent(&uid, |a| {
            settled(a, "websocket")
                && a.agent
                    .configuration
                    .as_ref()
                    .is_some_and(|c| c.current_version == Some(1))
        })
        .await;
    let remote = a
        .agent
        .remote_config
        .as_ref()
        .expect("remote config status");
    assert_eq!(remote.status, "applied", "{a:?}");
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
    let request = json!({
        "files": {"collector.yaml": {"body": NEEDS_KAFKA, "content_type": "text/yaml"}},
    });
    let (status, reply) = server
        .put("/api/v1/configurations/fleet", &request.to_string())
        .await;
    assert_eq!(status, 200, "{reply}");
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
