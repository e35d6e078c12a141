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
}

/// Each setting as given, before defaults. Flags and environment fill one, the config file
/// another; [`Partial::resolve`] merges them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    pub opamp_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub heartbeat_interval: Option<u64>,
    pub max_message_size: Option<usize>,
    pub public_url: Option<String>,
    pub max_package_size: Option<u64>,
    pub own_metrics_endpoint: Option<String>,
    pub own_logs_endpoint: Option<String>,
    pub own_traces_endpoint: Option<String>,
    pub api_allowed_hosts: Option<Vec<String>>,
    pub max_agents: Option<usize>,
    /// `auto`, `register` or `manual`.
    pub admission: Option<String>,
    /// `answer` or `refuse`.
    pub ignored_agents: Option<String>,
    /// Seconds; 0 keeps disconnected agents for ever.
    pub forget_disconnected_after: Option<u64>,
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
