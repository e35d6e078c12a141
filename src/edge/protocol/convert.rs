//! Wire messages ↔ domain types.

use bytes::Bytes;
use prost::Message;

use super::bounds::{bound, bound_health};
use super::proto;
use crate::core::config::ComponentSet;
use crate::core::domain::{
    AgentCapabilities, AgentDescription, AgentReport, AttributeValue, ConfigFile, ConfigMap,
    ContentHash, Health, HealthReport, InstanceUid, InvalidInstanceUid, PackageReport,
    PackageReports, PackageState, RemoteConfigState, RemoteConfigStatus, ReplyError,
    ReportedComponents, ServerReply, SharedStr, StrMap,
};

const FLAG_REQUEST_INSTANCE_UID: u64 = 0x1;
const FLAG_REPORT_FULL_STATE: u64 = 0x1;
const FLAG_REPORT_AVAILABLE_COMPONENTS: u64 = 0x2;

/// An AgentToServer message taken apart: the uid bytes exactly as sent (to echo them), the
/// parsed uid, and the report.
#[derive(Debug)]
pub struct Inbound {
    pub raw_uid: Bytes,
    pub uid: Result<InstanceUid, InvalidInstanceUid>,
    pub report: AgentReport,
}

impl From<proto::AgentToServer> for Inbound {
    fn from(msg: proto::AgentToServer) -> Self {
        let uid = InstanceUid::from_bytes(&msg.instance_uid);
        let report = AgentReport {
            sequence_num: msg.sequence_num,
            capabilities: AgentCapabilities::from_bits_retain(msg.capabilities),
            description: msg.agent_description.map(description_from_proto),
            health: msg.health.map(|mut h| {
                bound_health(&mut h);
                health_report(h)
            }),
            effective_config: msg
                .effective_config
                .map(|ec| config_map_from_proto(ec.config_map.unwrap_or_default())),
            remote_config_status: msg.remote_config_status.map(|mut rcs| {
                bound(&mut rcs.error_message);
                RemoteConfigState {
                    status: remote_config_status_from_proto(rcs.status),
                    hash: ContentHash(rcs.last_remote_config_hash.to_vec()),
                    error: rcs.error_message,
                }
            }),
            available_components: msg.available_components.map(components_from_proto),
            package_statuses: msg.package_statuses.map(|mut ps| {
                bound(&mut ps.error_message);
                for p in ps.packages.values_mut() {
                    bound(&mut p.error_message);
                }
                packages_from_proto(ps)
            }),
            custom_capabilities: msg.custom_capabilities.map(|c| c.capabilities),
            disconnect: msg.agent_disconnect.is_some(),
            request_instance_uid: msg.flags & FLAG_REQUEST_INSTANCE_UID != 0,
        };
        Inbound {
            raw_uid: msg.instance_uid,
            uid,
            report,
        }
    }
}

/// The collector reports components by kind, each kind's sub-components keyed by type.
fn components_from_proto(ac: proto::AvailableComponents) -> ReportedComponents {
    let set = (!ac.components.is_empty()).then(|| {
        let mut set = ComponentSet::new();
        for (kind, details) in &ac.components {
            for type_ in details.sub_component_map.keys() {
                set.insert(kind, type_);
            }
        }
        set
    });
    ReportedComponents {
        hash: ContentHash(ac.hash.to_vec()),
        set,
    }
}

pub fn packages_from_proto(ps: proto::PackageStatuses) -> PackageReports {
    PackageReports {
        packages: ps
            .packages
            .into_iter()
            .map(|(name, p)| {
                let state = match proto::PackageStatusEnum::try_from(p.status) {
                    Ok(proto::PackageStatusEnum::InstallPending) => PackageState::InstallPending,
                    Ok(proto::PackageStatusEnum::Installing) => PackageState::Installing,
                    Ok(proto::PackageStatusEnum::InstallFailed) => PackageState::InstallFailed,
                    Ok(proto::PackageStatusEnum::Downloading) => PackageState::Downloading,
                    // An omitted status decodes as Installed, as the spec's enum does.
                    Ok(proto::PackageStatusEnum::Installed) | Err(_) => PackageState::Installed,
                };
                let report = PackageReport {
                    agent_has_version: p.agent_has_version,
                    agent_has_hash: ContentHash(p.agent_has_hash.to_vec()),
                    server_offered_version: p.server_offered_version,
                    server_offered_hash: ContentHash(p.server_offered_hash.to_vec()),
                    state,
                    error: p.error_message,
                    download_percent: p
                        .download_details
                        .map(|d| d.download_percent)
                        .filter(|pct| pct.is_finite()),
                };
                (SharedStr::from(name), report)
            })
            .collect(),
        server_provided_all_packages_hash: ContentHash(
            ps.server_provided_all_packages_hash.to_vec(),
        ),
        error: ps.error_message,
    }
}

pub fn packages_to_proto(ps: &PackageReports) -> proto::PackageStatuses {
    proto::PackageStatuses {
        packages: ps
            .packages
            .iter()
            .map(|(name, p)| {
                let status = match p.state {
                    PackageState::Installed => proto::PackageStatusEnum::Installed,
                    PackageState::InstallPending => proto::PackageStatusEnum::InstallPending,
                    PackageState::Installing => proto::PackageStatusEnum::Installing,
                    PackageState::InstallFailed => proto::PackageStatusEnum::InstallFailed,
                    PackageState::Downloading => proto::PackageStatusEnum::Downloading,
                };
                let status = proto::PackageStatus {
                    name: name.to_string(),
                    agent_has_version: p.agent_has_version.clone(),
                    agent_has_hash: Bytes::copy_from_slice(&p.agent_has_hash.0),
                    server_offered_version: p.server_offered_version.clone(),
                    server_offered_hash: Bytes::copy_from_slice(&p.server_offered_hash.0),
                    status: status as i32,
                    error_message: p.error.clone(),
                    download_details: p.download_percent.map(|pct| proto::PackageDownloadDetails {
                        download_percent: pct,
                        download_bytes_per_second: 0.0,
                    }),
                };
                (name.to_string(), status)
            })
            .collect(),
        server_provided_all_packages_hash: Bytes::copy_from_slice(
            &ps.server_provided_all_packages_hash.0,
        ),
        error_message: ps.error.clone(),
    }
}

fn remote_config_status_from_proto(status: i32) -> RemoteConfigStatus {
    match proto::RemoteConfigStatuses::try_from(status) {
        Ok(proto::RemoteConfigStatuses::Applied) => RemoteConfigStatus::Applied,
        Ok(proto::RemoteConfigStatuses::Applying) => RemoteConfigStatus::Applying,
        Ok(proto::RemoteConfigStatuses::Failed) => RemoteConfigStatus::Failed,
        Ok(proto::RemoteConfigStatuses::Unset) | Err(_) => RemoteConfigStatus::Unset,
    }
}

pub fn config_map_from_proto(map: proto::AgentConfigMap) -> ConfigMap {
    ConfigMap {
        files: map
            .config_map
            .into_iter()
            .map(|(name, f)| {
                (
                    name,
                    ConfigFile {
                        body: f.body,
                        content_type: f.content_type,
                    },
                )
            })
            .collect(),
    }
}

pub fn config_map_to_proto(map: &ConfigMap) -> proto::AgentConfigMap {
    proto::AgentConfigMap {
        config_map: map
            .files
            .iter()
            .map(|(name, f)| {
                (
                    name.clone(),
                    proto::AgentConfigFile {
                        body: f.body.clone(),
                        content_type: f.content_type.clone(),
                    },
                )
            })
            .collect(),
    }
}

/// Builds the ServerToAgent for `reply`, echoing the agent's uid bytes. An error reply carries
/// nothing else, as the spec asks.
pub fn reply_to_proto(raw_uid: Bytes, reply: &ServerReply) -> proto::ServerToAgent {
    if let Some(error) = &reply.error {
        return proto::ServerToAgent {
            instance_uid: raw_uid,
            error_response: Some(error_to_proto(error)),
            ..Default::default()
        };
    }
    let mut msg = proto::ServerToAgent {
        instance_uid: raw_uid,
        capabilities: reply.capabilities.map_or(0, |c| c.bits()),
        ..Default::default()
    };
    if reply.restart {
        // A command goes with nothing but the uid and capabilities.
        msg.command = Some(proto::ServerToAgentCommand {
            r#type: proto::CommandType::Restart as i32,
        });
        return msg;
    }
    if let Some(offer) = &reply.packages {
        let kind = if offer.name.is_empty() {
            proto::PackageType::TopLevel
        } else {
            proto::PackageType::Addon
        };
        let available = proto::PackageAvailable {
            r#type: kind as i32,
            version: offer.version.clone(),
            file: Some(proto::DownloadableFile {
                download_url: offer.download_url.clone(),
                content_hash: Bytes::copy_from_slice(&offer.content_hash.0),
                ..Default::default()
            }),
            hash: Bytes::copy_from_slice(&offer.hash.0),
        };
        msg.packages_available = Some(proto::PackagesAvailable {
            packages: [(offer.name.clone(), available)].into(),
            all_packages_hash: Bytes::copy_from_slice(&offer.all_packages_hash().0),
        });
    }
    if reply.report_full_state {
        msg.flags |= FLAG_REPORT_FULL_STATE;
    }
    if reply.report_available_components {
        msg.flags |= FLAG_REPORT_AVAILABLE_COMPONENTS;
    }
    if let Some(uid) = reply.new_instance_uid {
        msg.agent_identification = Some(proto::AgentIdentification {
            new_instance_uid: Bytes::copy_from_slice(uid.as_bytes()),
        });
    }
    if let Some(offer) = &reply.remote_config {
        msg.remote_config = Some(proto::AgentRemoteConfig {
            config: Some(config_map_to_proto(&offer.files)),
            config_hash: Bytes::copy_from_slice(&offer.hash.0),
        });
    }
    if reply.heartbeat_interval_seconds.is_some() || reply.own_telemetry.is_some() {
        msg.connection_settings = Some(connection_settings(reply));
    }
    msg
}

fn connection_settings(reply: &ServerReply) -> proto::ConnectionSettingsOffers {
    use sha2::{Digest, Sha256};
    let telemetry = |endpoint: &Option<String>| {
        endpoint
            .as_ref()
            .map(|e| proto::TelemetryConnectionSettings {
                destination_endpoint: e.clone(),
                ..Default::default()
            })
    };
    let own = reply.own_telemetry.clone().unwrap_or_default();
    let mut offers = proto::ConnectionSettingsOffers {
        opamp: reply
            .heartbeat_interval_seconds
            .map(|secs| proto::OpAmpConnectionSettings {
                heartbeat_interval_seconds: secs,
                ..Default::default()
            }),
        own_metrics: telemetry(&own.metrics),
        own_logs: telemetry(&own.logs),
        own_traces: telemetry(&own.traces),
        ..Default::default()
    };
    // The hash only has to change when the offer does.
    let digest = Sha256::digest(offers.encode_to_vec());
    offers.hash = Bytes::copy_from_slice(&digest);
    offers
}

fn error_to_proto(error: &ReplyError) -> proto::ServerErrorResponse {
    match error {
        ReplyError::BadRequest(message) => proto::ServerErrorResponse {
            r#type: proto::ServerErrorResponseType::BadRequest as i32,
            error_message: message.clone(),
            details: None,
        },
        ReplyError::Unavailable {
            message,
            retry_after_nanos,
        } => proto::ServerErrorResponse {
            r#type: proto::ServerErrorResponseType::Unavailable as i32,
            error_message: message.clone(),
            details: Some(proto::server_error_response::Details::RetryInfo(
                proto::RetryInfo {
                    retry_after_nanoseconds: *retry_after_nanos,
                },
            )),
        },
    }
}

pub fn description_from_proto(d: proto::AgentDescription) -> AgentDescription {
    AgentDescription {
        identifying: attributes_from_proto(d.identifying_attributes),
        non_identifying: attributes_from_proto(d.non_identifying_attributes),
    }
}

pub fn description_to_proto(d: &AgentDescription) -> proto::AgentDescription {
    proto::AgentDescription {
        identifying_attributes: attributes_to_proto(&d.identifying),
        non_identifying_attributes: attributes_to_proto(&d.non_identifying),
    }
}

/// The compact form the fleet keeps of a reported health tree.
pub fn health_report(h: proto::ComponentHealth) -> HealthReport {
    let encoded = Bytes::from(h.encode_to_vec());
    HealthReport {
        encoded,
        problem: health_problem(h),
    }
}

/// A stored health report, from its encoding (kept as it is).
pub fn health_report_from_bytes(encoded: &[u8]) -> Result<HealthReport, prost::DecodeError> {
    let problem = health_problem(proto::ComponentHealth::decode(encoded)?);
    Ok(HealthReport {
        encoded: Bytes::copy_from_slice(encoded),
        problem,
    })
}

fn health_problem(h: proto::ComponentHealth) -> Option<Box<str>> {
    health_from_proto(h).problem().map(String::into_boxed_str)
}

/// The tree of a health report, for reading.
pub fn health_tree(report: &HealthReport) -> Option<Health> {
    proto::ComponentHealth::decode(report.encoded.as_ref())
        .ok()
        .map(health_from_proto)
}

pub fn health_from_proto(h: proto::ComponentHealth) -> Health {
    Health {
        healthy: h.healthy,
        start_time_unix_nano: h.start_time_unix_nano,
        last_error: h.last_error,
        status: h.status,
        status_time_unix_nano: h.status_time_unix_nano,
        components: h
            .component_health_map
            .into_iter()
            .map(|(name, c)| (SharedStr::from(name), health_from_proto(c)))
            .collect(),
        attributes: attributes_from_proto(h.attributes),
    }
}

pub fn health_to_proto(h: &Health) -> proto::ComponentHealth {
    proto::ComponentHealth {
        healthy: h.healthy,
        start_time_unix_nano: h.start_time_unix_nano,
        last_error: h.last_error.clone(),
        status: h.status.clone(),
        status_time_unix_nano: h.status_time_unix_nano,
        component_health_map: h
            .components
            .iter()
            .map(|(name, c)| (name.to_string(), health_to_proto(c)))
            .collect(),
        attributes: attributes_to_proto(&h.attributes),
    }
}

/// Later duplicates of a key win, as in a map built from the list in order.
fn attributes_from_proto(kvs: Vec<proto::KeyValue>) -> StrMap<AttributeValue> {
    kvs.into_iter()
        .map(|kv| (SharedStr::from(kv.key), value_from_proto(kv.value)))
        .collect()
}

fn attributes_to_proto(attrs: &StrMap<AttributeValue>) -> Vec<proto::KeyValue> {
    attrs
        .iter()
        .map(|(key, value)| proto::KeyValue {
            key: key.to_string(),
            value: Some(value_to_proto(value)),
        })
        .collect()
}

fn value_from_proto(v: Option<proto::AnyValue>) -> AttributeValue {
    use proto::any_value::Value;
    match v.and_then(|v| v.value) {
        None => AttributeValue::String(SharedStr::default()),
        Some(Value::StringValue(s)) => AttributeValue::String(SharedStr::from(s)),
        Some(Value::BoolValue(b)) => AttributeValue::Bool(b),
        Some(Value::IntValue(i)) => AttributeValue::Int(i),
        Some(Value::DoubleValue(d)) => AttributeValue::Double(d),
        Some(Value::BytesValue(b)) => AttributeValue::Bytes(b.to_vec()),
        Some(Value::ArrayValue(a)) => AttributeValue::Array(
            a.values
                .into_iter()
                .map(|v| value_from_proto(Some(v)))
                .collect(),
        ),
        Some(Value::KvlistValue(l)) => AttributeValue::Map(attributes_from_proto(l.values)),
    }
}

fn value_to_proto(v: &AttributeValue) -> proto::AnyValue {
    use proto::any_value::Value;
    let value = match v {
        AttributeValue::String(s) => Value::StringValue(s.to_string()),
        AttributeValue::Bool(b) => Value::BoolValue(*b),
        AttributeValue::Int(i) => Value::IntValue(*i),
        AttributeValue::Double(d) => Value::DoubleValue(*d),
        AttributeValue::Bytes(b) => Value::BytesValue(Bytes::copy_from_slice(b)),
        AttributeValue::Array(values) => Value::ArrayValue(proto::ArrayValue {
            values: values.iter().map(value_to_proto).collect(),
        }),
        AttributeValue::Map(map) => Value::KvlistValue(proto::KeyValueList {
            values: attributes_to_proto(map),
        }),
    };
    proto::AnyValue { value: Some(value) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::domain::ServerCapabilities;

    fn kv(key: &str, value: proto::any_value::Value) -> proto::KeyValue {
        proto::KeyValue {
            key: key.into(),
            value: Some(proto::AnyValue { value: Some(value) }),
        }
    }

    #[test]
    fn description_round_trips_through_the_domain() {
        use proto::any_value::Value;
        let wire = proto::AgentDescription {
            identifying_attributes: vec![
                kv("service.name", Value::StringValue("otelcol".into())),
                kv("pid", Value::IntValue(42)),
            ],
            non_identifying_attributes: vec![kv(
                "tags",
                Value::ArrayValue(proto::ArrayValue {
                    values: vec![proto::AnyValue {
                        value: Some(Value::BoolValue(true)),
                    }],
                }),
            )],
        };
        let domain = description_from_proto(wire);
        assert_eq!(
            domain.attribute("service.name"),
            Some(&AttributeValue::String("otelcol".into()))
        );
        assert_eq!(
            description_from_proto(description_to_proto(&domain)),
            domain
        );
    }

    #[test]
    fn inbound_reads_flags_and_bad_uids() {
        let msg = proto::AgentToServer {
            instance_uid: Bytes::from_static(&[1, 2, 3]),
            flags: FLAG_REQUEST_INSTANCE_UID,
            agent_disconnect: Some(proto::AgentDisconnect {}),
            remote_config_status: Some(proto::RemoteConfigStatus {
                last_remote_config_hash: Bytes::from_static(&[0xab]),
                status: proto::RemoteConfigStatuses::Failed as i32,
                error_message: "bad".into(),
            }),
            ..Default::default()
        };
        let inbound = Inbound::from(msg);
        assert!(inbound.uid.is_err());
        assert!(inbound.report.request_instance_uid);
        assert!(inbound.report.disconnect);
        let rcs = inbound.report.remote_config_status.unwrap();
        assert_eq!(rcs.status, RemoteConfigStatus::Failed);
        assert_eq!(rcs.hash.to_hex(), "ab");
    }

    #[test]
    fn error_replies_carry_nothing_else() {
        let reply = ServerReply {
            capabilities: Some(ServerCapabilities::ACCEPTS_STATUS),
            report_full_state: true,
            error: Some(ReplyError::BadRequest("uid".into())),
            ..Default::default()
        };
        let msg = reply_to_proto(Bytes::from_static(&[9; 3]), &reply);
        assert_eq!(msg.instance_uid.as_ref(), &[9; 3]);
        assert_eq!(msg.flags, 0);
        assert_eq!(msg.capabilities, 0);
        let err = msg.error_response.unwrap();
        assert_eq!(
            err.r#type,
            proto::ServerErrorResponseType::BadRequest as i32
        );
    }

    #[test]
    fn flags_and_offers_are_encoded() {
        let uid = InstanceUid::new_v7();
        let reply = ServerReply {
            report_full_state: true,
            report_available_components: true,
            new_instance_uid: Some(uid),
            heartbeat_interval_seconds: Some(15),
            ..Default::default()
        };
        let msg = reply_to_proto(Bytes::new(), &reply);
        assert_eq!(msg.flags, 0x3);
        assert_eq!(
            msg.agent_identification.unwrap().new_instance_uid.as_ref(),
            uid.as_bytes()
        );
        let offer = msg.connection_settings.unwrap();
        assert_eq!(offer.opamp.unwrap().heartbeat_interval_seconds, 15);
        assert!(!offer.hash.is_empty());
    }

    #[test]
    fn a_health_report_keeps_the_tree_and_its_problem() {
        let exporter = proto::ComponentHealth {
            healthy: false,
            last_error: "connection refused".into(),
            ..Default::default()
        };
        let pipeline = proto::ComponentHealth {
            healthy: true,
            component_health_map: [("exporter:otlp".to_string(), exporter)].into(),
            ..Default::default()
        };
        let root = proto::ComponentHealth {
            healthy: true,
            status: "StatusOK".into(),
            component_health_map: [("pipeline:traces".to_string(), pipeline)].into(),
            ..Default::default()
        };
        let report = health_report(root.clone());
        assert_eq!(
            report.problem.as_deref(),
            Some("pipeline:traces/exporter:otlp: connection refused")
        );
        let tree = health_tree(&report).expect("decodes");
        assert_eq!(tree, health_from_proto(root));
        assert_eq!(health_report_from_bytes(&report.encoded).unwrap(), report);
        let healthy = health_report(proto::ComponentHealth {
            healthy: true,
            ..Default::default()
        });
        assert_eq!(healthy.problem, None);
    }
}
