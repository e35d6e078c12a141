//! Tight types for what Corral knows about an agent. No IO, no protobuf, no serde: the
//! protocol module converts wire messages into these, the API and the store convert them out.

mod agent;
mod capabilities;
mod config_map;
mod description;
mod health;
mod package;
mod report;
mod shared_str;
mod uid;

pub use agent::{AgentRecord, HISTORY_LIMIT, HistoryEntry};
pub use capabilities::{AgentCapabilities, ServerCapabilities};
pub use config_map::{ConfigFile, ConfigMap, KeptConfig};
pub use description::{AgentDescription, AttributeValue};
pub use health::{Health, HealthReport};
pub use package::{PackageOffer, PackageReport, PackageReports, PackageState};
pub use report::{
    AgentReport, OwnTelemetry, RemoteConfigOffer, ReplyError, ReportedComponents, ServerReply,
};
pub use shared_str::SharedStr;
pub use uid::{InstanceUid, InvalidInstanceUid};

use std::fmt;

/// Text an agent supplies that Corral keeps for display (errors, statuses, status reasons):
/// at most this many bytes.
pub const MAX_TEXT: usize = 1024;

/// `text` cut to at most `max` bytes at a character boundary, with `…` where it was cut.
pub fn cut_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A small map keyed by name, kept as one sorted vector: per-agent maps (attributes, health
/// components, packages) hold a handful of entries, where a `BTreeMap` node would reserve room
/// for eleven. The names are shared across agents, since every agent repeats them.
pub type StrMap<V> = litemap::LiteMap<SharedStr, V>;

/// An opaque content hash (config, components, packages), shown as lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ContentHash(pub Vec<u8>);

impl ContentHash {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        hex::decode(s).ok().map(Self)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

/// How the agent talks to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    Http,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The agent's report of the last remote configuration it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteConfigStatus {
    Unset,
    Applied,
    Applying,
    Failed,
}

impl RemoteConfigStatus {
    pub const ALL: [RemoteConfigStatus; 4] = [
        RemoteConfigStatus::Unset,
        RemoteConfigStatus::Applied,
        RemoteConfigStatus::Applying,
        RemoteConfigStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RemoteConfigStatus::Unset => "unset",
            RemoteConfigStatus::Applied => "applied",
            RemoteConfigStatus::Applying => "applying",
            RemoteConfigStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfigState {
    pub hash: ContentHash,
    pub status: RemoteConfigStatus,
    pub error: String,
}
