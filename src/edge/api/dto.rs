//! The JSON shapes of the admin API: the only serde types of the API, converted from domain
//! types here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::core::domain::{
    AgentRecord, AttributeValue, Health, HistoryEntry, PackageState, RemoteConfigStatus, StrMap,
    Transport,
};
use crate::core::lifecycle::STATE_NAMES;
use crate::core::rollout::State as RolloutState;
use crate::core::status::Status;
use crate::tasks::fleet::FleetSummary;

/// A string the document lists the values of, taken from the core's own list of names, so the
/// document cannot drift from what the server says.
macro_rules! names {
    ($(#[doc = $doc:literal])* $ty:ident = $names:expr) => {
        $(#[doc = $doc])*
        pub struct $ty;

        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                let description = [$($doc.trim()),*].join(" ");
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some($names))
                    .description(Some(description))
                    .into()
            }
        }

        impl ToSchema for $ty {}
    };
}

names!(
    /// An agent's runtime status.
    StatusName = Status::ALL.map(Status::as_str)
);
names!(
    /// An agent's admin state (`maintenance` whatever it resumes to).
    AdminStateName = STATE_NAMES
);
names!(
    /// Where a rollout is.
    RolloutStateName = RolloutState::ALL.map(RolloutState::as_str)
);
names!(
    /// How an agent speaks OpAMP.
    TransportName = Transport::ALL.map(Transport::as_str)
);
names!(
    /// What the agent reports of the last remote configuration it saw.
    RemoteConfigStatusName = RemoteConfigStatus::ALL.map(RemoteConfigStatus::as_str)
);
names!(
    /// Where an agent is with one package.
    PackageStatusName = PackageState::ALL.map(PackageState::as_str)
);

/// Every error: `{"error": "message"}`; a refused lifecycle move adds the states allowed from
/// where the agent is, a bulk action whose confirmed count is not what matches adds the count.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct ErrorDto {
    pub error: String,
    /// The admin states the agent may be moved to (409 on a refused move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<AdminStateName>>)]
    pub allowed: Option<Vec<String>>,
    /// The agents the selector matches now (409 on a bulk count mismatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct AgentDto {
    #[schema(format = "uuid")]
    pub instance_uid: String,
    #[schema(value_type = StatusName)]
    pub status: String,
    pub status_reason: String,
    #[serde(default)]
    #[schema(value_type = AdminStateName)]
    pub admin_state: String,
    /// Where an agent in maintenance returns when it resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<AdminStateName>)]
    pub resumes_to: Option<String>,
    #[serde(default)]
    pub pre_registered: bool,
    /// How it is connected, if it is.
    #[schema(value_type = Option<TransportName>)]
    pub transport: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Attribute values are strings, booleans, numbers, arrays or maps (bytes as hex).
    #[schema(value_type = BTreeMap<String, Value>)]
    pub identifying_attributes: Map<String, Value>,
    #[schema(value_type = BTreeMap<String, Value>)]
    pub non_identifying_attributes: Map<String, Value>,
    pub capabilities: Vec<String>,
    pub health: Option<HealthDto>,
    pub effective_config_hash: Option<String>,
    pub remote_config: Option<RemoteConfigDto>,
    #[schema(format = DateTime)]
    pub last_seen: String,
    #[schema(format = DateTime)]
    pub connected_at: Option<String>,
    /// The configuration assigned to the agent, if any.
    #[serde(default)]
    pub configuration: Option<AgentConfigDto>,
    #[serde(default)]
    pub packages: Vec<AgentPackageDto>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct HealthDto {
    pub healthy: bool,
    pub status: String,
    pub last_error: String,
    pub start_time_unix_nano: u64,
    pub status_time_unix_nano: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(no_recursion)]
    pub components: BTreeMap<String, HealthDto>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = BTreeMap<String, Value>)]
    pub attributes: Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct RemoteConfigDto {
    pub hash: String,
    #[schema(value_type = RemoteConfigStatusName)]
    pub status: String,
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct HistoryDto {
    #[schema(format = DateTime)]
    pub at: String,
    #[schema(value_type = Option<StatusName>)]
    pub from: Option<String>,
    #[schema(value_type = StatusName)]
    pub to: String,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct AgentDetailDto {
    #[serde(flatten)]
    pub agent: AgentDto,
    pub history: Vec<HistoryDto>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct AgentListDto {
    pub agents: Vec<AgentDto>,
    pub next_cursor: Option<String>,
    pub total: usize,
}

/// Agents by runtime status and by admin state: every name is present, zero or not.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct FleetDto {
    pub total: i64,
    pub by_status: BTreeMap<String, i64>,
    #[serde(default)]
    pub by_admin_state: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"state": "maintenance"}))]
pub struct AdminStateDto {
    #[schema(value_type = AdminStateName)]
    pub state: String,
}

/// `POST /api/v1/agents`: an agent an admin expects, by uid or by identifying attributes.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "identifying_attributes": {"service.name": "otelcol-contrib", "host.name": "web-1"},
    "labels": {"env": "prod"}
}))]
pub struct PreRegisterDto {
    #[serde(default)]
    #[schema(format = "uuid")]
    pub instance_uid: Option<String>,
    #[serde(default)]
    pub identifying_attributes: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct ExpectedDto {
    pub id: String,
    pub identifying_attributes: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// What `POST /api/v1/agents` created: the agent, when it names an instance uid, or the
/// expected agent, when it names identifying attributes.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum PreRegisteredDto {
    Agent(Box<AgentDetailDto>),
    Expected(ExpectedDto),
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct ExpectedListDto {
    pub expected: Vec<ExpectedDto>,
}

/// A bulk action over the agents a selector matches. Without `dry_run`, `expected_count`
/// must equal the number matched, or nothing is done (409).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"selector": "service.name=otelcol-contrib", "dry_run": true}))]
pub struct BulkDto {
    pub selector: String,
    /// Only agents in this admin state.
    #[serde(default)]
    #[schema(value_type = Option<AdminStateName>)]
    pub admin_state: Option<String>,
    #[serde(default)]
    pub expected_count: Option<usize>,
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/v1/agents/admin-state`: a bulk action that moves the agents to `state`. With
/// `admin_state: "maintenance"` it resumes the agents in maintenance.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"selector": "service.name=otelcol-contrib", "state": "maintenance", "dry_run": true}))]
pub struct BulkMoveDto {
    pub selector: String,
    /// The admin state to move the agents to.
    #[schema(value_type = AdminStateName)]
    pub state: String,
    /// Only agents in this admin state (e.g. `maintenance`, to resume them).
    #[serde(default)]
    #[schema(value_type = Option<AdminStateName>)]
    pub admin_state: Option<String>,
    #[serde(default)]
    pub expected_count: Option<usize>,
    #[serde(default)]
    pub dry_run: bool,
}

impl BulkMoveDto {
    /// The bulk action, and the state to move to.
    pub fn split(self) -> (BulkDto, String) {
        let bulk = BulkDto {
            selector: self.selector,
            admin_state: self.admin_state,
            expected_count: self.expected_count,
            dry_run: self.dry_run,
        };
        (bulk, self.state)
    }
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema, Default)]
pub struct BulkResultDto {
    /// Agents the action applies to.
    pub matched: usize,
    /// Agents it was done to (0 on a dry run).
    pub done: usize,
    /// Matching agents passed over, by reason (e.g. "in maintenance").
    pub excluded: BTreeMap<String, usize>,
    /// Agents it could not be done to, with why.
    pub failed: BTreeMap<String, String>,
    /// The uids matched (at most 20), for a confirmation prompt.
    pub sample: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"selector": "env=test"}))]
pub struct IgnoreRuleInDto {
    pub selector: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct IgnoreRuleDto {
    pub id: String,
    pub selector: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct IgnoreRulesDto {
    pub rules: Vec<IgnoreRuleDto>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
#[schema(example = json!({"labels": {"env": "prod", "team": "payments"}}))]
pub struct LabelsDto {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct ConfigFileDto {
    pub body: String,
    pub content_type: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct EffectiveConfigDto {
    pub hash: String,
    /// Its size: names, content types and bodies.
    pub bytes: u64,
    /// False when it was larger than the server keeps (`--max-effective-config`): then only
    /// its hash and size are known, and `files` is empty.
    pub kept: bool,
    pub files: BTreeMap<String, ConfigFileDto>,
}

pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn value(v: &AttributeValue) -> Value {
    match v {
        AttributeValue::String(s) => Value::String(s.to_string()),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Int(i) => Value::from(*i),
        AttributeValue::Double(d) => Value::from(*d),
        AttributeValue::Bytes(b) => Value::String(hex::encode(b)),
        AttributeValue::Array(values) => Value::Array(values.iter().map(value).collect()),
        AttributeValue::Map(map) => Value::Object(attributes(map)),
    }
}

fn attributes(map: &StrMap<AttributeValue>) -> Map<String, Value> {
    map.iter().map(|(k, v)| (k.to_string(), value(v))).collect()
}

impl From<&Health> for HealthDto {
    fn from(h: &Health) -> Self {
        Self {
            healthy: h.healthy,
            status: h.status.clone(),
            last_error: h.last_error.clone(),
            start_time_unix_nano: h.start_time_unix_nano,
            status_time_unix_nano: h.status_time_unix_nano,
            components: h
                .components
                .iter()
                .map(|(k, c)| (k.to_string(), HealthDto::from(c)))
                .collect(),
            attributes: attributes(&h.attributes),
        }
    }
}

impl From<&HistoryEntry> for HistoryDto {
    fn from(e: &HistoryEntry) -> Self {
        Self {
            at: rfc3339(e.at),
            from: e.from.map(|s| s.as_str().to_string()),
            to: e.to.as_str().to_string(),
            reason: e.reason.clone(),
        }
    }
}

impl From<&AgentRecord> for AgentDto {
    fn from(a: &AgentRecord) -> Self {
        Self {
            instance_uid: a.uid.to_string(),
            status: a.status.as_str().to_string(),
            status_reason: a.status_reason.clone(),
            admin_state: a.admin_state.as_str().to_string(),
            resumes_to: match a.admin_state {
                crate::core::lifecycle::AdminState::Maintenance(r) => {
                    Some(r.state().as_str().to_string())
                }
                _ => None,
            },
            pre_registered: a.pre_registered,
            // How it is connected, if it is.
            transport: a
                .transport
                .filter(|_| a.status != Status::Disconnected)
                .map(|t| t.as_str().to_string()),
            labels: a.labels.clone(),
            identifying_attributes: attributes(&a.description.identifying),
            non_identifying_attributes: attributes(&a.description.non_identifying),
            capabilities: a
                .capabilities
                .names()
                .into_iter()
                .map(str::to_string)
                .collect(),
            health: a
                .health
                .as_deref()
                .and_then(crate::edge::protocol::health_tree)
                .as_ref()
                .map(HealthDto::from),
            effective_config_hash: a.effective_config_hash.as_ref().map(|h| h.to_hex()),
            remote_config: a.remote_config.as_ref().map(|rc| RemoteConfigDto {
                hash: rc.hash.to_hex(),
                status: rc.status.as_str().to_string(),
                error: rc.error.clone(),
            }),
            last_seen: rfc3339(a.last_seen),
            connected_at: a.connected_at.map(rfc3339),
            configuration: None,
            packages: a
                .packages
                .iter()
                .flat_map(|p| p.packages.iter())
                .map(|(name, p)| AgentPackageDto {
                    name: name.to_string(),
                    version: p.agent_has_version.clone(),
                    status: p.state.as_str().to_string(),
                    offered_version: p.server_offered_version.clone(),
                    download_percent: p.download_percent,
                    error: p.error.clone(),
                })
                .collect(),
        }
    }
}

impl From<&AgentRecord> for AgentDetailDto {
    fn from(a: &AgentRecord) -> Self {
        Self {
            agent: AgentDto::from(a),
            history: a.history.iter().map(HistoryDto::from).collect(),
        }
    }
}

impl From<FleetSummary> for FleetDto {
    fn from(s: FleetSummary) -> Self {
        Self {
            total: s.total,
            by_status: s
                .by_status
                .into_iter()
                .map(|(status, n)| (status.as_str().to_string(), n))
                .collect(),
            by_admin_state: s
                .by_admin_state
                .into_iter()
                .map(|(state, n)| (state.to_string(), n))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct AgentConfigDto {
    pub name: String,
    pub current_version: Option<u32>,
    pub pending_version: Option<u32>,
    pub target_version: Option<u32>,
    /// "compatible", "incompatible" or "unknown" (the agent reports no components).
    pub compatibility: String,
    pub incompatible_reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct FileDto {
    pub body: String,
    #[serde(default)]
    pub content_type: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "selector": "os.type=linux",
    "priority": 0,
    "files": {"collector.yaml": {
        "body": "receivers:\n  otlp:\n    protocols:\n      grpc:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n",
        "content_type": "text/yaml"
    }}
}))]
pub struct ConfigurationPutDto {
    /// Which agents it is for; left out, the stored selector stays (a new configuration's is
    /// the empty one, matching every agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Left out, the stored priority stays (0 for a new configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Left out, the latest version's files stay (a new configuration needs them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, FileDto>>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct ConfigurationPutResultDto {
    pub name: String,
    /// The latest version after the change (or, in a dry run, the one it would make).
    pub version: u32,
    pub hash: String,
    /// A new version was (or, in a dry run, would be) created.
    pub created: bool,
    /// Nothing was stored: this is what the change would do.
    pub dry_run: bool,
    /// What changed, of "content", "selector" and "priority"; empty: nothing.
    pub changed: Vec<String>,
    /// The latest version before the change, if there was one.
    pub previous_version: Option<u32>,
    pub selector: String,
    pub priority: i32,
    pub previous_selector: Option<String>,
    pub previous_priority: Option<i32>,
    /// A unified diff of the files from the previous version; empty when they are the same.
    pub diff: String,
    /// How many agents the change moves from one configuration to another.
    pub reassigned_count: usize,
    /// The agents it moves, by where from and where to.
    pub reassigned: Vec<ReassignedDto>,
}

/// Agents a configuration change moves from one configuration (or none) to another.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct ReassignedDto {
    pub from: Option<String>,
    pub to: Option<String>,
    pub count: usize,
    /// Up to 10 of their instance uids.
    pub sample: Vec<String>,
}

/// A configuration's versions, oldest first.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct VersionsDto {
    pub versions: Vec<VersionDto>,
}

/// The unified diff between two versions of a configuration.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct ConfigDiffDto {
    pub name: String,
    pub from: u32,
    pub to: u32,
    /// Empty when the two versions have the same files.
    pub diff: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct RolloutIdDto {
    pub id: String,
    #[schema(value_type = RolloutStateName)]
    pub state: String,
    pub version: u32,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct VersionDto {
    pub name: String,
    pub version: u32,
    pub hash: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// "kind/type" of every component the version uses.
    pub components: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub files: Option<BTreeMap<String, FileDto>>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct ConfigurationDto {
    pub name: String,
    pub selector: String,
    pub priority: i32,
    pub latest_version: Option<u32>,
    pub latest_hash: Option<String>,
    pub agent_count: usize,
    pub rollout: Option<RolloutIdDto>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub versions: Option<Vec<VersionDto>>,
    /// Instance uids of the agents assigned to it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agents: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct ConfigurationsDto {
    pub configurations: Vec<ConfigurationDto>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct PackageRefDto {
    pub name: String,
    pub version: String,
}

/// Either `configuration` (with an optional numeric `version`) or `package` (with an optional
/// `selector`; default: every agent).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"configuration": "prod", "initial": 3, "multiplier": 5, "maximum": 100}))]
pub struct RolloutStartDto {
    pub configuration: Option<String>,
    pub version: Option<u32>,
    pub package: Option<PackageRefDto>,
    pub selector: Option<String>,
    /// Agents in the first wave (default 3).
    #[schema(minimum = 1)]
    pub initial: Option<u32>,
    /// Each wave is this many times the one before (default 5).
    #[schema(minimum = 1)]
    pub multiplier: Option<u32>,
    /// The largest wave, at least `initial` (default 100).
    #[schema(minimum = 1)]
    pub maximum: Option<u32>,
    /// Errors tolerated before the rollout stops (default 0).
    pub max_errors: Option<u32>,
    /// Roll back to the previous version when it stops on errors (default false).
    pub rollback_on_failure: Option<bool>,
    /// How long a wave may take (default 300).
    #[schema(minimum = 1)]
    pub wave_timeout_seconds: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct RolloutCountsDto {
    pub total: u32,
    pub completed: u32,
    pub errors: u32,
    /// Sent and not answered yet; 0 once the rollout has ended.
    pub configuring: u32,
    /// Waiting for a wave; 0 once the rollout has ended.
    pub pending: u32,
    /// Sent or waiting when the rollout ended (cancelled, replaced): it will not reach them.
    pub left_out: u32,
    /// Matching agents the rollout passes over, by reason (the agents are in `skipped`).
    #[serde(default)]
    pub skipped: BTreeMap<String, u32>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct RolloutDto {
    pub id: String,
    /// Set for configuration rollouts.
    pub configuration: Option<String>,
    pub version: Option<u32>,
    pub previous_version: Option<u32>,
    /// Set for upgrade rollouts.
    pub package: Option<PackageRefDto>,
    pub selector: Option<String>,
    /// Matching agents the rollout passes over, with the reason.
    #[serde(default)]
    pub skipped: Vec<SkippedDto>,
    /// Agents it matched: those it tracks and those it passes over.
    pub matched: u32,
    /// Matched agents it does not pass over.
    pub eligible: u32,
    /// One line on whom it reaches, e.g. "50 agents matched, 0 eligible, 50 skipped (agent
    /// lacks components: exporters/kafka)".
    pub summary: String,
    /// The agents whose configuration or package failed or timed out, with what they said.
    #[serde(default)]
    pub errors: Vec<RolloutErrorDto>,
    #[schema(value_type = RolloutStateName)]
    pub state: String,
    /// Waves started so far.
    pub wave: u32,
    /// The size of each wave started (as many agents as it had), and, while agents wait, of
    /// the next one.
    pub wave_sizes: Vec<u32>,
    pub counts: RolloutCountsDto,
    pub initial: u32,
    pub multiplier: u32,
    pub maximum: u32,
    pub max_errors: u32,
    pub rollback_on_failure: bool,
    pub wave_timeout_seconds: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct RolloutsDto {
    pub rollouts: Vec<RolloutDto>,
}

/// An agent a rollout failed on.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct RolloutErrorDto {
    #[schema(format = "uuid")]
    pub instance_uid: String,
    /// "failed" or "timed_out".
    pub phase: String,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct SkippedDto {
    #[schema(format = "uuid")]
    pub instance_uid: String,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct PackageDto {
    pub name: String,
    pub version: String,
    pub platform: String,
    pub arch: String,
    pub sha256: String,
    pub size: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct PackagesDto {
    pub packages: Vec<PackageDto>,
}

/// What the API shows of an agent's packages.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct AgentPackageDto {
    pub name: String,
    pub version: String,
    #[schema(value_type = PackageStatusName)]
    pub status: String,
    pub offered_version: String,
    pub download_percent: Option<f64>,
    pub error: String,
}

names!(
    /// What an API key may do: `viewer` reads; `operator` also changes the fleet (rollouts,
    /// upgrades, restarts, lifecycle moves, labels, configurations, packages); `admin` also
    /// manages keys.
    RoleName = crate::core::keys::Role::ALL.map(crate::core::keys::Role::as_str)
);

/// A key to create.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci", "role": "operator", "expires_at": "2027-01-01T00:00:00Z"}))]
pub struct KeyInDto {
    pub name: String,
    #[schema(value_type = RoleName)]
    pub role: String,
    /// When the key stops working (RFC 3339); never when left out.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A key as listed: never the key itself.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct KeyDto {
    pub id: String,
    pub name: String,
    #[schema(value_type = RoleName)]
    pub role: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// When it was last used, to within a few seconds.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct KeysDto {
    pub keys: Vec<KeyDto>,
}

/// A key just created, with the key itself: shown this once.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
pub struct KeyCreatedDto {
    pub id: String,
    pub name: String,
    #[schema(value_type = RoleName)]
    pub role: String,
    /// The key, for `Authorization: Bearer <key>`; it cannot be shown again.
    pub key: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}
