//! Writes the seed corpus: a few real messages, selectors, collector configurations and
//! session scripts per target. Run from the repository root:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/corpus
//! ```
//!
//! Each seed is named by what it is, so a rerun overwrites it in place.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use corral::core::config::ConfigVersion;
use corral::edge::protocol::proto;
use corral_fuzz::{http, session};
use flate2::write::GzEncoder;
use prost::Message;

const COLLECTOR: &str = r#"# An OpenTelemetry Collector configuration as agents report and admins send it.
extensions:
  health_check:
    endpoint: 0.0.0.0:13133
  pprof:
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
      http:
        endpoint: 0.0.0.0:4318
  hostmetrics/fast:
    collection_interval: 10s
    scrapers: {cpu: {}, memory: {}}
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
  batch:
exporters:
  otlphttp:
    endpoint: https://otlp.example.com:4318
    headers: {authorization: "Bearer ${env:TOKEN}"}
  debug:
    verbosity: basic
connectors:
  spanmetrics:
service:
  extensions: [health_check, pprof]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlphttp, spanmetrics]
    metrics:
      receivers: [otlp, hostmetrics/fast, spanmetrics]
      processors: [memory_limiter, batch]
      exporters: [otlphttp, debug]
"#;

const MERGED: &str = r#"defaults: &defaults
  otlp: {protocols: {grpc: {}}}
  kafka/in:
    brokers: [kafka:9092]
receivers:
  <<: *defaults
  filelog: {include: [/var/log/*.log]}
exporters:
  <<: [{debug: {}}, {otlp/backup: {endpoint: "b:4317"}}]
"#;

const PATHS: &str = "receivers::otlp::protocols::grpc::endpoint: 0.0.0.0:4317\nexporters::debug: {}\n\
                     processors: ~\n---\nexporters: {ignored: {}}\n";

const ALIASES: &str = "a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\n\
                       receivers: {otlp: *c}\n";

fn kv(key: &str, value: proto::any_value::Value) -> proto::KeyValue {
    proto::KeyValue {
        key: key.into(),
        value: Some(proto::AnyValue { value: Some(value) }),
    }
}

fn text(key: &str, value: &str) -> proto::KeyValue {
    kv(key, proto::any_value::Value::StringValue(value.into()))
}

const UID: [u8; 16] = [
    0x01, 0x93, 0x7f, 0x2a, 0x4c, 0x11, 0x7a, 0x00, 0x8b, 0x3e, 0x5d, 0x10, 0x22, 0x33, 0x44, 0x55,
];

/// Reports status, effective config, own metrics, health, remote config status, heartbeats,
/// package statuses and available components; accepts remote config, packages, connection
/// settings and restarts.
const CAPABILITIES: u64 =
    0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x40 | 0x100 | 0x400 | 0x800 | 0x1000 | 0x2000 | 0x4000;

/// A collector's first report: everything it can say about itself.
fn hello(seq: u64) -> proto::AgentToServer {
    use proto::any_value::Value;
    let mut components = BTreeMap::new();
    for (kind, types) in [
        ("receivers", &["otlp", "hostmetrics", "filelog"][..]),
        ("processors", &["batch", "memory_limiter"][..]),
        ("exporters", &["otlphttp", "debug", "kafka"][..]),
        ("extensions", &["health_check", "pprof"][..]),
        ("connectors", &["spanmetrics"][..]),
    ] {
        let sub = types
            .iter()
            .map(|t| {
                let details = proto::ComponentDetails {
                    metadata: vec![text("code.namespace", "go.opentelemetry.io/collector")],
                    sub_component_map: BTreeMap::new(),
                };
                (t.to_string(), details)
            })
            .collect();
        components.insert(
            kind.to_string(),
            proto::ComponentDetails {
                metadata: Vec::new(),
                sub_component_map: sub,
            },
        );
    }
    proto::AgentToServer {
        instance_uid: Bytes::from_static(&UID),
        sequence_num: seq,
        capabilities: CAPABILITIES,
        agent_description: Some(proto::AgentDescription {
            identifying_attributes: vec![
                text("service.name", "otelcol-contrib"),
                text("service.version", "0.120.0"),
                text("service.instance.id", "0193-7f2a"),
            ],
            non_identifying_attributes: vec![
                text("host.name", "edge-eu-1"),
                text("os.type", "linux"),
                text("host.arch", "amd64"),
                kv("cores", Value::IntValue(8)),
                kv("canary", Value::BoolValue(false)),
                kv("load", Value::DoubleValue(0.25)),
                kv(
                    "tags",
                    Value::ArrayValue(proto::ArrayValue {
                        values: vec![proto::AnyValue {
                            value: Some(Value::StringValue("eu".into())),
                        }],
                    }),
                ),
                kv(
                    "team",
                    Value::KvlistValue(proto::KeyValueList {
                        values: vec![text("name", "observability")],
                    }),
                ),
                kv("blob", Value::BytesValue(Bytes::from_static(b"\x00\x01"))),
            ],
        }),
        health: Some(proto::ComponentHealth {
            healthy: true,
            start_time_unix_nano: 1_764_547_200_000_000_000,
            status: "StatusOK".into(),
            component_health_map: BTreeMap::from([
                (
                    "pipeline:traces".to_string(),
                    proto::ComponentHealth {
                        healthy: true,
                        status: "StatusOK".into(),
                        component_health_map: BTreeMap::from([(
                            "receiver:otlp".to_string(),
                            proto::ComponentHealth {
                                healthy: true,
                                status: "StatusOK".into(),
                                ..Default::default()
                            },
                        )]),
                        ..Default::default()
                    },
                ),
                (
                    "pipeline:metrics".to_string(),
                    proto::ComponentHealth {
                        healthy: false,
                        last_error: "exporter otlphttp: connection refused".into(),
                        status: "StatusRecoverableError".into(),
                        ..Default::default()
                    },
                ),
            ]),
            ..Default::default()
        }),
        effective_config: Some(proto::EffectiveConfig {
            config_map: Some(proto::AgentConfigMap {
                config_map: BTreeMap::from([(
                    String::new(),
                    proto::AgentConfigFile {
                        body: Bytes::from_static(COLLECTOR.as_bytes()),
                        content_type: "text/yaml".into(),
                    },
                )]),
            }),
        }),
        remote_config_status: Some(proto::RemoteConfigStatus {
            last_remote_config_hash: Bytes::new(),
            status: proto::RemoteConfigStatuses::Unset as i32,
            error_message: String::new(),
        }),
        package_statuses: Some(proto::PackageStatuses {
            packages: BTreeMap::from([(
                "otelcol-contrib".to_string(),
                proto::PackageStatus {
                    name: "otelcol-contrib".into(),
                    agent_has_version: "0.119.0".into(),
                    agent_has_hash: Bytes::from_static(&[0x11; 32]),
                    status: proto::PackageStatusEnum::Installed as i32,
                    ..Default::default()
                },
            )]),
            server_provided_all_packages_hash: Bytes::new(),
            error_message: String::new(),
        }),
        custom_capabilities: Some(proto::CustomCapabilities {
            capabilities: vec!["io.opentelemetry.pprof".into()],
        }),
        available_components: Some(proto::AvailableComponents {
            components,
            hash: Bytes::from_static(&[0x42; 32]),
        }),
        ..Default::default()
    }
}

fn heartbeat(seq: u64) -> proto::AgentToServer {
    proto::AgentToServer {
        instance_uid: Bytes::from_static(&UID),
        sequence_num: seq,
        capabilities: CAPABILITIES,
        ..Default::default()
    }
}

fn config_status(
    seq: u64,
    hash: &[u8],
    status: proto::RemoteConfigStatuses,
) -> proto::AgentToServer {
    proto::AgentToServer {
        remote_config_status: Some(proto::RemoteConfigStatus {
            last_remote_config_hash: Bytes::copy_from_slice(hash),
            status: status as i32,
            error_message: if status == proto::RemoteConfigStatuses::Failed {
                "cannot start pipelines: unknown exporter kafka".into()
            } else {
                String::new()
            },
        }),
        ..heartbeat(seq)
    }
}

fn package_status(seq: u64, hash: &[u8], status: proto::PackageStatusEnum) -> proto::AgentToServer {
    proto::AgentToServer {
        package_statuses: Some(proto::PackageStatuses {
            packages: BTreeMap::from([(
                "otelcol-contrib".to_string(),
                proto::PackageStatus {
                    name: "otelcol-contrib".into(),
                    agent_has_version: "0.119.0".into(),
                    server_offered_version: "0.120.0".into(),
                    server_offered_hash: Bytes::copy_from_slice(hash),
                    status: status as i32,
                    download_details: Some(proto::PackageDownloadDetails {
                        download_percent: 42.0,
                        download_bytes_per_second: 1e6,
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        }),
        ..heartbeat(seq)
    }
}

fn goodbye(seq: u64) -> proto::AgentToServer {
    proto::AgentToServer {
        agent_disconnect: Some(proto::AgentDisconnect {}),
        ..heartbeat(seq)
    }
}

fn new_uid_please() -> proto::AgentToServer {
    proto::AgentToServer {
        instance_uid: Bytes::from_static(&[0; 16]),
        flags: 0x1,
        ..hello(1)
    }
}

fn ws_frame(msg: &proto::AgentToServer) -> Vec<u8> {
    let mut frame = vec![0];
    msg.encode(&mut frame).expect("a Vec grows");
    frame
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("writes to a Vec");
    encoder.finish().expect("writes to a Vec")
}

struct Corpus {
    root: PathBuf,
}

impl Corpus {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("a corpus directory");
        std::fs::write(dir.join(name), bytes).expect("a seed written");
    }
}

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map_or_else(|| Path::new("fuzz/corpus").to_path_buf(), PathBuf::from);
    let corpus = Corpus { root };
    let at = Utc.timestamp_opt(0, 0).single().expect("the epoch");
    let v1 =
        ConfigVersion::new(1, session::config_files(session::VERSIONS[0]), at).expect("valid yaml");
    let v2 =
        ConfigVersion::new(2, session::config_files(session::VERSIONS[1]), at).expect("valid yaml");
    let package = session::package(at).hash();
    let encode = |msg: &proto::AgentToServer| msg.encode_to_vec();

    // The WebSocket path: one frame per seed.
    corpus.put("ws_frame", "hello", &ws_frame(&hello(1)));
    corpus.put("ws_frame", "heartbeat", &ws_frame(&heartbeat(2)));
    corpus.put("ws_frame", "new-uid", &ws_frame(&new_uid_please()));
    corpus.put(
        "ws_frame",
        "config-failed",
        &ws_frame(&config_status(
            3,
            &v2.hash.0,
            proto::RemoteConfigStatuses::Failed,
        )),
    );
    corpus.put(
        "ws_frame",
        "package-downloading",
        &ws_frame(&package_status(
            4,
            &package.0,
            proto::PackageStatusEnum::Downloading,
        )),
    );
    corpus.put("ws_frame", "goodbye", &ws_frame(&goodbye(5)));

    // The plain-HTTP path: a mode byte, then the body.
    let put_http = |name: &str, mode: u8, body: &[u8]| {
        corpus.put("http_body", name, &http::input(mode, body));
    };
    put_http("hello", http::IDENTITY, &encode(&hello(1)));
    put_http("hello-gzip", http::GZIP_AS_IS, &gzip(&encode(&hello(1))));
    put_http(
        "heartbeat-gzip-wrapped",
        http::GZIP_WRAPPED,
        &encode(&heartbeat(2)),
    );
    put_http(
        "config-applied-gzip-wrapped",
        http::GZIP_WRAPPED,
        &encode(&config_status(
            3,
            &v1.hash.0,
            proto::RemoteConfigStatuses::Applied,
        )),
    );
    put_http(
        "bomb-gzip-small-bound",
        http::GZIP_AS_IS | http::SMALL_BOUND,
        &gzip(&[0; 64 * 1024]),
    );

    // Selectors: the first line, then the agent's labels.
    for (name, text) in [
        (
            "set-based",
            "env=prod,region in (eu,us),!canary\nenv=prod\nregion=eu",
        ),
        (
            "all-operators",
            "tier!=edge, zone notin (a, b), team, version==1.2\nteam=obs\nversion=1.2\ntier=core",
        ),
        (
            "pin",
            "configuration=edge-collectors\nconfiguration=edge-collectors",
        ),
        ("empty-value", "env=\nenv="),
        ("everything", "  \nenv=prod"),
        (
            "dns-keys",
            "app.kubernetes.io/name in (otelcol,agent),!example.com/skip\n",
        ),
    ] {
        corpus.put("selector", name, text.as_bytes());
    }

    // Collector configurations.
    corpus.put("components", "collector", COLLECTOR.as_bytes());
    corpus.put("components", "merge-keys", MERGED.as_bytes());
    corpus.put("components", "key-paths", PATHS.as_bytes());
    corpus.put("components", "aliases", ALIASES.as_bytes());
    corpus.put("components", "version-1", session::VERSIONS[0].as_bytes());
    // Anchors nested under each other's nesting: deeper than the bound once aliases expand.
    let nest = |inner: &str| format!("{}{inner}{}", "[".repeat(97), "]".repeat(97));
    let mut chain = format!("a0: &a0 {}\n", nest("x"));
    for i in 1..44 {
        let link = nest(&format!("*a{}", i - 1));
        chain.push_str(&format!("a{i}: &a{i} {link}\n"));
    }
    chain.push_str("receivers: {otlp: *a43}\n");
    corpus.put("components", "deep-aliases", chain.as_bytes());

    // Session scripts.
    use session::*;
    let ws1 = 0;
    let ws2 = 1;
    corpus.put(
        "session",
        "websocket-rollout",
        &Script::new(2, false)
            .report(ws1, &encode(&hello(1)))
            .report(ws1, &encode(&heartbeat(2)))
            .event(DIRECT, 1)
            .report(
                ws1,
                &encode(&config_status(
                    3,
                    &v1.hash.0,
                    proto::RemoteConfigStatuses::Applying,
                )),
            )
            .report(
                ws1,
                &encode(&config_status(
                    4,
                    &v1.hash.0,
                    proto::RemoteConfigStatuses::Applied,
                )),
            )
            .event(WAIT, 2)
            .report(ws1, &encode(&heartbeat(5)))
            .event(DIRECT, 2)
            .report(
                ws1,
                &encode(&config_status(
                    6,
                    &v2.hash.0,
                    proto::RemoteConfigStatuses::Failed,
                )),
            )
            .event(RETRY_CONFIG, 0)
            .report(ws1, &encode(&goodbye(7)))
            .into_bytes(),
    );
    corpus.put(
        "session",
        "http-polling-upgrade",
        &Script::new(2, false)
            .report(VIA_HTTP | ASSIGNED, &encode(&new_uid_please()))
            .event(DIRECT, 0x10)
            .event(WAIT, 3)
            .report(VIA_HTTP, &encode(&heartbeat(2)))
            .report(
                VIA_HTTP,
                &encode(&package_status(
                    3,
                    &package.0,
                    proto::PackageStatusEnum::Downloading,
                )),
            )
            .event(RESTART, 0)
            .report(
                VIA_HTTP,
                &encode(&package_status(
                    4,
                    &package.0,
                    proto::PackageStatusEnum::Installed,
                )),
            )
            .event(WAIT, 20)
            .event(SILENCE, 60)
            .into_bytes(),
    );
    corpus.put(
        "session",
        "reconnect-and-silence",
        // Managed, restored in error.
        &Script::new(0x12, true)
            .report(ws1 | COMPONENTS_KNOWN, &encode(&hello(10)))
            .report(ws2, &encode(&heartbeat(11)))
            .event(CONNECTION_CLOSED, 1)
            .event(ANSWERED, 3)
            .event(WAIT, 9)
            .event(SILENCE, 90)
            .report(ws2, &encode(&heartbeat(20)))
            .event(OVERFLOWED, 0)
            .event(SHUTDOWN, 0)
            .into_bytes(),
    );
    corpus.put(
        "session",
        "lifecycle",
        &Script::new(0, false)
            .report(ws1, &encode(&hello(1)))
            .event(REQUEST_ADMIN_STATE, 2)
            .event(SET_LABELS, 3)
            .event(REQUEST_ADMIN_STATE, 4)
            .event(DISCONNECT, 0)
            .event(REQUEST_ADMIN_STATE, 2)
            .event(REQUEST_ADMIN_STATE, 3)
            .report(ws1, &encode(&heartbeat(2)))
            .event(WAIT, 200)
            .event(RETAIN, 1)
            .event(FORGET, 0)
            .into_bytes(),
    );
}
