//! Simulates a fleet of OpAMP agents (OpenTelemetry collectors) in one process, for load
//! tests and benchmarks of Corral.
//!
//! ```text
//! cargo run --release --example simulate -- --server ws://127.0.0.1:4320/v1/opamp --agents 1000
//! cargo run --release --example simulate -- --server http://127.0.0.1:4320/v1/opamp --agents 1000
//! ```
//!
//! Each agent has its own UUIDv7 instance uid and sequence numbers, sends its full state
//! first, then compressed reports and heartbeats; it honours ReportFullState, a new instance
//! uid, an offered heartbeat interval and remote configs (APPLYING, then APPLIED or FAILED;
//! the hash it last applied or failed is not applied again), reports its available components
//! (the hash in full reports, the full map when the server sets ReportAvailableComponents),
//! upgrades its top-level package "" when offered one (downloads it over HTTP, resuming with
//! range requests, verifies the SHA-256, installs it and restarts with the new
//! service.version), restarts on the Restart command, reconnects with backoff and says
//! goodbye (agent_disconnect) when stopped. Progress goes to stderr; the summary to stdout
//! (one JSON object with `--json`).
//!
//! The fleet looks like a real one: each agent reports one of `--config-variants` effective
//! configs of `--config-size` bytes (5 KiB by default), most agents sharing the first one or
//! two; remote configs take `--apply-delay-ms` to apply, drawn uniformly from ±50% or
//! exponentially (`--apply-delay-dist`), and fail with `--failure-ratio`; `--churn PCT`
//! disconnects and reconnects PCT% of the agents per minute. The summary counts configs
//! applied, failed and re-sent (`configs_resent`: an offer of the config the agent had
//! already applied). Per-agent memory is bounded: config bodies are shared between agents
//! (applied remote configs through a cache of at most 64 configs), and remembered package
//! hashes are capped at 16 per agent.
//!
//! ```text
//! # 100,000 HTTP agents polling every 30 s over 256 pooled connections, 1 in 100 labelled
//! cargo run --release --example simulate -- --server http://127.0.0.1:4320/v1/opamp \
//!     --agents 100000 --connect-rate 5000 --label-every 100:team=payments
//! # 19,000 WebSocket agents over 127.0.0.1..127.0.0.4, 2% reconnecting per minute
//! cargo run --release --example simulate -- --agents 19000 --source-ips 4 --churn 2
//! ```
//!
//! ```text
//! # 1 agent in 4 lacks exporters/kafka; configs containing "BROKEN" fail
//! cargo run --release --example simulate -- --agents 100 --fail-on BROKEN \
//!     --components-ratio 0.25 --alt-components receivers/otlp,processors/batch,exporters/debug
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use corral::edge::protocol::proto;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rand::Rng;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// Command line

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Runs N simulated OpAMP agents (OpenTelemetry collectors) against an OpAMP server"
)]
struct Args {
    /// OpAMP endpoint: ws://host:port/v1/opamp (WebSocket) or http://host:port/v1/opamp (plain HTTP).
    #[arg(long, default_value = "ws://127.0.0.1:4320/v1/opamp")]
    server: String,
    /// Number of agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Agents started per second during ramp-up.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// WebSocket agents connecting to a loopback server bind to 127.0.0.1 .. 127.0.0.N, so
    /// ephemeral ports never run out [default: 1, or one per 20,000 agents].
    #[arg(long)]
    source_ips: Option<u8>,
    /// Heartbeat (WebSocket) or polling (HTTP) interval until the server offers one.
    #[arg(long, default_value_t = 30)]
    heartbeat_seconds: u64,
    /// Size in bytes of the effective config each agent reports, padded with comments or cut
    /// at a line; 0 gives the natural size of the built-in collector YAML (about 1 KiB).
    #[arg(long, visible_alias = "config-size", default_value_t = 5120)]
    config_bytes: usize,
    /// Distinct effective configs in the fleet (1 to 64). Agent i reports variant
    /// min(trailing_ones(i), N-1): half the agents share variant 0, a quarter variant 1, an
    /// eighth variant 2 and so on, the last variant taking the rest, as in real fleets where
    /// most collectors run one or two configs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=64))]
    config_variants: u8,
    /// Mean time to apply a remote config; see --apply-delay-dist.
    #[arg(long, default_value_t = 500)]
    apply_delay_ms: u64,
    /// Distribution of the apply delay around --apply-delay-ms (D): "uniform" draws from
    /// [0.5 D, 1.5 D] (at most 1.5 D); "exp" is exponential with mean D, cut at 5 D.
    #[arg(long, value_enum, default_value_t = DelayDist::Uniform)]
    apply_delay_dist: DelayDist,
    /// Churn: this percentage of the agents per minute disconnect and reconnect, each agent
    /// at exponentially distributed times (a Poisson process of rate PCT/100 per minute).
    /// WebSocket agents close their connection without a goodbye (as on a network cut) and
    /// reconnect after about a second with the same uid, state and continuing sequence
    /// numbers, reporting full state; HTTP agents send agent_disconnect, pause about a second
    /// and resume polling with a full report.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    churn: f64,
    /// Probability that applying a remote config fails.
    #[arg(long, default_value_t = 0.0)]
    failure_ratio: f64,
    /// Applying a remote config whose body contains this text fails, whatever
    /// --failure-ratio says (repeatable).
    #[arg(long = "fail-on", value_name = "SUBSTRING")]
    fail_on: Vec<String>,
    /// Components each agent reports (AvailableComponents), as comma-separated kind/type,
    /// e.g. receivers/otlp,processors/batch,exporters/debug; "none" reports no components
    /// [default: a collector-contrib-like set].
    #[arg(long, value_name = "LIST")]
    components: Option<String>,
    /// The component set that a fraction --components-ratio of the agents report instead.
    #[arg(long, value_name = "LIST", requires = "components_ratio")]
    alt_components: Option<String>,
    /// Fraction of the agents (every 1/R-th) that report --alt-components.
    #[arg(long, value_name = "R", requires = "alt_components")]
    components_ratio: Option<f64>,
    /// Stop after this many seconds [default: run until Ctrl-C or SIGTERM].
    #[arg(long)]
    duration_seconds: Option<u64>,
    /// Extra non-identifying attribute key=value on every agent (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Extra non-identifying attribute key=value on every K-th agent only (agents 0, K, 2K,
    /// ...), e.g. 100:team=payments (repeatable).
    #[arg(long = "label-every", value_name = "K:KEY=VALUE", value_parser = parse_label_every)]
    labels_every: Vec<(usize, String, String)>,
    /// HTTP agents share one client with at most this many connections.
    #[arg(long, default_value_t = 256)]
    http_connections: usize,
    /// Gzip plain-HTTP request bodies (Content-Encoding: gzip).
    #[arg(long)]
    gzip: bool,
    /// service.version the agents report: the version of their top-level package ("").
    #[arg(long, default_value = "v0.115.0")]
    service_version: String,
    /// Neither AcceptsPackages nor ReportsPackageStatuses: no package offers, no
    /// package_statuses.
    #[arg(long)]
    no_packages: bool,
    /// No AcceptsRestartCommand.
    #[arg(long)]
    no_restart: bool,
    /// Time to install a downloaded package, jittered by ±50%.
    #[arg(long, default_value_t = 500)]
    install_delay_ms: u64,
    /// Probability that installing a downloaded, verified package fails.
    #[arg(long, default_value_t = 0.0)]
    install_failure_ratio: f64,
    /// Stop reading each download once, after half its bytes, and resume it with a
    /// `Range: bytes=N-` request.
    #[arg(long)]
    interrupt_downloads: bool,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// At most this many individual errors are printed; all are counted.
    #[arg(long, default_value_t = 20)]
    log_errors: u64,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} must be key=value")),
    }
}

fn parse_label_every(s: &str) -> Result<(usize, String, String), String> {
    let (every, label) = s
        .split_once(':')
        .ok_or_else(|| format!("--label-every {s:?} must be K:key=value"))?;
    let every: usize = every
        .parse()
        .ok()
        .filter(|k| *k > 0)
        .ok_or_else(|| format!("--label-every {s:?}: K must be a positive integer"))?;
    let (k, v) = parse_label(label)?;
    Ok((every, k, v))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DelayDist {
    /// Uniform in [0.5 D, 1.5 D].
    Uniform,
    /// Exponential with mean D, cut at 5 D.
    Exp,
}

/// An exponential delay is cut at this multiple of its mean.
const EXP_DELAY_CAP: f64 = 5.0;

impl DelayDist {
    /// The longest delay drawn for a mean of `mean_ms`.
    fn max_ms(self, mean_ms: u64) -> f64 {
        match self {
            DelayDist::Uniform => mean_ms as f64 * 1.5,
            DelayDist::Exp => mean_ms as f64 * EXP_DELAY_CAP,
        }
    }

    fn draw(self, mean_ms: u64, rng: &mut impl Rng) -> Duration {
        let base = mean_ms as f64;
        if base <= 0.0 {
            return Duration::ZERO;
        }
        let ms = match self {
            DelayDist::Uniform => rng.random_range(base * 0.5..=base * 1.5),
            DelayDist::Exp => {
                // Inverse CDF; 1 - u is in (0, 1], so the logarithm is finite.
                let u: f64 = rng.random_range(0.0..1.0);
                (-(1.0 - u).ln() * base).min(base * EXP_DELAY_CAP)
            }
        };
        Duration::from_micros((ms * 1000.0) as u64)
    }
}

// ---------------------------------------------------------------------------------------
// OpAMP constants (see /work/shared/opamp-facts.md)

const REPORTS_STATUS: u64 = 0x1;
const ACCEPTS_REMOTE_CONFIG: u64 = 0x2;
const REPORTS_EFFECTIVE_CONFIG: u64 = 0x4;
const ACCEPTS_PACKAGES: u64 = 0x8;
const REPORTS_PACKAGE_STATUSES: u64 = 0x10;
const ACCEPTS_OPAMP_CONNECTION_SETTINGS: u64 = 0x100;
const ACCEPTS_RESTART_COMMAND: u64 = 0x400;
const REPORTS_HEALTH: u64 = 0x800;
const REPORTS_REMOTE_CONFIG: u64 = 0x1000;
const REPORTS_HEARTBEAT: u64 = 0x2000;
const REPORTS_AVAILABLE_COMPONENTS: u64 = 0x4000;
const CAPABILITIES: u64 = REPORTS_STATUS
    | ACCEPTS_REMOTE_CONFIG
    | REPORTS_EFFECTIVE_CONFIG
    | REPORTS_REMOTE_CONFIG
    | REPORTS_HEALTH
    | REPORTS_HEARTBEAT
    | ACCEPTS_OPAMP_CONNECTION_SETTINGS;

const FLAG_REPORT_FULL_STATE: u64 = 0x1;
const FLAG_REPORT_AVAILABLE_COMPONENTS: u64 = 0x2;

const RC_UNSET: i32 = 0;
const RC_APPLIED: i32 = 1;
const RC_APPLYING: i32 = 2;
const RC_FAILED: i32 = 3;

const PKG_INSTALLED: i32 = 0;
const PKG_INSTALL_PENDING: i32 = 1;
const PKG_INSTALLING: i32 = 2;
const PKG_INSTALL_FAILED: i32 = 3;
const PKG_DOWNLOADING: i32 = 4;
const COMMAND_RESTART: i32 = 0;
/// The collector itself: the top-level package has an empty name.
const TOP_LEVEL: &str = "";
/// Files at least this big report download progress every 25%.
const PROGRESS_MIN_BYTES: u64 = 256 * 1024;
/// Attempts (the first request and resumes after errors) before a download fails.
const DOWNLOAD_ATTEMPTS: u32 = 5;
/// A download that receives nothing for this long is broken (and resumed).
const DOWNLOAD_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between closing the connection and reconnecting on a restart.
const RESTART_PAUSE: Duration = Duration::from_millis(200);

const PROTOBUF: &str = "application/x-protobuf";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies that ask for another message at once, in a row, before the agent waits for its
/// next heartbeat instead (guards against a server that asks for full state forever).
const MAX_IMMEDIATE_SENDS: u32 = 5;
/// Effective-config file key: a single unnamed file, as the collector's supervisor reports it.
const CONFIG_KEY: &str = "";
/// Distinct applied remote configs kept once for all agents.
const MAX_SHARED_CONFIGS: usize = 64;
/// Per-agent cap on remembered package hashes (installed or failed) and refused packages.
const MAX_REMEMBERED_PACKAGES: usize = 16;
/// The pause between a churn disconnection and the reconnection, jittered by ±50%.
const CHURN_PAUSE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Counters

#[derive(Default)]
struct Stats {
    spawned: AtomicU64,
    /// Agents currently connected (WS: the connection got its first reply; HTTP: the last
    /// poll succeeded).
    connected: AtomicI64,
    /// `connected` when the stop was decided, before agents start saying goodbye.
    connected_at_stop: AtomicI64,
    ever_connected: AtomicU64,
    all_connected_ms: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    heartbeats: AtomicU64,
    full_reports: AtomicU64,
    configs_received: AtomicU64,
    configs_applied: AtomicU64,
    configs_failed: AtomicU64,
    /// Remote configs whose hash was the one last applying, applied or failed.
    configs_ignored: AtomicU64,
    /// Of those, offers of the config the agent had already applied (status APPLIED): a
    /// server that re-sends these wastes bandwidth and, with a real collector, a reload.
    configs_resent: AtomicU64,
    /// Remote configs replaced by a newer one before they were applied.
    configs_superseded: AtomicU64,
    component_map_requests: AtomicU64,
    component_maps_sent: AtomicU64,
    error_responses: AtomicU64,
    connect_errors: AtomicU64,
    connection_drops: AtomicU64,
    poll_errors: AtomicU64,
    decode_errors: AtomicU64,
    reconnects: AtomicU64,
    full_state_requests: AtomicU64,
    uid_reassignments: AtomicU64,
    foreign_uid_replies: AtomicU64,
    heartbeat_offers: AtomicU64,
    immediate_send_limit_hits: AtomicU64,
    disconnects_sent: AtomicU64,
    /// Disconnections on purpose (--churn).
    churn_disconnects: AtomicU64,
    /// Connections (WS) or polls (HTTP) that succeeded again after a churn disconnection.
    churn_reconnects: AtomicU64,
    /// Packages offered in packages_available (one per package entry).
    packages_offered: AtomicU64,
    /// Offers of a hash the agent has, is working on or failed: not downloaded again.
    packages_ignored: AtomicU64,
    /// Downloads started.
    downloads: AtomicU64,
    /// Downloads that completed (all bytes received, whatever the hash).
    downloads_completed: AtomicU64,
    download_bytes: AtomicU64,
    /// Range requests the server answered with 206 from the right offset.
    download_resumes: AtomicU64,
    installs: AtomicU64,
    /// Download errors, hash mismatches and simulated install failures.
    install_failures: AtomicU64,
    /// Restart commands carried out (installs restart too; they are counted as installs).
    restarts: AtomicU64,
    logged: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

// ---------------------------------------------------------------------------------------
// Shared context

enum Target {
    WebSocket {
        url: String,
        addr: SocketAddr,
        /// Source addresses to spread connections over (empty: let the kernel choose).
        sources: Vec<IpAddr>,
    },
    Http {
        url: String,
        client: reqwest::Client,
        slots: Semaphore,
    },
}

struct Ctx {
    args: Args,
    target: Target,
    stats: Stats,
    stop: CancellationToken,
    /// The distinct effective configs agents start with (--config-variants).
    config_bodies: Vec<Bytes>,
    /// Remote configs applied, by hash, shared by every agent that applied them (at most
    /// MAX_SHARED_CONFIGS; agents keep their own copy of any beyond).
    applied_configs: parking_lot::Mutex<std::collections::HashMap<Bytes, proto::AgentConfigMap>>,
    /// What most agents report (None: no components).
    components: Option<Arc<Components>>,
    /// What every 1/ratio-th agent reports instead.
    alt_components: Option<(f64, Option<Arc<Components>>)>,
    /// Downloads packages (no overall timeout: files may be big).
    download_client: reqwest::Client,
    start: Instant,
}

impl Ctx {
    fn log(&self, agent: usize, what: impl std::fmt::Display) {
        let n = self.stats.logged.fetch_add(1, Relaxed);
        if n < self.args.log_errors {
            eprintln!(
                "[{:>7.1}s] agent {agent}: {what}",
                self.start.elapsed().as_secs_f64()
            );
        } else if n == self.args.log_errors {
            eprintln!("(further errors are counted, not printed; see --log-errors)");
        }
    }

    /// The shared copy of an applied remote config (the agent's own beyond the cap).
    fn shared_config(&self, hash: &Bytes, config: proto::AgentConfigMap) -> proto::AgentConfigMap {
        let mut shared = self.applied_configs.lock();
        if let Some(c) = shared.get(hash) {
            return c.clone();
        }
        if shared.len() < MAX_SHARED_CONFIGS {
            // Copy the bodies out of the received frame so it can be freed.
            let own = proto::AgentConfigMap {
                config_map: config
                    .config_map
                    .into_iter()
                    .map(|(k, f)| {
                        let file = proto::AgentConfigFile {
                            body: Bytes::copy_from_slice(&f.body),
                            content_type: f.content_type,
                        };
                        (k, file)
                    })
                    .collect(),
            };
            shared.insert(hash.clone(), own.clone());
            return own;
        }
        config
    }

    /// When this agent next disconnects on purpose (None: no --churn).
    fn next_churn(&self) -> Option<Instant> {
        let per_minute = self.args.churn / 100.0;
        if per_minute <= 0.0 {
            return None;
        }
        let u: f64 = rand::rng().random_range(0.0..1.0);
        let minutes = -(1.0 - u).ln() / per_minute;
        Some(Instant::now() + Duration::from_secs_f64((minutes * 60.0).min(365.0 * 86400.0)))
    }

    fn churn_pause(&self) -> Duration {
        CHURN_PAUSE.mul_f64(rand::rng().random_range(0.5..1.5))
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(self.args.heartbeat_seconds.max(1))
    }

    fn mark_connected(&self) {
        self.stats.connected.fetch_add(1, Relaxed);
    }

    fn mark_disconnected(&self) {
        self.stats.connected.fetch_sub(1, Relaxed);
    }

    fn first_connection(&self) {
        let n = self.stats.ever_connected.fetch_add(1, Relaxed) + 1;
        if n as usize == self.args.agents {
            let ms = self.start.elapsed().as_millis() as u64;
            self.stats.all_connected_ms.store(ms.max(1), Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// One agent's OpAMP state

#[derive(Default, Clone, Copy)]
struct Dirty {
    description: bool,
    health: bool,
    effective: bool,
    remote: bool,
    /// The full component map (the server asked for it).
    components: bool,
    packages: bool,
}

impl Dirty {
    fn any(&self) -> bool {
        self.description
            || self.health
            || self.effective
            || self.remote
            || self.components
            || self.packages
    }
}

struct PendingApply {
    at: Instant,
    hash: Bytes,
    config: proto::AgentConfigMap,
    /// Why applying fails (None: it succeeds).
    fail: Option<String>,
}

struct Agent {
    index: usize,
    uid: Bytes,
    /// Last sequence number used; the first message carries 1.
    seq: u64,
    capabilities: u64,
    /// What the agent reports in available_components (None: nothing).
    components: Option<Arc<Components>>,
    description: proto::AgentDescription,
    health: proto::ComponentHealth,
    effective: proto::AgentConfigMap,
    remote_status: proto::RemoteConfigStatus,
    /// Offered by the server (None: the default). Zero disables WS heartbeats.
    offered_interval: Option<Duration>,
    send_full: bool,
    dirty: Dirty,
    pending_apply: Option<PendingApply>,
    /// From an error_response or a Retry-After header, applied before the next poll.
    retry_after: Option<Duration>,
    /// Sends in a row that a reply asked for.
    immediate_sends: u32,
    /// The agent has news of its own (a config it started applying) to send at once,
    /// whatever the limit on immediate sends.
    must_send: bool,
    packages: Packages,
    /// Close the connection and come back as a restarted agent once the news is sent.
    restart: bool,
}

/// The agent's top-level package ("", the collector itself) and what it does with offers.
struct Packages {
    /// AcceptsPackages and ReportsPackageStatuses.
    enabled: bool,
    /// The version it runs (service.version).
    version: String,
    /// The package hash it was last installed from (empty: as shipped).
    hash: Bytes,
    /// What it reports for "".
    status: proto::PackageStatus,
    /// Offers of other packages, refused.
    others: BTreeMap<String, proto::PackageStatus>,
    /// all_packages_hash of the last offer.
    all_hash: Bytes,
    /// Package hashes installed before, with their versions: installed again from the local
    /// copy, never downloaded again.
    installed: std::collections::HashMap<Bytes, String>,
    /// Package hashes whose download or install failed, with the error: never tried again.
    failed: std::collections::HashMap<Bytes, String>,
    job: Option<PackageJob>,
}

/// The offered package being downloaded or installed.
struct PackageJob {
    hash: Bytes,
    version: String,
    phase: Phase,
}

enum Phase {
    Downloading(DownloadTask),
    /// InstallPending is reported; Installing follows once that is sent.
    Pending,
    Installing {
        at: Instant,
        /// Why installing fails (None: it succeeds).
        fail: Option<String>,
    },
}

/// A download running in its own task; dropping this aborts it.
struct DownloadTask {
    events: tokio::sync::mpsc::UnboundedReceiver<DownloadEvent>,
    task: tokio::task::AbortHandle,
}

impl Drop for DownloadTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum DownloadEvent {
    Progress {
        percent: f64,
        bytes_per_second: f64,
    },
    /// The server answered a Range request with 206 from the right offset.
    Resumed,
    /// Something worth logging.
    Note(String),
    /// All bytes arrived; whether their SHA-256 matched.
    Done {
        bytes: u64,
        verified: Result<(), String>,
    },
    /// The transfer failed for good.
    Failed(String),
}

impl Packages {
    fn new(version: &str, enabled: bool) -> Self {
        Self {
            enabled,
            version: version.to_string(),
            hash: Bytes::new(),
            status: proto::PackageStatus {
                name: TOP_LEVEL.to_string(),
                agent_has_version: version.to_string(),
                status: PKG_INSTALLED,
                ..Default::default()
            },
            others: BTreeMap::new(),
            all_hash: Bytes::new(),
            installed: std::collections::HashMap::new(),
            failed: std::collections::HashMap::new(),
            job: None,
        }
    }

    /// The status of the package it has, with nothing offered or in progress.
    fn idle_status(&self) -> proto::PackageStatus {
        proto::PackageStatus {
            name: TOP_LEVEL.to_string(),
            agent_has_version: self.version.clone(),
            agent_has_hash: self.hash.clone(),
            status: PKG_INSTALLED,
            ..Default::default()
        }
    }

    /// A status about an offered package.
    fn offered_status(&self, hash: &Bytes, version: &str, status: i32) -> proto::PackageStatus {
        proto::PackageStatus {
            server_offered_version: version.to_string(),
            server_offered_hash: hash.clone(),
            status,
            ..self.idle_status()
        }
    }

    fn report(&self) -> proto::PackageStatuses {
        let mut packages = self.others.clone();
        packages.insert(TOP_LEVEL.to_string(), self.status.clone());
        proto::PackageStatuses {
            packages,
            server_provided_all_packages_hash: self.all_hash.clone(),
            error_message: String::new(),
        }
    }

    fn downloading(&self) -> bool {
        matches!(
            self.job,
            Some(PackageJob {
                phase: Phase::Downloading(_),
                ..
            })
        )
    }
}

/// The next event of the running download (pending forever if there is none).
async fn download_event(job: &mut Option<PackageJob>) -> DownloadEvent {
    match job {
        Some(PackageJob {
            phase: Phase::Downloading(d),
            ..
        }) => match d.events.recv().await {
            Some(e) => e,
            None => DownloadEvent::Failed("the download task ended without a result".into()),
        },
        _ => std::future::pending().await,
    }
}

/// Inserts into a per-agent map of at most MAX_REMEMBERED_PACKAGES entries, forgetting an
/// arbitrary one when full.
fn remember(map: &mut std::collections::HashMap<Bytes, String>, key: Bytes, value: String) {
    if map.len() >= MAX_REMEMBERED_PACKAGES && !map.contains_key(&key) {
        if let Some(old) = map.keys().next().cloned() {
            map.remove(&old);
        }
    }
    map.insert(key, value);
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn kv(key: &str, value: &str) -> proto::KeyValue {
    proto::KeyValue {
        key: key.to_string(),
        value: Some(proto::AnyValue {
            value: Some(proto::any_value::Value::StringValue(value.to_string())),
        }),
    }
}

fn uid_string(uid: &[u8]) -> String {
    uuid::Uuid::from_slice(uid).map_or_else(|_| hex_string(uid), |u| u.to_string())
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn healthy(status: &str, at: u64) -> proto::ComponentHealth {
    proto::ComponentHealth {
        healthy: true,
        start_time_unix_nano: at,
        status: status.to_string(),
        status_time_unix_nano: at,
        ..Default::default()
    }
}

impl Agent {
    fn new(index: usize, ctx: &Ctx) -> Self {
        let uid = Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes());
        let mut non_identifying = vec![
            kv("os.type", "linux"),
            kv("host.arch", "amd64"),
            kv("host.name", &format!("sim-host-{index}")),
        ];
        let mut components = ctx.components.clone();
        if let Some((ratio, alt)) = &ctx.alt_components {
            let alt_agent = is_alt(index, *ratio);
            if alt_agent {
                components.clone_from(alt);
            }
            non_identifying.push(kv(
                "sim.components",
                if alt_agent { "alt" } else { "default" },
            ));
        }
        non_identifying.extend(ctx.args.labels.iter().map(|(k, v)| kv(k, v)));
        non_identifying.extend(
            ctx.args
                .labels_every
                .iter()
                .filter(|(every, _, _)| index % every == 0)
                .map(|(_, k, v)| kv(k, v)),
        );
        let mut capabilities = if components.is_some() {
            CAPABILITIES | REPORTS_AVAILABLE_COMPONENTS
        } else {
            CAPABILITIES
        };
        if !ctx.args.no_packages {
            capabilities |= ACCEPTS_PACKAGES | REPORTS_PACKAGE_STATUSES;
        }
        if !ctx.args.no_restart {
            capabilities |= ACCEPTS_RESTART_COMMAND;
        }
        let description = proto::AgentDescription {
            identifying_attributes: vec![
                kv("service.name", "otelcol-contrib"),
                kv("service.version", &ctx.args.service_version),
                kv("service.instance.id", &uid_string(&uid)),
            ],
            non_identifying_attributes: non_identifying,
        };
        let started = now_nanos();
        let mut pipelines = BTreeMap::new();
        for pipeline in ["pipeline:metrics", "pipeline:traces"] {
            let mut components = BTreeMap::new();
            components.insert("receiver:otlp".to_string(), healthy("StatusOK", started));
            components.insert("processor:batch".to_string(), healthy("StatusOK", started));
            components.insert(
                "exporter:otlphttp".to_string(),
                healthy("StatusOK", started),
            );
            let mut p = healthy("StatusOK", started);
            p.component_health_map = components;
            pipelines.insert(pipeline.to_string(), p);
        }
        let mut health = healthy("StatusOK", started);
        health.component_health_map = pipelines;
        let mut files = BTreeMap::new();
        files.insert(
            CONFIG_KEY.to_string(),
            proto::AgentConfigFile {
                body: ctx.config_bodies[config_variant(index, ctx.config_bodies.len())].clone(),
                content_type: "text/yaml".to_string(),
            },
        );
        Self {
            index,
            uid,
            seq: 0,
            capabilities,
            components,
            description,
            health,
            effective: proto::AgentConfigMap { config_map: files },
            remote_status: proto::RemoteConfigStatus {
                last_remote_config_hash: Bytes::new(),
                status: RC_UNSET,
                error_message: String::new(),
            },
            offered_interval: None,
            send_full: true,
            dirty: Dirty::default(),
            pending_apply: None,
            retry_after: None,
            immediate_sends: 0,
            must_send: false,
            packages: Packages::new(&ctx.args.service_version, !ctx.args.no_packages),
            restart: false,
        }
    }

    /// The next message: full state if due, otherwise whatever changed (a bare heartbeat
    /// when nothing did). Flags stay set until [`Agent::delivered`].
    fn next_message(&mut self, ctx: &Ctx) -> proto::AgentToServer {
        self.seq += 1;
        let full = self.send_full;
        let d = self.dirty;
        let msg = proto::AgentToServer {
            instance_uid: self.uid.clone(),
            sequence_num: self.seq,
            capabilities: self.capabilities,
            // Like the collector (opamp-go): the hash alone, the full map when asked.
            available_components: self.components.as_ref().and_then(|c| {
                if d.components {
                    inc(&ctx.stats.component_maps_sent);
                    Some(c.full.clone())
                } else {
                    full.then(|| proto::AvailableComponents {
                        components: BTreeMap::new(),
                        hash: c.hash.clone(),
                    })
                }
            }),
            agent_description: (full || d.description).then(|| self.description.clone()),
            health: (full || d.health).then(|| self.health.clone()),
            effective_config: (full || d.effective).then(|| proto::EffectiveConfig {
                config_map: Some(self.effective.clone()),
            }),
            remote_config_status: (full || d.remote).then(|| self.remote_status.clone()),
            package_statuses: (self.packages.enabled && (full || d.packages))
                .then(|| self.packages.report()),
            ..Default::default()
        };
        if full {
            inc(&ctx.stats.full_reports);
        } else if !d.any() {
            inc(&ctx.stats.heartbeats);
        }
        msg
    }

    fn delivered(&mut self) {
        self.send_full = false;
        self.dirty = Dirty::default();
    }

    fn goodbye(&mut self, ctx: &Ctx) -> proto::AgentToServer {
        let mut msg = self.next_message(ctx);
        if !msg.is_full_or_changes() {
            // Counted as a heartbeat by next_message; it is a goodbye.
            ctx.stats.heartbeats.fetch_sub(1, Relaxed);
        }
        msg.agent_disconnect = Some(proto::AgentDisconnect {});
        msg
    }

    fn wants_to_send(&self) -> bool {
        self.send_full || self.dirty.any()
    }

    /// WebSocket heartbeat interval (None: disabled by the server).
    fn ws_heartbeat(&self, ctx: &Ctx) -> Option<Duration> {
        match self.offered_interval {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => Some(ctx.default_interval()),
        }
    }

    /// HTTP polling interval: an offer of 0 cannot stop polling, so it means the default.
    fn poll_interval(&self, ctx: &Ctx) -> Duration {
        match self.offered_interval {
            Some(d) if !d.is_zero() => d,
            _ => ctx.default_interval(),
        }
    }

    /// Acts on one ServerToAgent. Returns whether the agent should send a message now.
    fn on_reply(&mut self, msg: proto::ServerToAgent, ctx: &Ctx) -> bool {
        let st = &ctx.stats;
        if !msg.instance_uid.is_empty() && msg.instance_uid != self.uid {
            // Replies to a message sent before a uid change still carry the old uid.
            inc(&st.foreign_uid_replies);
        }
        if let Some(err) = msg.error_response {
            inc(&st.error_responses);
            let retry = err
                .details
                .map(|proto::server_error_response::Details::RetryInfo(r)| {
                    Duration::from_nanos(r.retry_after_nanoseconds)
                });
            self.retry_after = retry;
            ctx.log(
                self.index,
                format!(
                    "error_response type={} message={:?} retry_after={retry:?}",
                    err.r#type, err.error_message
                ),
            );
            // Only instance_uid may accompany an error response.
            return false;
        }
        if let Some(command) = msg.command {
            self.on_command(command.r#type, ctx);
            // Only instance_uid and capabilities may accompany a command.
            return self.wants_to_send();
        }
        if msg.flags & FLAG_REPORT_FULL_STATE != 0 {
            inc(&st.full_state_requests);
            self.send_full = true;
        }
        if msg.flags & FLAG_REPORT_AVAILABLE_COMPONENTS != 0 {
            inc(&st.component_map_requests);
            // An agent without components has nothing to report.
            self.dirty.components |= self.components.is_some();
        }
        if let Some(id) = msg.agent_identification {
            if id.new_instance_uid.len() == 16 && id.new_instance_uid != self.uid {
                inc(&st.uid_reassignments);
                self.uid = id.new_instance_uid;
                let text = uid_string(&self.uid);
                for attr in &mut self.description.identifying_attributes {
                    if attr.key == "service.instance.id" {
                        *attr = kv("service.instance.id", &text);
                    }
                }
                self.dirty.description = true;
            } else if id.new_instance_uid.len() != 16 {
                inc(&st.decode_errors);
                ctx.log(
                    self.index,
                    format!(
                        "new_instance_uid of {} bytes ignored",
                        id.new_instance_uid.len()
                    ),
                );
            }
        }
        if let Some(opamp) = msg.connection_settings.and_then(|cs| cs.opamp) {
            inc(&st.heartbeat_offers);
            self.offered_interval = Some(Duration::from_secs(opamp.heartbeat_interval_seconds));
        }
        if let Some(rc) = msg.remote_config {
            self.on_remote_config(rc, ctx);
        }
        if let Some(offer) = msg.packages_available {
            self.on_packages_available(offer, ctx);
        }
        self.wants_to_send()
    }

    fn on_command(&mut self, kind: i32, ctx: &Ctx) {
        if kind != COMMAND_RESTART {
            ctx.log(self.index, format!("unknown command type {kind} ignored"));
            return;
        }
        if self.capabilities & ACCEPTS_RESTART_COMMAND == 0 {
            ctx.log(
                self.index,
                "restart command ignored: the agent did not set AcceptsRestartCommand",
            );
            return;
        }
        inc(&ctx.stats.restarts);
        // A restart abandons a download or install under way; the server may offer it again.
        if self.packages.job.take().is_some() {
            self.packages.status = self.packages.idle_status();
        }
        self.restart = true;
    }

    fn on_packages_available(&mut self, offer: proto::PackagesAvailable, ctx: &Ctx) {
        if !self.packages.enabled {
            ctx.log(
                self.index,
                "packages_available ignored: the agent did not set AcceptsPackages",
            );
            return;
        }
        if offer.all_packages_hash != self.packages.all_hash {
            self.packages.all_hash = offer.all_packages_hash;
            self.dirty.packages = true;
        }
        for (name, package) in offer.packages {
            inc(&ctx.stats.packages_offered);
            if name == TOP_LEVEL {
                self.offer_top_level(package, ctx);
                continue;
            }
            inc(&ctx.stats.install_failures);
            ctx.log(
                self.index,
                format!("package {name:?} refused: not top-level"),
            );
            if self.packages.others.len() >= MAX_REMEMBERED_PACKAGES
                && !self.packages.others.contains_key(&name)
            {
                self.packages.others.pop_first();
            }
            self.packages.others.insert(
                name.clone(),
                proto::PackageStatus {
                    name,
                    server_offered_version: package.version,
                    server_offered_hash: package.hash,
                    status: PKG_INSTALL_FAILED,
                    error_message: "the simulated agent installs only the top-level package \"\""
                        .to_string(),
                    ..Default::default()
                },
            );
            self.dirty.packages = true;
            self.must_send = true;
        }
    }

    /// Acts on an offer of the top-level package: downloads it unless it is the one
    /// installed, the one under way, or one that failed; installs a hash installed before
    /// from the local copy.
    fn offer_top_level(&mut self, offer: proto::PackageAvailable, ctx: &Ctx) {
        let st = &ctx.stats;
        let pkg = &mut self.packages;
        let hash = offer.hash;
        let version = offer.version;
        self.dirty.packages = true;
        self.must_send = true;
        if hash == pkg.hash && !hash.is_empty() {
            inc(&st.packages_ignored);
            if pkg.job.take().is_some() || pkg.status.server_offered_hash != hash {
                pkg.status = pkg.offered_status(&hash, &version, PKG_INSTALLED);
            }
            return;
        }
        if pkg.job.as_ref().is_some_and(|j| j.hash == hash) {
            inc(&st.packages_ignored);
            return;
        }
        // A different package replaces one under way.
        pkg.job = None;
        if let Some(error) = pkg.failed.get(&hash) {
            inc(&st.packages_ignored);
            pkg.status = proto::PackageStatus {
                error_message: error.clone(),
                ..pkg.offered_status(&hash, &version, PKG_INSTALL_FAILED)
            };
            return;
        }
        let file = offer.file.unwrap_or_default();
        let problem = if hash.is_empty() {
            Some("the offer has no hash")
        } else if file.download_url.is_empty() {
            Some("the offer has no file.download_url")
        } else if file.content_hash.len() != 32 {
            Some("the offer's file.content_hash is not a SHA-256")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.fail_package(hash, version, problem.to_string(), ctx);
            return;
        }
        if pkg.installed.contains_key(&hash) {
            // Installed before: the local copy is installed again, no download.
            pkg.status = pkg.offered_status(&hash, &version, PKG_INSTALL_PENDING);
            pkg.job = Some(PackageJob {
                hash,
                version,
                phase: Phase::Pending,
            });
            return;
        }
        inc(&st.downloads);
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(download(
            ctx.download_client.clone(),
            file.download_url,
            file.content_hash,
            ctx.args.interrupt_downloads,
            tx,
        ))
        .abort_handle();
        pkg.status = proto::PackageStatus {
            download_details: Some(proto::PackageDownloadDetails::default()),
            ..pkg.offered_status(&hash, &version, PKG_DOWNLOADING)
        };
        pkg.job = Some(PackageJob {
            hash,
            version,
            phase: Phase::Downloading(DownloadTask { events, task }),
        });
    }

    /// Reports InstallFailed for an offered package and never tries it again.
    fn fail_package(&mut self, hash: Bytes, version: String, error: String, ctx: &Ctx) {
        inc(&ctx.stats.install_failures);
        ctx.log(self.index, format!("package {version} failed: {error}"));
        let pkg = &mut self.packages;
        pkg.job = None;
        pkg.status = proto::PackageStatus {
            error_message: error.clone(),
            ..pkg.offered_status(&hash, &version, PKG_INSTALL_FAILED)
        };
        remember(&mut pkg.failed, hash, error);
        self.dirty.packages = true;
        self.must_send = true;
    }

    fn on_download_event(&mut self, event: DownloadEvent, ctx: &Ctx) {
        let Some((hash, version)) = self
            .packages
            .job
            .as_ref()
            .map(|j| (j.hash.clone(), j.version.clone()))
        else {
            return;
        };
        match event {
            DownloadEvent::Progress {
                percent,
                bytes_per_second,
            } => {
                self.packages.status.download_details = Some(proto::PackageDownloadDetails {
                    download_percent: percent,
                    download_bytes_per_second: bytes_per_second,
                });
                self.dirty.packages = true;
                self.must_send = true;
            }
            DownloadEvent::Resumed => inc(&ctx.stats.download_resumes),
            DownloadEvent::Note(text) => ctx.log(self.index, text),
            DownloadEvent::Done { bytes, verified } => {
                inc(&ctx.stats.downloads_completed);
                ctx.stats.download_bytes.fetch_add(bytes, Relaxed);
                match verified {
                    Ok(()) => {
                        self.packages.status =
                            self.packages
                                .offered_status(&hash, &version, PKG_INSTALL_PENDING);
                        self.packages.job = Some(PackageJob {
                            hash,
                            version,
                            phase: Phase::Pending,
                        });
                        self.dirty.packages = true;
                        self.must_send = true;
                    }
                    Err(e) => self.fail_package(hash, version, e, ctx),
                }
            }
            DownloadEvent::Failed(e) => self.fail_package(hash, version, e, ctx),
        }
    }

    /// When the next install step is due: at once after InstallPending is sent, at the end
    /// of the install delay after Installing is sent.
    fn install_at(&self) -> Option<Instant> {
        if self.dirty.packages {
            return None;
        }
        match self.packages.job.as_ref()?.phase {
            Phase::Pending => Some(Instant::now()),
            Phase::Installing { at, .. } => Some(at),
            Phase::Downloading(_) => None,
        }
    }

    /// InstallPending → Installing, or Installing → Installed (then a restart) or
    /// InstallFailed.
    fn install_due(&mut self, ctx: &Ctx) {
        let Some(mut job) = self.packages.job.take() else {
            return;
        };
        match job.phase {
            Phase::Pending => {
                let (delay, fail) = {
                    let mut rng = rand::rng();
                    let base = ctx.args.install_delay_ms as f64;
                    let ms = if base > 0.0 {
                        rng.random_range(base * 0.5..=base * 1.5)
                    } else {
                        0.0
                    };
                    let fail = rng.random_bool(ctx.args.install_failure_ratio).then(|| {
                        format!(
                            "simulated failure installing {}: the new collector did not start (--install-failure-ratio)",
                            job.version
                        )
                    });
                    (Duration::from_micros((ms * 1000.0) as u64), fail)
                };
                self.packages.status =
                    self.packages
                        .offered_status(&job.hash, &job.version, PKG_INSTALLING);
                job.phase = Phase::Installing {
                    at: Instant::now() + delay,
                    fail,
                };
                self.packages.job = Some(job);
            }
            Phase::Installing { fail: Some(e), .. } => {
                self.fail_package(job.hash, job.version, e, ctx);
                return;
            }
            Phase::Installing { fail: None, .. } => {
                inc(&ctx.stats.installs);
                let pkg = &mut self.packages;
                remember(&mut pkg.installed, job.hash.clone(), job.version.clone());
                pkg.version = job.version;
                pkg.hash = job.hash;
                pkg.status = pkg.offered_status(&pkg.hash, &pkg.version, PKG_INSTALLED);
                self.restart = true;
            }
            Phase::Downloading(_) => {
                self.packages.job = Some(job);
                return;
            }
        }
        self.dirty.packages = true;
        self.must_send = true;
    }

    /// The agent process starts again: new OpAMP client state, the installed version, a
    /// full report first.
    fn restarted(&mut self) {
        self.seq = 0;
        self.send_full = true;
        self.dirty = Dirty::default();
        self.offered_interval = None;
        self.retry_after = None;
        self.immediate_sends = 0;
        self.must_send = false;
        self.restart = false;
        let version = self.packages.version.clone();
        for attr in &mut self.description.identifying_attributes {
            if attr.key == "service.version" {
                *attr = kv("service.version", &version);
            }
        }
    }

    /// Starts applying a remote config: APPLYING at once, APPLIED or FAILED after the apply
    /// delay. The config last applying, applied or failed (the same hash) is ignored, as the
    /// collector does; an earlier one that comes back (a rollback) is applied again.
    fn on_remote_config(&mut self, rc: proto::AgentRemoteConfig, ctx: &Ctx) {
        let st = &ctx.stats;
        inc(&st.configs_received);
        let known = rc.config_hash == self.remote_status.last_remote_config_hash
            && self.remote_status.status != RC_UNSET;
        if known {
            inc(&st.configs_ignored);
            if self.remote_status.status == RC_APPLIED {
                inc(&st.configs_resent);
            }
            return;
        }
        if self.pending_apply.is_some() {
            inc(&st.configs_superseded);
        }
        let config = rc.config.unwrap_or_default();
        let marker = ctx.args.fail_on.iter().find(|m| {
            config
                .config_map
                .values()
                .any(|f| contains(&f.body, m.as_bytes()))
        });
        let (delay, fail) = {
            let mut rng = rand::rng();
            let delay = ctx
                .args
                .apply_delay_dist
                .draw(ctx.args.apply_delay_ms, &mut rng);
            let fail = match marker {
                Some(m) => Some(format!(
                    "simulated failure: the config contains {m:?} (--fail-on)"
                )),
                None => rng.random_bool(ctx.args.failure_ratio).then(|| {
                    "simulated failure: invalid keys in processors::batch (--failure-ratio)"
                        .to_string()
                }),
            };
            (delay, fail)
        };
        self.remote_status = proto::RemoteConfigStatus {
            last_remote_config_hash: rc.config_hash.clone(),
            status: RC_APPLYING,
            error_message: String::new(),
        };
        self.dirty.remote = true;
        self.must_send = true;
        self.pending_apply = Some(PendingApply {
            at: Instant::now() + delay,
            hash: rc.config_hash,
            config,
            fail,
        });
    }

    /// When the pending remote config is applied: not before APPLYING has been sent.
    fn apply_at(&self) -> Option<Instant> {
        self.pending_apply
            .as_ref()
            .filter(|_| !self.dirty.remote)
            .map(|p| p.at)
    }

    /// Finishes applying the pending remote config.
    fn apply_due(&mut self, ctx: &Ctx) {
        let Some(p) = self.pending_apply.take() else {
            return;
        };
        if let Some(error_message) = p.fail {
            inc(&ctx.stats.configs_failed);
            self.remote_status = proto::RemoteConfigStatus {
                last_remote_config_hash: p.hash,
                status: RC_FAILED,
                error_message,
            };
        } else {
            inc(&ctx.stats.configs_applied);
            self.effective = ctx.shared_config(&p.hash, p.config);
            self.remote_status = proto::RemoteConfigStatus {
                last_remote_config_hash: p.hash,
                status: RC_APPLIED,
                error_message: String::new(),
            };
            self.dirty.effective = true;
        }
        self.dirty.remote = true;
    }

    /// Whether a reply's request for another message may be honoured at once (the agent's
    /// own news always is).
    fn may_send_immediately(&mut self, ctx: &Ctx) -> bool {
        if std::mem::take(&mut self.must_send) {
            return true;
        }
        self.immediate_sends += 1;
        if self.immediate_sends > MAX_IMMEDIATE_SENDS {
            if self.immediate_sends == MAX_IMMEDIATE_SENDS + 1 {
                inc(&ctx.stats.immediate_send_limit_hits);
                ctx.log(
                    self.index,
                    "server keeps asking for another message; waiting for the next heartbeat",
                );
            }
            return false;
        }
        true
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

trait Carries {
    fn is_full_or_changes(&self) -> bool;
}

impl Carries for proto::AgentToServer {
    fn is_full_or_changes(&self) -> bool {
        self.agent_description.is_some()
            || self.health.is_some()
            || self.effective_config.is_some()
            || self.remote_config_status.is_some()
            || self.available_components.is_some()
            || self.package_statuses.is_some()
    }
}

// ---------------------------------------------------------------------------------------
// Backoff

struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The wait before the next attempt: the current step with ±50% jitter.
    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(rand::rng().random_range(0.5..1.5))
    }
}

/// Sleeps unless the simulation stops first; returns false when stopped.
async fn pause(ctx: &Ctx, d: Duration) -> bool {
    tokio::select! {
        _ = ctx.stop.cancelled() => false,
        _ = sleep(d) => true,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

// ---------------------------------------------------------------------------------------
// WebSocket agents

type Ws = WebSocketStream<TcpStream>;

enum SessionEnd {
    Stopped,
    /// The agent said goodbye to restart (a restart command or a package installed).
    Restart,
    /// The agent closed the connection on purpose (--churn).
    Churn,
    Dropped {
        reason: String,
        got_reply: bool,
    },
}

/// How a connection's conversation ended without an error.
enum Exit {
    Stopped,
    Restart,
    Churn,
}

async fn connect_ws(
    index: usize,
    url: &str,
    addr: SocketAddr,
    sources: &[IpAddr],
) -> Result<Ws, String> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if !sources.is_empty() {
        let source = sources[index % sources.len()];
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let stream = match timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect {addr}: {e}")),
        Err(_) => return Err(format!("connect {addr}: timed out")),
    };
    let _ = stream.set_nodelay(true);
    let request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    match timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await
    {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => Err(format!("websocket handshake: {e}")),
        Err(_) => Err("websocket handshake: timed out".to_string()),
    }
}

async fn ws_send(ws: &mut Ws, msg: &proto::AgentToServer, ctx: &Ctx) -> Result<(), String> {
    let mut buf = Vec::with_capacity(1 + msg.encoded_len());
    buf.push(0);
    msg.encode(&mut buf).map_err(|e| format!("encode: {e}"))?;
    let len = buf.len() as u64;
    ws.send(WsMessage::Binary(Bytes::from(buf)))
        .await
        .map_err(|e| format!("send: {e}"))?;
    inc(&ctx.stats.sent);
    ctx.stats.bytes_sent.fetch_add(len, Relaxed);
    Ok(())
}

async fn run_ws_agent(mut agent: Agent, ctx: Arc<Ctx>) {
    let Target::WebSocket { url, addr, sources } = &ctx.target else {
        return;
    };
    let mut backoff = Backoff::new();
    let mut ever = false;
    let mut attempts = 0u64;
    let mut restarting = false;
    let mut churned = false;
    loop {
        if ctx.stop.is_cancelled() {
            return;
        }
        let connected = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            r = connect_ws(agent.index, url, *addr, sources) => r,
        };
        // A restarted agent's first connection is not a reconnect.
        if !std::mem::take(&mut restarting) {
            attempts += 1;
        }
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(e) => {
                inc(&ctx.stats.connect_errors);
                ctx.log(agent.index, e);
                if !pause(&ctx, backoff.step()).await {
                    return;
                }
                continue;
            }
        };
        if attempts > 1 {
            inc(&ctx.stats.reconnects);
        }
        if std::mem::take(&mut churned) {
            inc(&ctx.stats.churn_reconnects);
        }
        // Like the collector, report everything on each new connection.
        agent.send_full = true;
        match ws_session(&mut agent, &mut ws, &ctx, &mut ever).await {
            SessionEnd::Stopped => return,
            SessionEnd::Restart => {
                drop(ws);
                if !pause(&ctx, RESTART_PAUSE).await {
                    return;
                }
                agent.restarted();
                backoff.reset();
                attempts = 1;
                restarting = true;
            }
            SessionEnd::Churn => {
                inc(&ctx.stats.churn_disconnects);
                drop(ws);
                if !pause(&ctx, ctx.churn_pause()).await {
                    return;
                }
                // Same uid, state and sequence numbers; a full report on the new connection.
                backoff.reset();
                attempts = 1;
                restarting = true;
                churned = true;
            }
            SessionEnd::Dropped { reason, got_reply } => {
                inc(&ctx.stats.connection_drops);
                ctx.log(agent.index, format!("connection dropped: {reason}"));
                if got_reply {
                    backoff.reset();
                }
                if !pause(&ctx, backoff.step()).await {
                    return;
                }
            }
        }
    }
}

async fn ws_session(agent: &mut Agent, ws: &mut Ws, ctx: &Ctx, ever: &mut bool) -> SessionEnd {
    let mut got_reply = false;
    let end = ws_exchange(agent, ws, ctx, ever, &mut got_reply).await;
    if got_reply {
        ctx.mark_disconnected();
    }
    match end {
        Ok(Exit::Stopped) => SessionEnd::Stopped,
        Ok(Exit::Restart) => SessionEnd::Restart,
        Ok(Exit::Churn) => SessionEnd::Churn,
        Err(reason) => SessionEnd::Dropped { reason, got_reply },
    }
}

/// One connection's conversation. Ok when the simulation stopped or the agent restarts
/// (goodbye said), Err with the reason when the connection broke.
async fn ws_exchange(
    agent: &mut Agent,
    ws: &mut Ws,
    ctx: &Ctx,
    ever: &mut bool,
    got_reply: &mut bool,
) -> Result<Exit, String> {
    let msg = agent.next_message(ctx);
    ws_send(ws, &msg, ctx).await?;
    agent.delivered();
    let mut last_send = Instant::now();
    let churn_at = ctx.next_churn();
    loop {
        if agent.restart {
            ws_goodbye(agent, ws, ctx).await;
            return Ok(Exit::Restart);
        }
        let next_heartbeat = agent
            .ws_heartbeat(ctx)
            .map_or_else(far_future, |d| last_send + d);
        let apply_at = agent.apply_at();
        let install_at = agent.install_at();
        let downloading = agent.packages.downloading();
        let mut heartbeat_due = false;
        tokio::select! {
            _ = ctx.stop.cancelled() => {
                ws_goodbye(agent, ws, ctx).await;
                return Ok(Exit::Stopped);
            }
            frame = ws.next() => match frame {
                None => return Err("closed".to_string()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(WsMessage::Binary(bytes))) => {
                    inc(&ctx.stats.received);
                    ctx.stats.bytes_received.fetch_add(bytes.len() as u64, Relaxed);
                    let reply = corral::edge::protocol::unframe_ws(bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|b| proto::ServerToAgent::decode(b).map_err(|e| e.to_string()));
                    let reply = match reply {
                        Ok(r) => r,
                        Err(e) => {
                            inc(&ctx.stats.decode_errors);
                            ctx.log(agent.index, format!("undecodable ServerToAgent: {e}"));
                            continue;
                        }
                    };
                    if !*got_reply {
                        *got_reply = true;
                        ctx.mark_connected();
                        if !*ever {
                            *ever = true;
                            ctx.first_connection();
                        }
                    }
                    if !agent.on_reply(reply, ctx) || !agent.may_send_immediately(ctx) {
                        continue;
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                        None => "closed by server".to_string(),
                    });
                }
                Some(Ok(WsMessage::Text(_))) => {
                    inc(&ctx.stats.decode_errors);
                    ctx.log(agent.index, "server sent a text frame");
                    continue;
                }
                Some(Ok(_)) => continue,
            },
            _ = sleep_until(next_heartbeat) => heartbeat_due = true,
            _ = sleep_until(churn_at.unwrap_or_else(far_future)), if churn_at.is_some() => {
                // Close without a goodbye, as when the network drops; wait briefly for the
                // server's close.
                let _ = timeout(Duration::from_secs(1), async {
                    ws.close(None).await.map_err(|e| e.to_string())?;
                    while let Some(Ok(_)) = ws.next().await {}
                    Ok::<(), String>(())
                })
                .await;
                return Ok(Exit::Churn);
            }
            _ = sleep_until(apply_at.unwrap_or_else(far_future)), if apply_at.is_some() => {
                agent.apply_due(ctx);
            }
            _ = sleep_until(install_at.unwrap_or_else(far_future)), if install_at.is_some() => {
                agent.install_due(ctx);
            }
            event = download_event(&mut agent.packages.job), if downloading => {
                agent.on_download_event(event, ctx);
                if !agent.wants_to_send() {
                    continue;
                }
            }
        }
        if heartbeat_due {
            agent.immediate_sends = 0;
        }
        agent.must_send = false;
        let msg = agent.next_message(ctx);
        ws_send(ws, &msg, ctx).await?;
        agent.delivered();
        last_send = Instant::now();
    }
}

async fn ws_goodbye(agent: &mut Agent, ws: &mut Ws, ctx: &Ctx) {
    let msg = agent.goodbye(ctx);
    let said = async {
        ws_send(ws, &msg, ctx).await?;
        inc(&ctx.stats.disconnects_sent);
        ws.close(None).await.map_err(|e| e.to_string())?;
        // Read until the server's close (and the reply to the goodbye) arrive.
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_binary() {
                inc(&ctx.stats.received);
            }
        }
        Ok::<(), String>(())
    };
    match timeout(GOODBYE_TIMEOUT, said).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => ctx.log(agent.index, format!("goodbye: {e}")),
        Err(_) => ctx.log(agent.index, "goodbye: timed out"),
    }
}

// ---------------------------------------------------------------------------------------
// Plain-HTTP agents

enum PollError {
    Transport(String),
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    Decode(String),
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Transport(e) => write!(f, "poll failed: {e}"),
            PollError::Status { status, .. } => write!(f, "poll answered HTTP {status}"),
            PollError::Decode(e) => write!(f, "undecodable poll reply: {e}"),
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

async fn http_poll(
    ctx: &Ctx,
    agent: &Agent,
    msg: &proto::AgentToServer,
) -> Result<proto::ServerToAgent, PollError> {
    let Target::Http { url, client, slots } = &ctx.target else {
        return Err(PollError::Transport("not an HTTP target".into()));
    };
    let mut body = msg.encode_to_vec();
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, PROTOBUF)
        .header("OpAMP-Instance-UID", uid_string(&agent.uid));
    if ctx.args.gzip {
        body = gzip(&body);
        request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
    }
    let len = body.len() as u64;
    let _slot = slots
        .acquire()
        .await
        .map_err(|_| PollError::Transport("client closed".into()))?;
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| PollError::Transport(error_chain(&e)))?;
    inc(&ctx.stats.sent);
    ctx.stats.bytes_sent.fetch_add(len, Relaxed);
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let content_type_ok = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == PROTOBUF);
    let bytes = response
        .bytes()
        .await
        .map_err(|e| PollError::Transport(error_chain(&e)))?;
    ctx.stats
        .bytes_received
        .fetch_add(bytes.len() as u64, Relaxed);
    if !status.is_success() {
        return Err(PollError::Status {
            status: status.as_u16(),
            retry_after,
        });
    }
    if !content_type_ok {
        return Err(PollError::Decode(format!(
            "Content-Type is not exactly {PROTOBUF}"
        )));
    }
    inc(&ctx.stats.received);
    proto::ServerToAgent::decode(bytes).map_err(|e| PollError::Decode(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

async fn run_http_agent(mut agent: Agent, ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new();
    let mut connected = false;
    let mut ever = false;
    let mut failed = false;
    let mut next_poll = Instant::now();
    let mut churn_at = ctx.next_churn();
    let mut churned = false;
    loop {
        if agent.restart {
            // Goodbye with one last poll, then a new process polls with a full report.
            let msg = agent.goodbye(&ctx);
            match timeout(GOODBYE_TIMEOUT, http_poll(&ctx, &agent, &msg)).await {
                Ok(Ok(_)) => inc(&ctx.stats.disconnects_sent),
                Ok(Err(e)) => ctx.log(agent.index, format!("goodbye before restart: {e}")),
                Err(_) => ctx.log(agent.index, "goodbye before restart: timed out"),
            }
            if connected {
                connected = false;
                ctx.mark_disconnected();
            }
            if !pause(&ctx, RESTART_PAUSE).await {
                return;
            }
            agent.restarted();
            backoff.reset();
            next_poll = Instant::now();
        }
        let apply_at = agent.apply_at();
        let install_at = agent.install_at();
        let downloading = agent.packages.downloading();
        let mut timer = false;
        let mut churn_now = false;
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            _ = sleep_until(next_poll) => timer = true,
            _ = sleep_until(churn_at.unwrap_or_else(far_future)), if churn_at.is_some() => {
                churn_now = true;
            }
            _ = sleep_until(apply_at.unwrap_or_else(far_future)), if apply_at.is_some() => {
                agent.apply_due(&ctx);
            }
            _ = sleep_until(install_at.unwrap_or_else(far_future)), if install_at.is_some() => {
                agent.install_due(&ctx);
            }
            event = download_event(&mut agent.packages.job), if downloading => {
                agent.on_download_event(event, &ctx);
                if !agent.wants_to_send() {
                    continue;
                }
            }
        }
        if churn_now {
            // Goodbye with one poll, a pause, then polling again with a full report; the
            // uid, state and sequence numbers carry on.
            let msg = agent.goodbye(&ctx);
            match timeout(GOODBYE_TIMEOUT, http_poll(&ctx, &agent, &msg)).await {
                Ok(Ok(_)) => inc(&ctx.stats.disconnects_sent),
                Ok(Err(e)) => ctx.log(agent.index, format!("goodbye before churn pause: {e}")),
                Err(_) => ctx.log(agent.index, "goodbye before churn pause: timed out"),
            }
            inc(&ctx.stats.churn_disconnects);
            if connected {
                connected = false;
                ctx.mark_disconnected();
            }
            if !pause(&ctx, ctx.churn_pause()).await {
                return;
            }
            agent.send_full = true;
            churned = true;
            churn_at = ctx.next_churn();
        }
        if timer {
            agent.immediate_sends = 0;
        }
        agent.must_send = false;
        let msg = agent.next_message(&ctx);
        let outcome = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            r = http_poll(&ctx, &agent, &msg) => r,
        };
        let now = Instant::now();
        match outcome {
            Ok(reply) => {
                agent.delivered();
                backoff.reset();
                if !connected {
                    connected = true;
                    ctx.mark_connected();
                    if std::mem::take(&mut failed) {
                        inc(&ctx.stats.reconnects);
                    }
                    if std::mem::take(&mut churned) {
                        inc(&ctx.stats.churn_reconnects);
                    }
                    if !ever {
                        ever = true;
                        ctx.first_connection();
                    }
                }
                agent.retry_after = None;
                let again = agent.on_reply(reply, &ctx) && agent.may_send_immediately(&ctx);
                next_poll = match agent.retry_after {
                    Some(wait) => now + wait.max(agent.poll_interval(&ctx)),
                    None if again => now,
                    None => now + agent.poll_interval(&ctx),
                };
            }
            Err(e) => {
                match &e {
                    PollError::Decode(_) => inc(&ctx.stats.decode_errors),
                    _ => inc(&ctx.stats.poll_errors),
                }
                ctx.log(agent.index, &e);
                if connected {
                    connected = false;
                    ctx.mark_disconnected();
                }
                failed = true;
                let mut wait = backoff.step();
                if let PollError::Status {
                    retry_after: Some(ra),
                    ..
                } = e
                {
                    wait = wait.max(ra);
                }
                next_poll = now + wait;
            }
        }
    }
    // Stopped: say goodbye with one last poll.
    let msg = agent.goodbye(&ctx);
    match timeout(GOODBYE_TIMEOUT, http_poll(&ctx, &agent, &msg)).await {
        Ok(Ok(_)) => inc(&ctx.stats.disconnects_sent),
        Ok(Err(e)) => ctx.log(agent.index, format!("goodbye: {e}")),
        Err(_) => ctx.log(agent.index, "goodbye: timed out"),
    }
    if connected {
        ctx.mark_disconnected();
    }
}

// ---------------------------------------------------------------------------------------
// Package downloads

/// Downloads a package file in its own task, reporting progress, and verifies its SHA-256.
async fn download(
    client: reqwest::Client,
    url: String,
    content_hash: Bytes,
    interrupt: bool,
    events: tokio::sync::mpsc::UnboundedSender<DownloadEvent>,
) {
    let last = fetch(&client, &url, &content_hash, interrupt, &events).await;
    let _ = events.send(last);
}

/// The transfer: resumes with `Range: bytes=N-` after a broken connection (and once on
/// purpose with `interrupt`). Returns the final event.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    content_hash: &[u8],
    mut interrupt: bool,
    events: &tokio::sync::mpsc::UnboundedSender<DownloadEvent>,
) -> DownloadEvent {
    use sha2::Digest as _;
    let started = Instant::now();
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    let mut total: Option<u64> = None;
    let mut next_mark = 25u64;
    let mut failures = 0u32;
    let mut last_error = String::new();
    'attempts: loop {
        if failures >= DOWNLOAD_ATTEMPTS {
            return DownloadEvent::Failed(format!(
                "download of {url} failed after {failures} attempts ({got} bytes received): {last_error}"
            ));
        }
        if failures > 0 {
            sleep(Duration::from_millis(250 << failures)).await;
        }
        let mut request = client.get(url);
        if got > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={got}-"));
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                last_error = error_chain(&e);
                continue;
            }
        };
        let status = response.status();
        match status.as_u16() {
            200 => {
                if got > 0 {
                    let _ = events.send(DownloadEvent::Note(format!(
                        "download: the server ignored Range: bytes={got}- (HTTP 200); starting again"
                    )));
                    hasher = sha2::Sha256::new();
                    got = 0;
                }
                total = response.content_length();
            }
            206 if got > 0 => match content_range(response.headers()) {
                Some((start, size)) if start == got => {
                    total = size.or(total);
                    let _ = events.send(DownloadEvent::Resumed);
                }
                other => {
                    return DownloadEvent::Failed(format!(
                        "resuming {url} at byte {got}: the server answered 206 with Content-Range {:?} (parsed {other:?})",
                        response.headers().get(reqwest::header::CONTENT_RANGE)
                    ));
                }
            },
            // Everything had arrived before the connection broke.
            416 if total == Some(got) => break,
            500..=599 => {
                failures += 1;
                last_error = format!("HTTP {status}");
                continue;
            }
            _ => {
                return DownloadEvent::Failed(format!(
                    "GET {url} (from byte {got}): HTTP {status}"
                ));
            }
        }
        let mut body = response.bytes_stream();
        loop {
            let chunk = match timeout(DOWNLOAD_READ_TIMEOUT, body.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    failures += 1;
                    last_error = error_chain(&e);
                    continue 'attempts;
                }
                Err(_) => {
                    failures += 1;
                    last_error = format!("nothing received for {DOWNLOAD_READ_TIMEOUT:?}");
                    continue 'attempts;
                }
            };
            hasher.update(&chunk);
            got += chunk.len() as u64;
            if let Some(size) = total.filter(|t| *t >= PROGRESS_MIN_BYTES) {
                let percent = got * 100 / size;
                if percent >= next_mark && percent < 100 {
                    let seconds = started.elapsed().as_secs_f64().max(1e-6);
                    let _ = events.send(DownloadEvent::Progress {
                        percent: percent as f64,
                        bytes_per_second: got as f64 / seconds,
                    });
                    while next_mark <= percent {
                        next_mark += 25;
                    }
                }
            }
            if interrupt && total.is_some_and(|t| got * 2 >= t && got < t) {
                // Stop reading (the connection is dropped) and resume with a range request.
                interrupt = false;
                continue 'attempts;
            }
        }
        match total {
            Some(size) if got < size => {
                failures += 1;
                last_error = format!("the connection ended after {got} of {size} bytes");
            }
            Some(size) if got > size => {
                return DownloadEvent::Failed(format!(
                    "received {got} bytes from {url}, more than the {size} announced"
                ));
            }
            _ => break,
        }
    }
    let digest = hasher.finalize();
    let verified = if digest.as_slice() == content_hash {
        Ok(())
    } else {
        Err(format!(
            "SHA-256 mismatch: the downloaded file ({got} bytes) hashes to {}, but the offer's file.content_hash is {}",
            hex_string(&digest),
            hex_string(content_hash)
        ))
    };
    DownloadEvent::Done {
        bytes: got,
        verified,
    }
}

/// `Content-Range: bytes START-END/SIZE` as (START, SIZE); SIZE may be `*`.
fn content_range(headers: &reqwest::header::HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, size.trim().parse().ok()))
}

// ---------------------------------------------------------------------------------------
// Config body

const COLLECTOR_YAML: &str = r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
      http:
        endpoint: 0.0.0.0:4318
  hostmetrics:
    collection_interval: 30s
    scrapers:
      cpu: {}
      memory: {}
      filesystem: {}
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
    spike_limit_percentage: 20
  batch:
    timeout: 5s
    send_batch_size: 8192
  resourcedetection:
    detectors: [env, system]
exporters:
  otlphttp:
    endpoint: https://otlp.example.com:4318
    compression: gzip
extensions:
  health_check: {}
  opamp:
    server:
      ws:
        endpoint: ws://127.0.0.1:4320/v1/opamp
service:
  extensions: [health_check, opamp]
  pipelines:
    metrics:
      receivers: [otlp, hostmetrics]
      processors: [memory_limiter, resourcedetection, batch]
      exporters: [otlphttp]
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlphttp]
"#;

/// The effective config variant of agent `index` among `variants`: min(trailing_ones, N-1),
/// so variant k is reported by 1/2^(k+1) of the agents (the last one by the rest), spread
/// evenly over the fleet.
fn config_variant(index: usize, variants: usize) -> usize {
    (index.trailing_ones() as usize).min(variants.saturating_sub(1))
}

/// Effective config variant `variant` of `size` bytes (0: the natural size). Variant 0 is
/// the built-in collector YAML; the others differ in a header, the batch size and the
/// exporter endpoint, as collectors of different teams would.
fn config_body(size: usize, variant: usize) -> Bytes {
    let mut yaml = if variant == 0 {
        COLLECTOR_YAML.to_string()
    } else {
        format!("# fleet profile {variant}\n{COLLECTOR_YAML}")
            .replace(
                "send_batch_size: 8192",
                &format!("send_batch_size: {}", 8192 + 1024 * variant),
            )
            .replace(
                "https://otlp.example.com:4318",
                &format!("https://otlp-{variant}.example.com:4318"),
            )
    };
    if size == 0 {
        return Bytes::from(yaml);
    }
    if size <= yaml.len() {
        yaml.truncate(size);
        if let Some(cut) = yaml.rfind('\n') {
            yaml.truncate(cut + 1);
        }
        return Bytes::from(yaml);
    }
    let mut line = 0;
    while yaml.len() < size {
        let remaining = size - yaml.len();
        let pad = format!(
            "# padding line {line:06} ........................................................\n"
        );
        if pad.len() <= remaining {
            yaml.push_str(&pad);
        } else if remaining >= 2 {
            yaml.push('#');
            yaml.push_str(&".".repeat(remaining - 2));
            yaml.push('\n');
        } else {
            yaml.push('\n');
        }
        line += 1;
    }
    Bytes::from(yaml)
}

// ---------------------------------------------------------------------------------------
// Available components

/// A collector-contrib-like set: everything the built-in collector YAML uses, and more.
const DEFAULT_COMPONENTS: &str = "\
    receivers/otlp,receivers/hostmetrics,receivers/filelog,receivers/prometheus,\
    receivers/jaeger,receivers/zipkin,receivers/kafka,receivers/k8s_cluster,\
    processors/batch,processors/memory_limiter,processors/resourcedetection,\
    processors/attributes,processors/resource,processors/filter,processors/transform,\
    processors/k8sattributes,processors/tail_sampling,\
    exporters/otlp,exporters/otlphttp,exporters/debug,exporters/prometheus,exporters/kafka,\
    exporters/file,exporters/loadbalancing,\
    extensions/health_check,extensions/pprof,extensions/zpages,extensions/opamp,\
    extensions/file_storage,extensions/basicauth,\
    connectors/forward,connectors/spanmetrics,connectors/count,connectors/routing";

const COMPONENT_KINDS: [&str; 5] = [
    "receivers",
    "processors",
    "exporters",
    "extensions",
    "connectors",
];

/// One component set as the agents report it: the hash alone, or the full map on request.
struct Components {
    /// SHA-256 over the sorted "kind/type" lines.
    hash: Bytes,
    full: proto::AvailableComponents,
    count: usize,
}

/// Parses "kind/type,..." ("none": no components). Kinds may be singular ("receiver/otlp").
fn parse_components(list: &str, flag: &str) -> Result<Option<Arc<Components>>, String> {
    let list = list.trim();
    if list.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let mut set = std::collections::BTreeSet::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (kind, type_) = item
            .split_once('/')
            .ok_or_else(|| format!("{flag}: {item:?} must be kind/type, e.g. receivers/otlp"))?;
        let kind = kind.trim();
        let type_ = type_.trim();
        let kind = COMPONENT_KINDS
            .iter()
            .find(|k| **k == kind || k.strip_suffix('s') == Some(kind))
            .ok_or_else(|| {
                format!(
                    "{flag}: unknown kind {kind:?} in {item:?} (one of {})",
                    COMPONENT_KINDS.join(", ")
                )
            })?;
        if type_.is_empty() || type_.contains('/') {
            return Err(format!(
                "{flag}: {item:?} needs one component type after the kind"
            ));
        }
        set.insert(((*kind).to_string(), type_.to_string()));
    }
    if set.is_empty() {
        return Err(format!(
            "{flag}: no components given (use \"none\" for none)"
        ));
    }
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut components: BTreeMap<String, proto::ComponentDetails> = BTreeMap::new();
    for (kind, type_) in &set {
        hasher.update(format!("{kind}/{type_}\n").as_bytes());
        components
            .entry(kind.clone())
            .or_default()
            .sub_component_map
            .insert(type_.clone(), proto::ComponentDetails::default());
    }
    let hash = Bytes::copy_from_slice(hasher.finalize().as_slice());
    Ok(Some(Arc::new(Components {
        full: proto::AvailableComponents {
            components,
            hash: hash.clone(),
        },
        hash,
        count: set.len(),
    })))
}

/// Whether agent `index` is one of the fraction `ratio` that reports the alternative set:
/// spread evenly, so any prefix of the fleet holds about that fraction.
fn is_alt(index: usize, ratio: f64) -> bool {
    ((index + 1) as f64 * ratio).floor() > (index as f64 * ratio).floor()
}

fn describe_components(c: Option<&Arc<Components>>) -> String {
    c.map_or_else(
        || "none".to_string(),
        |c| format!("{} components, hash {}", c.count, hex_string(&c.hash[..6])),
    )
}

// ---------------------------------------------------------------------------------------
// Main

fn summary(ctx: &Ctx, connected_at_stop: i64) -> serde_json::Value {
    let s = &ctx.stats;
    let all_ms = get(&s.all_connected_ms);
    let (user, system) = own_cpu_seconds().unwrap_or((f64::NAN, f64::NAN));
    let transport = match ctx.target {
        Target::WebSocket { .. } => "websocket",
        Target::Http { .. } => "http",
    };
    let errors = get(&s.connect_errors)
        + get(&s.connection_drops)
        + get(&s.poll_errors)
        + get(&s.decode_errors)
        + get(&s.error_responses);
    let mut summary = serde_json::json!({
        "server": ctx.args.server,
        "transport": transport,
        "agents": ctx.args.agents,
        "spawned": get(&s.spawned),
        "connected": connected_at_stop,
        "ever_connected": get(&s.ever_connected),
        "all_connected_after_s": (all_ms > 0).then(|| all_ms as f64 / 1000.0),
        "elapsed_s": ctx.start.elapsed().as_secs_f64(),
        "messages_sent": get(&s.sent),
        "messages_received": get(&s.received),
        "bytes_sent": get(&s.bytes_sent),
        "bytes_received": get(&s.bytes_received),
        "full_reports_sent": get(&s.full_reports),
        "heartbeats_sent": get(&s.heartbeats),
        "configs_received": get(&s.configs_received),
        "configs_applied": get(&s.configs_applied),
        "configs_failed": get(&s.configs_failed),
        "configs_ignored": get(&s.configs_ignored),
        "configs_superseded": get(&s.configs_superseded),
        "component_map_requests": get(&s.component_map_requests),
        "component_maps_sent": get(&s.component_maps_sent),
        "errors": errors,
        "error_responses": get(&s.error_responses),
        "connect_errors": get(&s.connect_errors),
        "connection_drops": get(&s.connection_drops),
        "poll_errors": get(&s.poll_errors),
        "decode_errors": get(&s.decode_errors),
        "reconnects": get(&s.reconnects),
        "full_state_requests": get(&s.full_state_requests),
        "uid_reassignments": get(&s.uid_reassignments),
        "replies_with_other_uid": get(&s.foreign_uid_replies),
        "heartbeat_offers": get(&s.heartbeat_offers),
        "immediate_send_limit_hits": get(&s.immediate_send_limit_hits),
        "disconnects_sent": get(&s.disconnects_sent),
        "cpu_user_s": user,
        "cpu_system_s": system,
    });
    // A second object: one json! of everything exceeds the macro recursion limit.
    let packages = serde_json::json!({
        "packages_offered": get(&s.packages_offered),
        "packages_ignored": get(&s.packages_ignored),
        "downloads": get(&s.downloads),
        "downloads_completed": get(&s.downloads_completed),
        "download_bytes": get(&s.download_bytes),
        "download_resumes": get(&s.download_resumes),
        "installs": get(&s.installs),
        "install_failures": get(&s.install_failures),
        "restarts": get(&s.restarts),
        "configs_resent": get(&s.configs_resent),
        "churn_percent_per_minute": ctx.args.churn,
        "churn_disconnects": get(&s.churn_disconnects),
        "churn_reconnects": get(&s.churn_reconnects),
        "config_bytes": ctx.config_bodies.first().map_or(0, Bytes::len),
        "config_variants": ctx.config_bodies.len(),
        "apply_delay_ms": ctx.args.apply_delay_ms,
        "apply_delay_dist": format!("{:?}", ctx.args.apply_delay_dist).to_lowercase(),
        "apply_delay_max_ms": ctx.args.apply_delay_dist.max_ms(ctx.args.apply_delay_ms),
    });
    if let (Some(all), serde_json::Value::Object(more)) = (summary.as_object_mut(), packages) {
        all.extend(more);
    }
    summary
}

/// This process's user and system CPU seconds (Linux; clock ticks assumed 100 Hz).
fn own_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / 100.0, stime / 100.0))
}

fn progress_line(ctx: &Ctx) -> String {
    let s = &ctx.stats;
    format!(
        "[{:>7.1}s] spawned {} connected {} sent {} received {} configs {} applied {} failed {} re-sent {} errors {} reconnects {} churned {} downloads {} installs {} install-failures {} restarts {}",
        ctx.start.elapsed().as_secs_f64(),
        get(&s.spawned),
        s.connected.load(Relaxed),
        get(&s.sent),
        get(&s.received),
        get(&s.configs_received),
        get(&s.configs_applied),
        get(&s.configs_failed),
        get(&s.configs_resent),
        get(&s.connect_errors)
            + get(&s.connection_drops)
            + get(&s.poll_errors)
            + get(&s.decode_errors)
            + get(&s.error_responses),
        get(&s.reconnects),
        get(&s.churn_disconnects),
        get(&s.downloads),
        get(&s.installs),
        get(&s.install_failures),
        get(&s.restarts),
    )
}

async fn report_progress(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut announced = false;
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        seconds += 1;
        let ramping = get(&ctx.stats.all_connected_ms) == 0;
        let short = ctx.stats.connected.load(Relaxed) < ctx.args.agents as i64;
        if ramping || short || seconds % 10 == 0 {
            eprintln!("{}", progress_line(&ctx));
        }
        if !ramping && !announced {
            announced = true;
            let ms = get(&ctx.stats.all_connected_ms);
            eprintln!(
                "all {} agents connected after {:.2}s",
                ctx.args.agents,
                ms as f64 / 1000.0
            );
        }
    }
}

async fn wait_for_stop(ctx: Arc<Ctx>) {
    let stop = ctx.stop.clone();
    let duration = ctx.args.duration_seconds;
    let limit = async {
        match duration {
            Some(s) => sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = limit => eprintln!("duration reached; stopping"),
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted; stopping"),
        _ = term => eprintln!("terminated; stopping"),
    }
    let connected = ctx.stats.connected.load(Relaxed);
    ctx.stats.connected_at_stop.store(connected, Relaxed);
    stop.cancel();
}

async fn build_target(args: &Args) -> Result<Target, String> {
    let (scheme, _) = args.server.split_once("://").ok_or_else(|| {
        format!(
            "--server {:?} must start with ws:// or http://",
            args.server
        )
    })?;
    match scheme {
        "ws" => {
            let uri: tokio_tungstenite::tungstenite::http::Uri = args
                .server
                .parse()
                .map_err(|e| format!("--server {:?}: {e}", args.server))?;
            let host = uri
                .host()
                .ok_or_else(|| format!("--server {:?} has no host", args.server))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let host_port = format!("{host}:{port}");
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| format!("cannot resolve {host_port}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host_port} resolves to nothing"))?;
            let default_ips = args.agents.div_ceil(20_000).max(1);
            let count = args
                .source_ips
                .map_or(default_ips, usize::from)
                .clamp(1, 254);
            let sources = if addr.ip().is_loopback() && addr.is_ipv4() {
                (1..=count)
                    .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
                    .collect()
            } else {
                if args.source_ips.is_some_and(|n| n > 1) {
                    eprintln!("--source-ips applies only to a loopback IPv4 server; ignored");
                }
                Vec::new()
            };
            Ok(Target::WebSocket {
                url: args.server.clone(),
                addr,
                sources,
            })
        }
        "http" => {
            let slots = args.http_connections.max(1);
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(slots)
                .pool_idle_timeout(Duration::from_secs(90))
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(HTTP_TIMEOUT)
                .tcp_nodelay(true)
                .build()
                .map_err(|e| format!("http client: {e}"))?;
            Ok(Target::Http {
                url: args.server.clone(),
                client,
                slots: Semaphore::new(slots),
            })
        }
        "wss" | "https" => {
            Err("TLS is not supported by the simulator (no TLS crate); use ws:// or http://".into())
        }
        other => Err(format!(
            "unsupported scheme {other:?}; use ws:// or http://"
        )),
    }
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    if args.agents == 0 {
        return Err("--agents must be at least 1".into());
    }
    if args.connect_rate.is_nan() || args.connect_rate <= 0.0 {
        return Err("--connect-rate must be positive".into());
    }
    if !(0.0..=1.0).contains(&args.failure_ratio) {
        return Err("--failure-ratio must be between 0 and 1".into());
    }
    if !(0.0..=1.0).contains(&args.install_failure_ratio) {
        return Err("--install-failure-ratio must be between 0 and 1".into());
    }
    if !args.churn.is_finite() || args.churn < 0.0 {
        return Err("--churn must be a percentage per minute, 0 or more".into());
    }
    if args.fail_on.iter().any(String::is_empty) {
        return Err("--fail-on needs a non-empty substring".into());
    }
    let components = parse_components(
        args.components.as_deref().unwrap_or(DEFAULT_COMPONENTS),
        "--components",
    )?;
    let alt_components = match (&args.alt_components, args.components_ratio) {
        (Some(list), Some(ratio)) => {
            if !(0.0..=1.0).contains(&ratio) {
                return Err("--components-ratio must be between 0 and 1".into());
            }
            Some((ratio, parse_components(list, "--alt-components")?))
        }
        _ => None,
    };
    let target = build_target(&args).await?;
    let download_client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("download client: {e}"))?;
    if let Target::WebSocket { sources, .. } = &target {
        if sources.len() > 1 {
            eprintln!(
                "spreading connections over source addresses 127.0.0.1..127.0.0.{}",
                sources.len()
            );
        }
    }
    let ctx = Arc::new(Ctx {
        config_bodies: (0..usize::from(args.config_variants))
            .map(|v| config_body(args.config_bytes, v))
            .collect(),
        applied_configs: parking_lot::Mutex::new(std::collections::HashMap::new()),
        components,
        alt_components,
        target,
        download_client,
        stats: Stats::default(),
        stop: CancellationToken::new(),
        start: Instant::now(),
        args,
    });
    eprintln!(
        "starting {} agents against {} at {} per second",
        ctx.args.agents, ctx.args.server, ctx.args.connect_rate
    );
    {
        let n = ctx.config_bodies.len();
        let mut counts = vec![0usize; n];
        for i in 0..ctx.args.agents {
            counts[config_variant(i, n)] += 1;
        }
        eprintln!(
            "effective configs: {n} variants of {} bytes, agents per variant {counts:?}; apply delay {} ms {:?} (at most {:.0} ms); churn {}%/min",
            ctx.config_bodies.first().map_or(0, Bytes::len),
            ctx.args.apply_delay_ms,
            ctx.args.apply_delay_dist,
            ctx.args.apply_delay_dist.max_ms(ctx.args.apply_delay_ms),
            ctx.args.churn,
        );
    }
    match &ctx.alt_components {
        None => eprintln!(
            "components: {}",
            describe_components(ctx.components.as_ref())
        ),
        Some((ratio, alt)) => {
            let alts = (0..ctx.args.agents).filter(|&i| is_alt(i, *ratio)).count();
            eprintln!(
                "components: {} agents {}; {alts} agents (label sim.components=alt) {}",
                ctx.args.agents - alts,
                describe_components(ctx.components.as_ref()),
                describe_components(alt.as_ref()),
            );
        }
    }
    let stopper = tokio::spawn(wait_for_stop(ctx.clone()));
    let progress = tokio::spawn(report_progress(ctx.clone()));

    let mut tasks = tokio::task::JoinSet::new();
    let is_ws = matches!(ctx.target, Target::WebSocket { .. });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ramp_start = Instant::now();
    let mut started = 0usize;
    while started < ctx.args.agents {
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let due = ((ramp_start.elapsed().as_secs_f64() * ctx.args.connect_rate).floor() as usize
            + 1)
        .min(ctx.args.agents);
        while started < due {
            let agent = Agent::new(started, &ctx);
            if is_ws {
                tasks.spawn(run_ws_agent(agent, ctx.clone()));
            } else {
                tasks.spawn(run_http_agent(agent, ctx.clone()));
            }
            started += 1;
            inc(&ctx.stats.spawned);
        }
    }
    // The stopper records the connected count before it cancels.
    let _ = stopper.await;
    let connected_at_stop = ctx.stats.connected_at_stop.load(Relaxed);
    eprintln!("{}", progress_line(&ctx));
    eprintln!("saying goodbye...");
    let drained = timeout(GOODBYE_TIMEOUT + Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "{} agents did not finish in time; aborting them",
            tasks.len()
        );
        tasks.abort_all();
    }
    progress.abort();
    Ok(summary(&ctx, connected_at_stop))
}

fn print_summary(s: &serde_json::Value) {
    let n = |k: &str| s.get(k).map_or_else(String::new, |v| v.to_string());
    println!(
        "simulation summary ({} agents over {}):",
        n("agents"),
        n("transport")
    );
    println!(
        "  connected at stop     {} (ever connected {})",
        n("connected"),
        n("ever_connected")
    );
    println!("  all connected after   {} s", n("all_connected_after_s"));
    println!("  elapsed               {} s", n("elapsed_s"));
    println!(
        "  messages sent         {} ({} bytes; {} full reports, {} heartbeats)",
        n("messages_sent"),
        n("bytes_sent"),
        n("full_reports_sent"),
        n("heartbeats_sent")
    );
    println!(
        "  messages received     {} ({} bytes)",
        n("messages_received"),
        n("bytes_received")
    );
    println!(
        "  configs received      {} (applied {}, failed {}, ignored as known {} of which re-sent after APPLIED {}, superseded {})",
        n("configs_received"),
        n("configs_applied"),
        n("configs_failed"),
        n("configs_ignored"),
        n("configs_resent"),
        n("configs_superseded")
    );
    println!(
        "  effective configs     {} variants of {} bytes; apply delay {} ms ({}, at most {} ms)",
        n("config_variants"),
        n("config_bytes"),
        n("apply_delay_ms"),
        n("apply_delay_dist"),
        n("apply_delay_max_ms")
    );
    println!(
        "  component maps        {} requested, {} sent",
        n("component_map_requests"),
        n("component_maps_sent")
    );
    println!(
        "  errors                {} (connect {}, drops {}, polls {}, decode {}, error_response {})",
        n("errors"),
        n("connect_errors"),
        n("connection_drops"),
        n("poll_errors"),
        n("decode_errors"),
        n("error_responses")
    );
    println!("  reconnects            {}", n("reconnects"));
    println!(
        "  churn                 {} %/min: {} disconnects, {} reconnects",
        n("churn_percent_per_minute"),
        n("churn_disconnects"),
        n("churn_reconnects")
    );
    println!("  full-state requests   {}", n("full_state_requests"));
    println!("  uid reassignments     {}", n("uid_reassignments"));
    println!("  heartbeat offers      {}", n("heartbeat_offers"));
    println!("  disconnects sent      {}", n("disconnects_sent"));
    println!(
        "  packages offered      {} (ignored as known {}); downloads {} (completed {}, {} bytes, resumed {})",
        n("packages_offered"),
        n("packages_ignored"),
        n("downloads"),
        n("downloads_completed"),
        n("download_bytes"),
        n("download_resumes")
    );
    println!(
        "  installs              {} (failed {}); restart commands {}",
        n("installs"),
        n("install_failures"),
        n("restarts")
    );
    println!(
        "  simulator CPU         user {} s, system {} s",
        n("cpu_user_s"),
        n("cpu_system_s")
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("simulate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(s) => {
            if json {
                println!("{s}");
            } else {
                print_summary(&s);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("simulate: {e}");
            ExitCode::FAILURE
        }
    }
}
