use super::{
    AgentCapabilities, AgentDescription, ConfigMap, ContentHash, HealthReport, RemoteConfigState,
};
use crate::core::config::ComponentSet;

/// The components an agent says it has: always the hash, the set itself when sent in full.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportedComponents {
    pub hash: ContentHash,
    pub set: Option<ComponentSet>,
}

/// A configuration the server sends an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfigOffer {
    pub hash: ContentHash,
    pub files: ConfigMap,
}

/// One AgentToServer message in domain terms. Every `Option` is `None` when the agent left
/// that part out (status compression: unchanged since its last report).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentReport {
    pub sequence_num: u64,
    pub capabilities: AgentCapabilities,
    pub description: Option<AgentDescription>,
    pub health: Option<HealthReport>,
    pub effective_config: Option<ConfigMap>,
    pub remote_config_status: Option<RemoteConfigState>,
    pub package_statuses: Option<super::PackageReports>,
    pub available_components: Option<ReportedComponents>,
    pub custom_capabilities: Option<Vec<String>>,
    /// The agent says it is going away.
    pub disconnect: bool,
    /// The agent asks the server to choose its instance uid.
    pub request_instance_uid: bool,
}

impl AgentReport {
    /// Carries no state at all: a heartbeat or an idle poll.
    pub fn is_heartbeat(&self) -> bool {
        self.description.is_none()
            && self.health.is_none()
            && self.effective_config.is_none()
            && self.remote_config_status.is_none()
            && self.package_statuses.is_none()
            && self.available_components.is_none()
            && self.custom_capabilities.is_none()
            && !self.disconnect
    }
}

/// What the server tells an agent in one ServerToAgent message, beyond the echoed uid.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerReply {
    /// Sent on the first reply of a connection.
    pub capabilities: Option<super::ServerCapabilities>,
    pub report_full_state: bool,
    pub report_available_components: bool,
    pub new_instance_uid: Option<super::InstanceUid>,
    pub heartbeat_interval_seconds: Option<u64>,
    pub remote_config: Option<RemoteConfigOffer>,
    pub packages: Option<super::PackageOffer>,
    /// Tell the agent to restart. Goes alone, with only capabilities beside it.
    pub restart: bool,
    /// Where the agent should send its own telemetry, when it reports it can.
    pub own_telemetry: Option<OwnTelemetry>,
    pub error: Option<ReplyError>,
}

/// Destinations (OTLP endpoints) for an agent's own metrics, logs and traces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnTelemetry {
    pub metrics: Option<String>,
    pub logs: Option<String>,
    pub traces: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    BadRequest(String),
    Unavailable {
        message: String,
        retry_after_nanos: u64,
    },
}
