//! One agent's session driven by a script of events (see `corral_fuzz::session`): reports
//! are arbitrary bytes decoded and bounded as the transport does it, then converted; the other
//! events are an admin's, the controller's, the silence watch's and the connection's.
//! Nothing may panic, every status move must be one the status diagram allows, and the gauge
//! moves must follow on from each other.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use corral::core::config::ConfigVersion;
use corral::core::domain::{AgentRecord, InstanceUid, OwnTelemetry};
use corral::core::lifecycle::{AdminState, Admission, STATE_NAMES};
use corral::core::packages::Package;
use corral::core::rollout::Directive;
use corral::core::session::{AgentSession, Event, Inbound, SessionConfig, Via};
use corral::core::status::{Status, allowed};
use corral::edge::protocol::{self, decode_agent_message};
use corral_fuzz::cap_stack;
use corral_fuzz::session::*;
use libfuzzer_sys::fuzz_target;

/// Enough for any rule to come into play; longer scripts only slow the search down.
const MAX_EVENTS: usize = 256;

struct Fixtures {
    versions: [Arc<ConfigVersion>; 2],
    package: Arc<Package>,
    start: DateTime<Utc>,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: std::sync::OnceLock<Fixtures> = std::sync::OnceLock::new();
    FIXTURES.get_or_init(|| {
        let start = Utc
            .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .single()
            .expect("a valid time");
        let version = |n: u32, body: &str| {
            Arc::new(ConfigVersion::new(n, config_files(body), start).expect("valid yaml"))
        };
        Fixtures {
            versions: [version(1, VERSIONS[0]), version(2, VERSIONS[1])],
            package: Arc::new(package(start)),
            start,
        }
    })
}

/// Reads `[op, arg]` records (a report with its length and bytes) into events.
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }
}

fn via(arg: u8) -> Via {
    match arg & 0b11 {
        VIA_HTTP => Via::Http,
        n => Via::WebSocket(u64::from(n) + 1),
    }
}

fn labels(arg: u8) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if arg & 1 != 0 {
        labels.insert("env".into(), "prod".into());
    }
    if arg & 2 != 0 {
        labels.insert("configuration".into(), "edge".into());
    }
    if arg & 4 != 0 {
        labels.insert("region".into(), "eu".into());
    }
    labels
}

fuzz_target!(init: cap_stack(), |data: &[u8]| run(data));

fn run(data: &[u8]) {
    let fx0 = fixtures();
    let mut script = Script { data };
    let (Some(setup), Some(flags)) = (script.byte(), script.byte()) else {
        return;
    };
    let mut now = fx0.start;
    let uid = InstanceUid::from_bytes(&[7; 16]).expect("16 bytes");
    let mut record = AgentRecord::new(uid, now);
    record.admin_state = AdminState::ALL[usize::from(setup & 0xf) % AdminState::ALL.len()];
    let restored = flags & 1 != 0;
    if restored {
        record.status = Status::ALL[usize::from(setup >> 4) % Status::ALL.len()];
    }
    let config = Arc::new(SessionConfig {
        heartbeat_interval: Duration::from_secs(15),
        public_url: (flags & 2 != 0).then(|| "http://corral:4320".into()),
        own_telemetry: OwnTelemetry {
            metrics: Some("http://otlp:4318".into()),
            ..OwnTelemetry::default()
        },
        refuse_ignored: flags & 4 != 0,
        admission: [Admission::Auto, Admission::Register, Admission::Manual]
            [usize::from(flags >> 3) % 3],
        // Small, so that both whole and too-large effective configs are reached.
        max_effective_config: 4096,
    });
    let (mut session, fx) = AgentSession::new(record, !restored, config, now);

    // What the gauges count for this agent, followed move by move.
    let mut counted_status: Option<Status> = None;
    let mut counted_admin = None;
    let mut check = |fx: &corral::core::session::Effects, session: &AgentSession| {
        for &(from, to) in &fx.status_moves {
            assert_eq!(
                from, counted_status,
                "a status move from what is not counted"
            );
            if let (Some(from), Some(to)) = (from, to) {
                assert!(allowed(from, to), "status move {from:?} -> {to:?}");
            }
            counted_status = to;
        }
        if let Some((from, to)) = fx.admin_move {
            assert_eq!(
                from, counted_admin,
                "an admin move from what is not counted"
            );
            counted_admin = to;
        }
        if !fx.stop {
            assert_eq!(counted_admin, Some(session.record().admin_state));
        }
    };
    check(&fx, &session);

    let mut last_seq = 0u64;
    for _ in 0..MAX_EVENTS {
        let (Some(op), Some(arg)) = (script.byte(), script.byte()) else {
            break;
        };
        let event = match op % OPS {
            REPORT => {
                let len = match (script.byte(), script.byte()) {
                    (Some(lo), Some(hi)) => usize::from(u16::from_le_bytes([lo, hi])),
                    _ => 0,
                };
                let bytes = Bytes::copy_from_slice(script.bytes(len));
                // A message the transport refuses never reaches the session.
                let Ok(msg) = decode_agent_message(bytes) else {
                    continue;
                };
                let report = protocol::Inbound::from(msg).report;
                last_seq = report.sequence_num;
                Event::Report(Box::new(Inbound {
                    report,
                    via: via(arg),
                    assigned: arg & ASSIGNED != 0,
                    origin: (arg & 0x10 != 0).then(|| Arc::from("http://10.0.0.1:4320")),
                    components_known: arg & COMPONENTS_KNOWN != 0,
                }))
            }
            CONNECTION_CLOSED => Event::ConnectionClosed {
                conn: u64::from(arg % 4),
                reason: "closed".into(),
            },
            OVERFLOWED => Event::Overflowed,
            DIRECT => Event::Direct(Directive {
                version: match arg % 3 {
                    0 => None,
                    n => Some(fx0.versions[usize::from(n) - 1].clone()),
                },
                pending: (arg & 0x4 != 0).then_some("queued for a later rollout wave".into()),
                incompatible: (arg & 0x8 != 0).then(|| "exporters/kafka".into()),
                package: (arg & 0x10 != 0).then(|| fx0.package.clone()),
            }),
            SET_LABELS => Event::SetLabels(labels(arg)),
            REQUEST_ADMIN_STATE => {
                Event::RequestAdminState(STATE_NAMES[usize::from(arg) % STATE_NAMES.len()])
            }
            RETAIN => Event::Retain {
                after: Duration::from_secs(u64::from(arg) * 60),
                since: fx0.start,
            },
            RESTART => Event::Restart,
            RETRY_CONFIG => Event::RetryConfig,
            DISCONNECT => Event::Disconnect,
            SILENCE => Event::Silence {
                last_seen: now - chrono::Duration::seconds(i64::from(arg)),
            },
            ANSWERED => {
                last_seq = last_seq.wrapping_add(u64::from(arg & 0x7f));
                Event::Answered {
                    last_seq: (arg & 0x80 == 0).then_some(last_seq),
                    gap: Some(Duration::from_secs(u64::from(arg % 64))),
                    last_seen: now,
                }
            }
            SHUTDOWN => Event::Shutdown,
            FORGET => Event::Forget,
            _ => {
                now += chrono::Duration::seconds(i64::from(arg) * 10);
                continue;
            }
        };
        let fx = session.step(event, now);
        check(&fx, &session);
        // The actor stops with its session; nothing reaches it after that.
        if fx.stop {
            break;
        }
        let _ = session.quiet_after();
    }
}
