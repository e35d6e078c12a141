use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{
    AgentCapabilities, AgentDescription, ContentHash, HealthReport, InstanceUid, RemoteConfigState,
    Transport,
};
use crate::core::lifecycle::AdminState;
use crate::core::status::{Status, Transition};

/// Bound on the status changes kept per agent, in memory and in the store.
pub const HISTORY_LIMIT: usize = 100;

/// One recorded status change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub from: Option<Status>,
    pub to: Status,
    pub reason: String,
}

impl HistoryEntry {
    pub fn new(at: DateTime<Utc>, t: Transition) -> Self {
        Self {
            at,
            from: t.from,
            to: t.to,
            reason: if t.reason.len() > HISTORY_REASON {
                super::cut_text(&t.reason, HISTORY_REASON)
            } else {
                t.reason
            },
        }
    }
}

/// A status reason as the history keeps it: the agent's JSON shows a hundred of them.
pub const HISTORY_REASON: usize = 256;

/// Everything Corral knows about one agent: what the API shows and what the store keeps.
/// The agent's actor is its only writer; readers get `Arc` snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    pub uid: InstanceUid,
    pub status: Status,
    pub status_reason: String,
    /// Whether Corral manages the agent (see `crate::core::lifecycle`).
    pub admin_state: AdminState,
    /// An admin named this agent before it first spoke: retention returns it to `not_found`
    /// instead of deleting it.
    pub pre_registered: bool,
    pub transport: Option<Transport>,
    pub labels: BTreeMap<String, String>,
    pub description: Arc<AgentDescription>,
    pub capabilities: AgentCapabilities,
    pub health: Option<Arc<HealthReport>>,
    pub effective_config_hash: Option<ContentHash>,
    pub remote_config: Option<RemoteConfigState>,
    /// The configuration hash last sent to the agent.
    pub offered_config_hash: Option<ContentHash>,
    /// The configuration hash the agent last reported APPLIED: what it runs, even after a
    /// later version failed.
    pub applied_config_hash: Option<ContentHash>,
    /// The hash of the component set the agent last reported.
    pub components_hash: Option<ContentHash>,
    /// The packages the agent last reported.
    pub packages: Option<Arc<super::PackageReports>>,
    /// The package hash last offered to the agent.
    pub offered_package_hash: Option<ContentHash>,
    pub last_seen: DateTime<Utc>,
    pub connected_at: Option<DateTime<Utc>>,
    /// Oldest first, at most [`HISTORY_LIMIT`].
    pub history: Arc<[HistoryEntry]>,
}

impl AgentRecord {
    /// A record for an agent heard from for the first time; the actor settles its status.
    pub fn new(uid: InstanceUid, now: DateTime<Utc>) -> Self {
        Self {
            uid,
            status: Status::Connected,
            status_reason: String::new(),
            admin_state: AdminState::Managed,
            pre_registered: false,
            transport: None,
            labels: BTreeMap::new(),
            description: Arc::default(),
            capabilities: AgentCapabilities::empty(),
            health: None,
            effective_config_hash: None,
            remote_config: None,
            offered_config_hash: None,
            applied_config_hash: None,
            components_hash: None,
            packages: None,
            offered_package_hash: None,
            last_seen: now,
            connected_at: None,
            history: Arc::from([]),
        }
    }
}

impl AgentRecord {
    /// The agent's label `key`: set by an admin, else the attribute the agent reports.
    pub fn label(&self, key: &str) -> Option<Cow<'_, str>> {
        if let Some(v) = self.labels.get(key) {
            return Some(Cow::Borrowed(v));
        }
        match self.description.attribute(key)? {
            super::AttributeValue::String(s) => Some(Cow::Borrowed(s)),
            other => Some(Cow::Owned(other.to_string())),
        }
    }
}
