//! One agent's OpAMP state and what it does with each ServerToAgent: the model both drivers
//! share. No IO happens here except starting a package download task; the drivers decide when
//! to send, connect and sleep.

mod packages;
mod remote_config;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use corral::core::domain::{AgentCapabilities, InstanceUid, InvalidInstanceUid};
use corral::edge::protocol::proto;

use crate::components::{Components, is_alt};
use crate::configs::config_variant;
use crate::context::Ctx;
use crate::stats::inc;
use packages::Packages;
use remote_config::PendingApply;

/// What every simulated agent can do; reporting components, packages and the restart command
/// depend on the flags.
const CAPABILITIES: AgentCapabilities = AgentCapabilities::REPORTS_STATUS
    .union(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_EFFECTIVE_CONFIG)
    .union(AgentCapabilities::REPORTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_HEALTH)
    .union(AgentCapabilities::REPORTS_HEARTBEAT)
    .union(AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS);
const REPORT_FULL_STATE: u64 = proto::ServerToAgentFlags::ReportFullState as u64;
const REPORT_AVAILABLE_COMPONENTS: u64 =
    proto::ServerToAgentFlags::ReportAvailableComponents as u64;
/// Replies that ask for another message at once, in a row, before the agent waits for its
/// next heartbeat instead (guards against a server that asks for full state forever).
const MAX_IMMEDIATE_SENDS: u32 = 5;
/// Effective-config file key: a single unnamed file, as the collector's supervisor reports it.
const CONFIG_KEY: &str = "";

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

pub struct Agent {
    pub index: usize,
    pub uid: Bytes,
    /// Last sequence number used; the first message carries 1.
    seq: u64,
    capabilities: AgentCapabilities,
    /// What the agent reports in available_components (None: nothing).
    components: Option<Arc<Components>>,
    description: proto::AgentDescription,
    health: proto::ComponentHealth,
    effective: proto::AgentConfigMap,
    remote_status: proto::RemoteConfigStatus,
    /// Offered by the server (None: the default). Zero disables WS heartbeats.
    offered_interval: Option<Duration>,
    pub send_full: bool,
    dirty: Dirty,
    pending_apply: Option<PendingApply>,
    /// From an error_response or a Retry-After header, applied before the next poll.
    pub retry_after: Option<Duration>,
    /// Sends in a row that a reply asked for.
    immediate_sends: u32,
    /// The agent has news of its own (a config it started applying) to send at once,
    /// whatever the limit on immediate sends.
    must_send: bool,
    packages: Packages,
    /// Close the connection and come back as a restarted agent once the news is sent.
    pub restart: bool,
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

/// The uid as a UUID string (hex if it is not 16 bytes).
pub fn uid_string(uid: &[u8]) -> String {
    InstanceUid::from_bytes(uid).map_or_else(|_| hex::encode(uid), |u| u.to_string())
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
    pub fn new(index: usize, ctx: &Ctx) -> Self {
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
                .filter(|(every, _, _)| index.is_multiple_of(*every))
                .map(|(_, k, v)| kv(k, v)),
        );
        let mut capabilities = if components.is_some() {
            CAPABILITIES | AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS
        } else {
            CAPABILITIES
        };
        if !ctx.args.no_packages {
            capabilities |=
                AgentCapabilities::ACCEPTS_PACKAGES | AgentCapabilities::REPORTS_PACKAGE_STATUSES;
        }
        if !ctx.args.no_restart {
            capabilities |= AgentCapabilities::ACCEPTS_RESTART_COMMAND;
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
                status: proto::RemoteConfigStatuses::Unset.into(),
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
    pub fn next_message(&mut self, ctx: &Ctx) -> proto::AgentToServer {
        self.seq += 1;
        let full = self.send_full;
        let d = self.dirty;
        let msg = proto::AgentToServer {
            instance_uid: self.uid.clone(),
            sequence_num: self.seq,
            capabilities: self.capabilities.bits(),
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

    pub fn delivered(&mut self) {
        self.send_full = false;
        self.dirty = Dirty::default();
    }

    pub fn goodbye(&mut self, ctx: &Ctx) -> proto::AgentToServer {
        let mut msg = self.next_message(ctx);
        if !msg.is_full_or_changes() {
            // Counted as a heartbeat by next_message; it is a goodbye.
            ctx.stats.heartbeats.fetch_sub(1, Relaxed);
        }
        msg.agent_disconnect = Some(proto::AgentDisconnect {});
        msg
    }

    pub fn wants_to_send(&self) -> bool {
        self.send_full || self.dirty.any()
    }

    /// WebSocket heartbeat interval (None: disabled by the server).
    pub fn ws_heartbeat(&self, ctx: &Ctx) -> Option<Duration> {
        match self.offered_interval {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => Some(ctx.default_interval()),
        }
    }

    /// HTTP polling interval: an offer of 0 cannot stop polling, so it means the default.
    pub fn poll_interval(&self, ctx: &Ctx) -> Duration {
        match self.offered_interval {
            Some(d) if !d.is_zero() => d,
            _ => ctx.default_interval(),
        }
    }

    /// Acts on one ServerToAgent. Returns whether the agent should send a message now.
    pub fn on_reply(&mut self, msg: proto::ServerToAgent, ctx: &Ctx) -> bool {
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
        if msg.flags & REPORT_FULL_STATE != 0 {
            inc(&st.full_state_requests);
            self.send_full = true;
        }
        if msg.flags & REPORT_AVAILABLE_COMPONENTS != 0 {
            inc(&st.component_map_requests);
            // An agent without components has nothing to report.
            self.dirty.components |= self.components.is_some();
        }
        if let Some(id) = msg.agent_identification {
            match InstanceUid::from_bytes(&id.new_instance_uid) {
                Ok(uid) if id.new_instance_uid != self.uid => {
                    inc(&st.uid_reassignments);
                    self.uid = id.new_instance_uid;
                    let text = uid.to_string();
                    for attr in &mut self.description.identifying_attributes {
                        if attr.key == "service.instance.id" {
                            *attr = kv("service.instance.id", &text);
                        }
                    }
                    self.dirty.description = true;
                }
                Ok(_) => {}
                Err(InvalidInstanceUid(len)) => {
                    inc(&st.decode_errors);
                    ctx.log(
                        self.index,
                        format!("new_instance_uid of {len} bytes ignored"),
                    );
                }
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
        if kind != i32::from(proto::CommandType::Restart) {
            ctx.log(self.index, format!("unknown command type {kind} ignored"));
            return;
        }
        if !self
            .capabilities
            .contains(AgentCapabilities::ACCEPTS_RESTART_COMMAND)
        {
            ctx.log(
                self.index,
                "restart command ignored: the agent did not set AcceptsRestartCommand",
            );
            return;
        }
        inc(&ctx.stats.restarts);
        // A restart abandons a download or install under way; the server may offer it again.
        self.packages.abandon();
        self.restart = true;
    }

    /// The agent process starts again: new OpAMP client state, the installed version, a
    /// full report first.
    pub fn restarted(&mut self) {
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

    /// Whether a reply's request for another message may be honoured at once (the agent's
    /// own news always is).
    pub fn may_send_immediately(&mut self, ctx: &Ctx) -> bool {
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

    /// The message to send now. A send on the timer starts a new run of sends that replies
    /// ask for; the agent's own news is in this message, so it no longer forces one.
    pub fn next_send(&mut self, on_timer: bool, ctx: &Ctx) -> proto::AgentToServer {
        if on_timer {
            self.immediate_sends = 0;
        }
        self.must_send = false;
        self.next_message(ctx)
    }
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
