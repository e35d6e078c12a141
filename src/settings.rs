//! Server settings: parsed and validated once at start, from flags, `CORRAL_*` environment
//! variables and an optional TOML file (in that order of precedence), then passed down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::lifecycle::Admission;

pub const DEFAULT_OPAMP_LISTEN: &str = "0.0.0.0:4320";
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:4321";
pub const DEFAULT_DATA_DIR: &str = "./corral-data";
pub const DEFAULT_HEARTBEAT_SECS: u64 = 30;
pub const DEFAULT_MAX_AGENTS: usize = 200_000;
/// Largest inbound OpAMP message, after decompression.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
const MAX_HEARTBEAT_SECS: u64 = 24 * 60 * 60;
const MIN_MESSAGE_SIZE: usize = 1024;
pub const DEFAULT_MAX_PACKAGE_SIZE: u64 = 1024 * 1024 * 1024;
const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub opamp_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub max_message_size: usize,
    /// Base URL agents download packages from (`http://corral.example.com:4320`); when unset,
    /// the address each agent reached the OpAMP endpoint at.
    pub public_url: Option<String>,
    pub max_package_size: u64,
    pub own_metrics_endpoint: Option<String>,
    pub own_logs_endpoint: Option<String>,
    pub own_traces_endpoint: Option<String>,
    /// Names, besides IP addresses and `localhost`, that the admin API may be reached by.
    pub api_allowed_hosts: Vec<String>,
    /// New agents beyond this many are asked to come back later.
    pub max_agents: usize,
    /// How agents Corral has not seen before are admitted.
    pub admission: Admission,
    /// Ignored agents are refused with an error instead of answered minimally.
    pub refuse_ignored: bool,
    /// Agents disconnected longer than this are deleted (or back to not_found when an admin
    /// pre-registered them); `None` keeps them.
    pub forget_disconnected_after: Option<Duration>,
    /// What clients may hold of the listeners.
    pub limits: Limits,
    /// Effective configs larger than this are kept as their hash and size only.
    pub max_effective_config: usize,
    /// `/metrics` needs an API key (any role), like the rest of the API.
    pub metrics_need_key: bool,
}

/// Bounds on what clients hold of the listeners: connections, time, and the pace of new ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open OpAMP connections; `None`: the open-file limit less [`FILES_KEPT`].
    pub max_connections: Option<usize>,
    /// New OpAMP connections admitted per second; `None`: no limit.
    pub new_connections_per_second: Option<u32>,
    /// OpAMP connections whose first message is not answered yet.
    pub max_pending_handshakes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long an OpAMP connection waits for the agent's next request after a reply; zero:
    /// it is closed after each reply.
    pub keep_alive_timeout: Duration,
    pub first_message_timeout: Duration,
    pub ping_interval: Duration,
}

/// Open files kept from the OpAMP listener's connections: the admin API's connections (128),
/// package downloads (64, each a file besides its connection), the store and the rest.
pub const FILES_KEPT: usize = 512;
/// The longest any timeout may be set to.
const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;
pub const DEFAULT_MAX_NEW_CONNECTIONS_PER_SECOND: u32 = 5_000;
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1_000;
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_KEEP_ALIVE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_FIRST_MESSAGE_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_PING_INTERVAL_SECS: u64 = 30;
pub const DEFAULT_MAX_EFFECTIVE_CONFIG: usize = 1024 * 1024;

/// Each setting as given, before defaults: the `serve` command's flags and environment
/// variables fill one, the config file (same names, `_` for `-`) another; [`Partial::resolve`]
/// merges them.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    /// Address of the OpAMP endpoint (WebSocket and HTTP) [default: 0.0.0.0:4320]
    #[arg(long, env = "CORRAL_OPAMP_LISTEN")]
    pub opamp_listen: Option<SocketAddr>,
    /// Address of the admin API [default: 127.0.0.1:4321]
    #[arg(long, env = "CORRAL_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Where the embedded store keeps its data [default: ./corral-data]
    #[arg(long, env = "CORRAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Heartbeat interval offered to agents, in seconds [default: 30]
    #[arg(long, env = "CORRAL_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Largest inbound OpAMP message, in bytes, after decompression [default: 4194304]
    #[arg(long, env = "CORRAL_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Base URL agents download packages from, e.g. https://corral.example.com:4320
    /// [default: the address each agent reached the OpAMP endpoint at]
    #[arg(long, env = "CORRAL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Largest package upload, in bytes [default: 1073741824]
    #[arg(long, env = "CORRAL_MAX_PACKAGE_SIZE")]
    pub max_package_size: Option<u64>,
    /// OTLP endpoint offered to agents that report their own metrics
    #[arg(long, env = "CORRAL_OWN_METRICS_ENDPOINT")]
    pub own_metrics_endpoint: Option<String>,
    /// OTLP endpoint offered to agents that report their own logs
    #[arg(long, env = "CORRAL_OWN_LOGS_ENDPOINT")]
    pub own_logs_endpoint: Option<String>,
    /// OTLP endpoint offered to agents that report their own traces
    #[arg(long, env = "CORRAL_OWN_TRACES_ENDPOINT")]
    pub own_traces_endpoint: Option<String>,
    /// Host names (besides IP addresses and localhost) the admin API may be reached by,
    /// comma-separated, e.g. corral.example.com; requests naming another host get 421
    #[arg(long, env = "CORRAL_API_ALLOWED_HOSTS", value_delimiter = ',')]
    pub api_allowed_hosts: Option<Vec<String>>,
    /// Most agents this server keeps; a new agent beyond it is told to come back later
    /// (HTTP 503 with Retry-After, or an Unavailable error response) [default: 200000]
    #[arg(long, env = "CORRAL_MAX_AGENTS")]
    pub max_agents: Option<usize>,
    /// How new agents are admitted: auto (managed at once), register (registered, until an
    /// admin manages them) or manual (discovered, until an admin approves them) [default: auto]
    #[arg(long, env = "CORRAL_ADMISSION")]
    pub admission: Option<String>,
    /// What ignored agents get: answer (a minimal reply) or refuse (an error; WebSocket
    /// closed with 1008, HTTP 403) [default: answer]
    #[arg(long, env = "CORRAL_IGNORED_AGENTS")]
    pub ignored_agents: Option<String>,
    /// Seconds after which a disconnected agent is deleted (back to not_found if it was
    /// pre-registered); 0 keeps agents for ever [default: 0]
    #[arg(long, env = "CORRAL_FORGET_DISCONNECTED_AFTER")]
    pub forget_disconnected_after: Option<u64>,
    /// Most connections open at once on the OpAMP listener; more are closed at once
    /// [default: the open-file limit less 512, kept for the API, downloads and the store]
    #[arg(long, env = "CORRAL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// New OpAMP connections admitted per second (bursts of up to one second's worth); the
    /// excess is told to retry after a random 1–30 s (HTTP 503 with Retry-After); 0: no limit
    /// [default: 5000]
    #[arg(long, env = "CORRAL_MAX_NEW_CONNECTIONS_PER_SECOND")]
    pub max_new_connections_per_second: Option<u32>,
    /// Most OpAMP connections at once that have not yet had their first message answered;
    /// more are told to retry like the rate's excess [default: 1000]
    #[arg(long, env = "CORRAL_MAX_PENDING_HANDSHAKES")]
    pub max_pending_handshakes: Option<usize>,
    /// Seconds a client has to send a request's headers, from connecting or from the
    /// request's first byte [default: 10]
    #[arg(long, env = "CORRAL_HEADER_TIMEOUT")]
    pub header_timeout: Option<u64>,
    /// Seconds an OpAMP request's body has to arrive, from the end of its headers
    /// [default: 30]
    #[arg(long, env = "CORRAL_BODY_TIMEOUT")]
    pub body_timeout: Option<u64>,
    /// Seconds an idle admin API connection stays open after a reply, and the longest a reply
    /// being written (a package download) may stall, on both listeners [default: 60]
    #[arg(long, env = "CORRAL_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
    /// Seconds an OpAMP connection stays open after a reply for the agent's next request, parked
    /// (its socket only); 0 closes it after each reply. Near the connection limit, the
    /// connections parked last are closed to make room [default: 60]
    #[arg(long, env = "CORRAL_KEEP_ALIVE_TIMEOUT")]
    pub keep_alive_timeout: Option<u64>,
    /// Seconds a new WebSocket has to send its first message; it is closed (1008) otherwise
    /// [default: 10]
    #[arg(long, env = "CORRAL_FIRST_MESSAGE_TIMEOUT")]
    pub first_message_timeout: Option<u64>,
    /// Seconds of quiet after which a WebSocket agent that does not report heartbeats is
    /// pinged; without an answer within two intervals it is closed and Disconnected
    /// [default: 30]
    #[arg(long, env = "CORRAL_PING_INTERVAL")]
    pub ping_interval: Option<u64>,
    /// Largest effective config kept, in bytes; a larger one is kept as its hash and size
    /// only [default: 1048576]
    #[arg(long, env = "CORRAL_MAX_EFFECTIVE_CONFIG")]
    pub max_effective_config: Option<usize>,
    /// /metrics needs an API key (any role), like the rest of the API; /healthz and the
    /// OpenAPI document stay open [default: false]
    #[arg(long, env = "CORRAL_METRICS_NEED_KEY", num_args = 0..=1, default_missing_value = "true")]
    pub metrics_need_key: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("heartbeat-interval must be between 1 and {MAX_HEARTBEAT_SECS} seconds, got {0}")]
    Heartbeat(u64),
    #[error(
        "max-message-size must be between {MIN_MESSAGE_SIZE} and {MAX_MESSAGE_SIZE} bytes, got {0}"
    )]
    MessageSize(usize),
    #[error("{name} must be an http:// or https:// URL, got {value:?}")]
    Url { name: &'static str, value: String },
    #[error("max-package-size must be at least 1 byte")]
    PackageSize,
    #[error("max-agents must be at least 1")]
    MaxAgents,
    #[error("admission must be auto, register or manual, got {0:?}")]
    Admission(String),
    #[error("ignored-agents must be answer or refuse, got {0:?}")]
    IgnoredAgents(String),
    #[error("{0} must be at least 1")]
    AtLeastOne(&'static str),
    #[error("{0} must be at most {MAX_TIMEOUT_SECS} seconds")]
    TooLong(&'static str),
}

impl Partial {
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| SettingsError::Parse {
            path: path.display().to_string(),
            message: e.message().to_string(),
        })
    }

    /// `self` wins over `file`; defaults fill the rest. Then every value is checked.
    pub fn resolve(self, file: Partial) -> Result<Settings, SettingsError> {
        let parse = |s: &str| s.parse().expect("default addresses are valid");
        let settings = Settings {
            opamp_listen: self
                .opamp_listen
                .or(file.opamp_listen)
                .unwrap_or_else(|| parse(DEFAULT_OPAMP_LISTEN)),
            api_listen: self
                .api_listen
                .or(file.api_listen)
                .unwrap_or_else(|| parse(DEFAULT_API_LISTEN)),
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            heartbeat_interval: Duration::from_secs(
                self.heartbeat_interval
                    .or(file.heartbeat_interval)
                    .unwrap_or(DEFAULT_HEARTBEAT_SECS),
            ),
            max_message_size: self
                .max_message_size
                .or(file.max_message_size)
                .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE),
            public_url: self
                .public_url
                .or(file.public_url)
                .map(|u| u.trim_end_matches('/').to_string()),
            max_package_size: self
                .max_package_size
                .or(file.max_package_size)
                .unwrap_or(DEFAULT_MAX_PACKAGE_SIZE),
            own_metrics_endpoint: self.own_metrics_endpoint.or(file.own_metrics_endpoint),
            own_logs_endpoint: self.own_logs_endpoint.or(file.own_logs_endpoint),
            own_traces_endpoint: self.own_traces_endpoint.or(file.own_traces_endpoint),
            api_allowed_hosts: self
                .api_allowed_hosts
                .or(file.api_allowed_hosts)
                .unwrap_or_default(),
            max_agents: self
                .max_agents
                .or(file.max_agents)
                .unwrap_or(DEFAULT_MAX_AGENTS),
            admission: match self.admission.or(file.admission) {
                None => Admission::default(),
                Some(s) => Admission::parse(&s).ok_or(SettingsError::Admission(s))?,
            },
            refuse_ignored: match self.ignored_agents.or(file.ignored_agents).as_deref() {
                None | Some("answer") => false,
                Some("refuse") => true,
                Some(other) => return Err(SettingsError::IgnoredAgents(other.into())),
            },
            forget_disconnected_after: self
                .forget_disconnected_after
                .or(file.forget_disconnected_after)
                .filter(|secs| *secs > 0)
                .map(Duration::from_secs),
            limits: Limits {
                max_connections: self.max_connections.or(file.max_connections),
                new_connections_per_second: Some(
                    self.max_new_connections_per_second
                        .or(file.max_new_connections_per_second)
                        .unwrap_or(DEFAULT_MAX_NEW_CONNECTIONS_PER_SECOND),
                )
                .filter(|rate| *rate > 0),
                max_pending_handshakes: self
                    .max_pending_handshakes
                    .or(file.max_pending_handshakes)
                    .unwrap_or(DEFAULT_MAX_PENDING_HANDSHAKES),
                header_timeout: secs(
                    self.header_timeout.or(file.header_timeout),
                    DEFAULT_HEADER_TIMEOUT_SECS,
                ),
                body_timeout: secs(
                    self.body_timeout.or(file.body_timeout),
                    DEFAULT_BODY_TIMEOUT_SECS,
                ),
                keep_alive_timeout: secs(
                    self.keep_alive_timeout.or(file.keep_alive_timeout),
                    DEFAULT_KEEP_ALIVE_TIMEOUT_SECS,
                ),
                idle_timeout: secs(
                    self.idle_timeout.or(file.idle_timeout),
                    DEFAULT_IDLE_TIMEOUT_SECS,
                ),
                first_message_timeout: secs(
                    self.first_message_timeout.or(file.first_message_timeout),
                    DEFAULT_FIRST_MESSAGE_TIMEOUT_SECS,
                ),
                ping_interval: secs(
                    self.ping_interval.or(file.ping_interval),
                    DEFAULT_PING_INTERVAL_SECS,
                ),
            },
            max_effective_config: self
                .max_effective_config
                .or(file.max_effective_config)
                .unwrap_or(DEFAULT_MAX_EFFECTIVE_CONFIG),
            metrics_need_key: self
                .metrics_need_key
                .or(file.metrics_need_key)
                .unwrap_or(false),
        };
        for (name, value) in [
            ("public-url", &settings.public_url),
            ("own-metrics-endpoint", &settings.own_metrics_endpoint),
            ("own-logs-endpoint", &settings.own_logs_endpoint),
            ("own-traces-endpoint", &settings.own_traces_endpoint),
        ] {
            if let Some(value) = value
                && !(value.starts_with("http://") || value.starts_with("https://"))
            {
                return Err(SettingsError::Url {
                    name,
                    value: value.clone(),
                });
            }
        }
        if settings.max_package_size == 0 {
            return Err(SettingsError::PackageSize);
        }
        if settings.max_agents == 0 {
            return Err(SettingsError::MaxAgents);
        }
        let limits = &settings.limits;
        for (name, zero) in [
            ("max-connections", limits.max_connections == Some(0)),
            ("max-pending-handshakes", limits.max_pending_handshakes == 0),
            ("header-timeout", limits.header_timeout.is_zero()),
            ("body-timeout", limits.body_timeout.is_zero()),
            ("idle-timeout", limits.idle_timeout.is_zero()),
            (
                "first-message-timeout",
                limits.first_message_timeout.is_zero(),
            ),
            ("ping-interval", limits.ping_interval.is_zero()),
        ] {
            if zero {
                return Err(SettingsError::AtLeastOne(name));
            }
        }
        for (name, timeout) in [
            ("header-timeout", limits.header_timeout),
            ("body-timeout", limits.body_timeout),
            ("idle-timeout", limits.idle_timeout),
            ("keep-alive-timeout", limits.keep_alive_timeout),
            ("first-message-timeout", limits.first_message_timeout),
            ("ping-interval", limits.ping_interval),
        ] {
            if timeout.as_secs() > MAX_TIMEOUT_SECS {
                return Err(SettingsError::TooLong(name));
            }
        }
        let secs = settings.heartbeat_interval.as_secs();
        if !(1..=MAX_HEARTBEAT_SECS).contains(&secs) {
            return Err(SettingsError::Heartbeat(secs));
        }
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&settings.max_message_size) {
            return Err(SettingsError::MessageSize(settings.max_message_size));
        }
        Ok(settings)
    }
}

fn secs(given: Option<u64>, default: u64) -> Duration {
    Duration::from_secs(given.unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = Partial::default().resolve(Partial::default()).unwrap();
        assert_eq!(s.opamp_listen.port(), 4320);
        assert_eq!(s.api_listen.to_string(), "127.0.0.1:4321");
        assert_eq!(s.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(s.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(s.admission, Admission::Auto);
        assert!(!s.refuse_ignored);
        assert_eq!(s.forget_disconnected_after, None);
        assert_eq!(s.limits.new_connections_per_second, Some(5_000));
        assert_eq!(s.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(s.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.limits.keep_alive_timeout, Duration::from_secs(60));
        assert_eq!(s.max_effective_config, 1024 * 1024);
    }

    #[test]
    fn a_rate_of_zero_means_no_limit_and_a_zero_timeout_is_refused() {
        let unlimited = Partial {
            max_new_connections_per_second: Some(0),
            ..Partial::default()
        };
        let s = unlimited.resolve(Partial::default()).unwrap();
        assert_eq!(s.limits.new_connections_per_second, None);
        let zero = Partial {
            idle_timeout: Some(0),
            ..Partial::default()
        };
        let err = zero.resolve(Partial::default()).unwrap_err().to_string();
        assert!(err.contains("idle-timeout"), "{err}");
        let huge = Partial {
            header_timeout: Some(u64::MAX),
            ..Partial::default()
        };
        let err = huge.resolve(Partial::default()).unwrap_err().to_string();
        assert!(err.contains("header-timeout"), "{err}");
    }

    #[test]
    fn lifecycle_settings_come_from_the_file_too() {
        let file: Partial = toml::from_str(
            "admission = \"manual\"\nignored_agents = \"refuse\"\nforget_disconnected_after = 3600",
        )
        .unwrap();
        let s = Partial::default().resolve(file).unwrap();
        assert_eq!(s.admission, Admission::Manual);
        assert!(s.refuse_ignored);
        assert_eq!(s.forget_disconnected_after, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: Partial =
            toml::from_str("heartbeat_interval = 10\ndata_dir = \"/var/lib/corral\"").unwrap();
        let flags = Partial {
            heartbeat_interval: Some(5),
            ..Partial::default()
        };
        let s = flags.resolve(file).unwrap();
        assert_eq!(s.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/corral"));
    }

    #[test]
    fn invalid_values_are_refused_with_their_name() {
        let zero = Partial {
            heartbeat_interval: Some(0),
            ..Partial::default()
        };
        let err = zero.resolve(Partial::default()).unwrap_err().to_string();
        assert!(err.contains("heartbeat-interval"), "{err}");
        let tiny = Partial {
            max_message_size: Some(10),
            ..Partial::default()
        };
        assert!(tiny.resolve(Partial::default()).is_err());
        let admission = Partial {
            admission: Some("sometimes".into()),
            ..Partial::default()
        };
        let err = admission
            .resolve(Partial::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("admission"), "{err}");
        let unknown = toml::from_str::<Partial>("heartbeat = 3");
        assert!(unknown.is_err(), "unknown keys are refused");
    }
}
