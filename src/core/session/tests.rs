//! The session's rules, one test each, through one rig: events in, effects out.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::core::config::ConfigVersion;
use crate::core::domain::{
    AgentDescription, AttributeValue, ConfigFile, ConfigMap, InstanceUid, RemoteConfigState, StrMap,
};
use crate::core::lifecycle::STATE_NAMES;

const WS: Via = Via::WebSocket(1);
const WS2: Via = Via::WebSocket(2);

fn caps() -> Caps {
    Caps::REPORTS_STATUS
        | Caps::ACCEPTS_REMOTE_CONFIG
        | Caps::REPORTS_REMOTE_CONFIG
        | Caps::REPORTS_HEARTBEAT
        | Caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS
        | Caps::ACCEPTS_RESTART_COMMAND
}

fn description() -> AgentDescription {
    AgentDescription {
        identifying: StrMap::from_iter([(
            "service.name".into(),
            AttributeValue::String("otelcol".into()),
        )]),
        non_identifying: StrMap::default(),
    }
}

fn version(n: u32, body: &str) -> Arc<ConfigVersion> {
    let files = ConfigMap {
        files: BTreeMap::from([(
            String::new(),
            ConfigFile {
                body: Bytes::from(body.to_string()),
                content_type: "text/yaml".into(),
            },
        )]),
    };
    Arc::new(ConfigVersion::new(n, files, Utc::now()).expect("valid yaml"))
}

struct Rig {
    session: AgentSession,
    now: DateTime<Utc>,
    seq: u64,
}

impl Rig {
    fn new(admin_state: AdminState) -> Self {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let mut record = AgentRecord::new(InstanceUid::new_v7(), now);
        record.admin_state = admin_state;
        let config = Arc::new(SessionConfig {
            heartbeat_interval: Duration::from_secs(15),
            public_url: Some("http://corral:4320".into()),
            own_telemetry: OwnTelemetry {
                metrics: Some("http://otlp:4318".into()),
                ..OwnTelemetry::default()
            },
            refuse_ignored: false,
            admission: Admission::Auto,
            max_effective_config: 1024,
        });
        let (session, _) = AgentSession::new(record, true, config, now);
        Self {
            session,
            now,
            seq: 0,
        }
    }

    fn managed() -> Self {
        Self::new(AdminState::Managed)
    }

    fn step(&mut self, event: Event) -> Effects {
        self.session.step(event, self.now)
    }

    fn later(&mut self, secs: i64) {
        self.now += chrono::Duration::seconds(secs);
    }

    /// A report numbered next, on `via`, built by `fill`.
    fn send(&mut self, via: Via, fill: impl FnOnce(&mut AgentReport)) -> Effects {
        self.seq += 1;
        let mut report = AgentReport {
            sequence_num: self.seq,
            capabilities: caps(),
            ..AgentReport::default()
        };
        fill(&mut report);
        self.step(Event::Report(Box::new(Inbound {
            report,
            via,
            assigned: false,
            origin: None,
            components_known: false,
        })))
    }

    /// A full first report.
    fn hello(&mut self, via: Via) -> Effects {
        self.send(via, |r| r.description = Some(description()))
    }

    fn heartbeat(&mut self, via: Via) -> Effects {
        self.send(via, |_| {})
    }

    fn reply(fx: Effects) -> ServerReply {
        fx.reply.expect("a reply")
    }

    fn status(&self) -> Status {
        self.session.record().status
    }
}

fn applied(hash: &ContentHash) -> impl FnOnce(&mut AgentReport) + '_ {
    move |r| {
        r.remote_config_status = Some(RemoteConfigState {
            hash: hash.clone(),
            status: RemoteConfigStatus::Applied,
            error: String::new(),
        })
    }
}

fn failed(hash: &ContentHash) -> impl FnOnce(&mut AgentReport) + '_ {
    move |r| {
        r.remote_config_status = Some(RemoteConfigState {
            hash: hash.clone(),
            status: RemoteConfigStatus::Failed,
            error: "bad exporter".into(),
        })
    }
}

#[test]
fn rule_1_every_report_is_answered_and_a_quiet_heartbeat_changes_nothing() {
    let mut rig = Rig::managed();
    let fx = rig.hello(WS);
    assert!(fx.reply.is_some());
    assert!(
        fx.publish.is_some() && fx.persist,
        "the first report is stored"
    );
    assert_eq!(fx.link, LinkChange::Attach(1));
    assert_eq!(fx.live_move, Some((None, Some(Transport::WebSocket))));
    let fx = rig.heartbeat(WS);
    assert!(fx.reply.is_some());
    assert!(fx.publish.is_none() && !fx.persist && fx.history.is_empty());
    assert_eq!(fx.link, LinkChange::Keep);
    assert_eq!(fx.last_seq, Some(2));
}

#[test]
fn rule_2_full_state_after_a_gap_and_never_twice_while_it_is_on_its_way() {
    let mut rig = Rig::managed();
    rig.hello(WS);
    rig.seq += 3;
    assert!(Rig::reply(rig.heartbeat(WS)).report_full_state, "a gap");
    assert!(
        !Rig::reply(rig.heartbeat(WS)).report_full_state,
        "no ping-pong while the full report is on its way"
    );
    assert!(!Rig::reply(rig.hello(WS)).report_full_state);
}

#[test]
fn rule_2_missing_state_is_asked_for_once_per_connection() {
    let mut rig = Rig::managed();
    assert!(
        Rig::reply(rig.heartbeat(WS)).report_full_state,
        "no description yet"
    );
    assert!(!Rig::reply(rig.heartbeat(WS)).report_full_state);
    rig.step(Event::ConnectionClosed {
        conn: 1,
        reason: "gone".into(),
    });
    assert!(Rig::reply(rig.heartbeat(WS2)).report_full_state);
}

#[test]
fn rule_3_settings_and_own_telemetry_once_per_connection() {
    let mut rig = Rig::managed();
    let first = Rig::reply(rig.hello(WS));
    assert_eq!(first.heartbeat_interval_seconds, Some(15));
    assert_eq!(first.capabilities, Some(SERVER_CAPABILITIES));
    let second = Rig::reply(rig.heartbeat(WS));
    assert_eq!(second.heartbeat_interval_seconds, None);
    rig.step(Event::ConnectionClosed {
        conn: 1,
        reason: "gone".into(),
    });
    assert_eq!(
        Rig::reply(rig.hello(WS2)).heartbeat_interval_seconds,
        Some(15)
    );
    let mut rig = Rig::managed();
    let fx = rig.send(WS, |r| {
        r.description = Some(description());
        r.capabilities = caps() | Caps::REPORTS_OWN_METRICS;
    });
    let own = Rig::reply(fx).own_telemetry.expect("offered");
    assert_eq!(own.metrics.as_deref(), Some("http://otlp:4318"));
}

#[test]
fn rule_4_a_configuration_goes_out_once_per_connection_and_never_a_reported_hash() {
    let mut rig = Rig::managed();
    rig.hello(WS);
    let v = version(1, "receivers: {otlp: {}}");
    let fx = rig.step(Event::Direct(Directive {
        version: Some(v.clone()),
        ..Directive::default()
    }));
    let pushed = fx.push.expect("pushed at once over WebSocket");
    assert_eq!(pushed.remote_config.map(|o| o.hash), Some(v.hash.clone()));
    assert_eq!(rig.status(), Status::Configuring);
    assert!(
        Rig::reply(rig.heartbeat(WS)).remote_config.is_none(),
        "once per connection"
    );
    rig.step(Event::ConnectionClosed {
        conn: 1,
        reason: "gone".into(),
    });
    assert!(
        Rig::reply(rig.hello(WS2)).remote_config.is_some(),
        "a reconnecting agent that never confirmed gets it again"
    );
    rig.send(WS2, applied(&v.hash));
    assert_eq!(rig.status(), Status::Connected);
    rig.step(Event::ConnectionClosed {
        conn: 2,
        reason: "gone".into(),
    });
    assert!(
        Rig::reply(rig.hello(WS)).remote_config.is_none(),
        "never a hash the agent reported"
    );
}

#[test]
fn rule_4_a_polling_agent_takes_its_offer_with_the_next_poll() {
    let mut rig = Rig::managed();
    rig.hello(Via::Http);
    let v = version(1, "receivers: {otlp: {}}");
    let fx = rig.step(Event::Direct(Directive {
        version: Some(v.clone()),
        ..Directive::default()
    }));
    assert!(fx.push.is_none());
    let offer = Rig::reply(rig.heartbeat(Via::Http)).remote_config;
    assert_eq!(offer.map(|o| o.hash), Some(v.hash.clone()));
}

#[test]
fn rule_4_a_failed_hash_is_sent_again_only_when_an_admin_asks() {
    let mut rig = Rig::managed();
    rig.hello(WS);
    let v = version(1, "receivers: {otlp: {}}");
    rig.step(Event::Direct(Directive {
        version: Some(v.clone()),
        ..Directive::default()
    }));
    rig.send(WS, failed(&v.hash));
    assert_eq!(rig.status(), Status::Error);
    assert!(Rig::reply(rig.heartbeat(WS)).remote_config.is_none());
    let fx = rig.step(Event::RetryConfig);
    assert_eq!(fx.outcome, Some(Ok(())));
    assert!(fx.push.and_then(|p| p.remote_config).is_some());
    let mut other = Rig::managed();
    other.hello(WS);
    assert!(matches!(
        other.step(Event::RetryConfig).outcome,
        Some(Err(_))
    ));
}

#[test]
fn rule_4_a_package_is_offered_once_with_its_download_url() {
    let mut rig = Rig::managed();
    rig.send(WS, |r| {
        r.description = Some(description());
        r.capabilities = caps() | Caps::ACCEPTS_PACKAGES;
    });
    let package = Arc::new(Package {
        name: String::new(),
        version: "v0.116.0".into(),
        platform: String::new(),
        arch: String::new(),
        sha256: ContentHash(vec![7; 32]),
        size: 1,
        created_at: rig.now,
    });
    let fx = rig.step(Event::Direct(Directive {
        package: Some(package.clone()),
        ..Directive::default()
    }));
    let offer = fx.push.and_then(|p| p.packages).expect("offered");
    assert_eq!(
        offer.download_url,
        format!("http://corral:4320/v1/packages/{}", "07".repeat(32))
    );
    assert_eq!(rig.status(), Status::Upgrading);
    let again = rig.send(WS, |r| r.capabilities = caps() | Caps::ACCEPTS_PACKAGES);
    assert!(Rig::reply(again).packages.is_none());
}

use crate::core::packages::Package;

#[test]
fn rule_5_goodbye_then_late_messages_change_nothing() {
    let mut rig = Rig::managed();
    rig.hello(WS);
    let fx = rig.send(WS, |r| r.disconnect = true);
    assert_eq!(
        fx.link,
        LinkChange::Detach,
        "the socket is let go before the reply"
    );
    assert!(fx.reply.is_some());
    assert_eq!(fx.watch, Some(None));
    assert_eq!(rig.status(), Status::Disconnected);
    rig.seq -= 1;
    let late = rig.heartbeat(WS);
    assert_eq!(late.reply, Some(ServerReply::default()));
    assert!(late.publish.is_none());
    assert_eq!(rig.status(), Status::Disconnected);
    rig.hello(WS2);
    assert_eq!(rig.status(), Status::Connected, "a restarted agent is back");
}

#[test]
fn rule_6_a_new_websocket_takes_over_and_moving_to_http_closes_the_socket() {
    let mut rig = Rig::managed();
    rig.hello(WS);
    let fx = rig.heartbeat(WS2);
    assert_eq!(fx.close.as_ref().map(|c| c.code), Some(CLOSE_NORMAL));
    assert_eq!(fx.link, LinkChange::Attach(2));
    assert!(
        Rig::reply(fx).heartbeat_interval_seconds.is_some(),
        "a new connection"
    );
    let fx = rig.heartbeat(Via::Http);
    assert_eq!(
        fx.close.as_ref().map(|c| c.reason.clone()),
        Some("agent moved to plain HTTP".into())
    );
    assert_eq!(fx.link, LinkChange::Poll);
    assert_eq!(
        fx.live_move,
        Some((Some(Transport::WebSocket), Some(Transport::Http)))
    );
    assert!(
        rig.step(Event::ConnectionClosed {
            conn: 2,
            reason: "old socket".into()
        })
        .publish
        .is_none(),
        "a connection it left closing changes nothing"
    );
}

#[test]
fn rule_7_restart_goes_alone_now_over_websocket_and_with_the_next_poll_over_http() {
    let mut rig = Rig::managed();
    rig.hello(WS);
    let fx = rig.step(Event::Restart);
    assert_eq!(fx.outcome, Some(Ok(())));
    assert!(
        fx.push
            .is_some_and(|p| p.restart && p.remote_config.is_none())
    );

    let mut rig = Rig::managed();
    rig.hello(Via::Http);
    rig.step(Event::Direct(Directive {
        version: Some(version(1, "receivers: {otlp: {}}")),
        ..Directive::default()
    }));
    assert_eq!(rig.step(Event::Restart).outcome, Some(Ok(())));
    let reply = Rig::reply(rig.heartbeat(Via::Http));
    assert!(reply.restart && reply.remote_config.is_none(), "alone");
    let reply = Rig::reply(rig.heartbeat(Via::Http));
    assert!(
        !reply.restart && reply.remote_config.is_some(),
        "the offer follows"
    );

    let mut offline = Rig::managed();
    assert!(matches!(offline.step(Event::Restart).outcome, Some(Err(_))));
}

#[test]
fn rule_8_silence_takes_the_agent_offline_after_its_grace_period() {
    let mut rig = Rig::managed();
    let fx = rig.hello(WS);
    assert_eq!(fx.watch, Some(Some(Duration::from_secs(15).mul_f64(2.5))));
    let heard = rig.now;
    rig.later(10);
    let fx = rig.step(Event::Silence { last_seen: heard });
    assert_eq!(
        fx.watch,
        Some(Some(rig.session.grace())),
        "not yet: watched again"
    );
    assert_eq!(rig.status(), Status::Connected);
    rig.later(30);
    let fx = rig.step(Event::Silence { last_seen: heard });
    assert_eq!(fx.close.map(|c| c.code), Some(CLOSE_GOING_AWAY));
    assert_eq!(rig.status(), Status::Disconnected);
    assert!(
        rig.session
            .record()
            .status_reason
            .starts_with("no message for 40s")
    );
}

#[test]
fn rule_8_heartbeats_the_transport_answered_count_as_heard() {
    let mut rig = Rig::managed();
    rig.hello(WS);
    rig.later(30);
    let answered = rig.now;
    rig.step(Event::Answered {
        last_seq: Some(5),
        gap: Some(Duration::from_secs(15)),
        last_seen: answered,
    });
    rig.later(10);
    rig.step(Event::Silence {
        last_seen: answered,
    });
    assert_eq!(rig.status(), Status::Connected);
    rig.seq = 5;
    assert!(
        !Rig::reply(rig.heartbeat(WS)).report_full_state,
        "the numbering goes on from the answered ones"
    );
}

#[test]
fn rule_9_discovered_and_registered_agents_get_no_configuration_or_command() {
    for state in [AdminState::Discovered, AdminState::Registered] {
        let mut rig = Rig::new(state);
        let reply = Rig::reply(rig.hello(WS));
        assert_eq!(
            reply.heartbeat_interval_seconds.is_some(),
            state == AdminState::Registered,
            "{state}: settings only once admitted"
        );
        let fx = rig.step(Event::Direct(Directive {
            version: Some(version(1, "receivers: {otlp: {}}")),
            ..Directive::default()
        }));
        assert!(fx.push.is_none(), "{state}");
        assert!(Rig::reply(rig.heartbeat(WS)).remote_config.is_none());
        assert!(matches!(rig.step(Event::Restart).outcome, Some(Err(_))));
        assert_eq!(
            rig.status(),
            Status::Connected,
            "{state}: its status is tracked"
        );
    }
}

#[test]
fn rule_9_becoming_managed_sends_what_is_due() {
    let mut rig = Rig::new(AdminState::Registered);
    rig.hello(WS);
    rig.step(Event::Direct(Directive {
        version: Some(version(1, "receivers: {otlp: {}}")),
        ..Directive::default()
    }));
    let fx = rig.step(Event::RequestAdminState("managed"));
    assert_eq!(
        fx.admin_move,
        Some((Some(AdminState::Registered), Some(AdminState::Managed)))
    );
    assert!(fx.persist);
    assert!(fx.push.and_then(|p| p.remote_config).is_some());
}

#[test]
fn rule_9_ignored_agents_are_answered_minimally_and_nothing_is_kept() {
    let mut rig = Rig::new(AdminState::Ignored);
    let fx = rig.hello(WS);
    assert!(
        fx.persist,
        "ignored on first contact: what it said then is kept, and the decision"
    );
    let fx = rig.send(WS, |r| {
        r.description = Some(AgentDescription::default());
    });
    assert!(fx.publish.is_none() && fx.link == LinkChange::Keep);
    assert_eq!(
        fx.reply,
        Some(ServerReply {
            capabilities: Some(SERVER_CAPABILITIES),
            ..ServerReply::default()
        })
    );
    assert!(
        !rig.session.record().description.identifying.is_empty(),
        "nothing it says later is kept"
    );
    assert_eq!(rig.session.quiet_after(), None);
    rig.session.config = Arc::new(SessionConfig {
        refuse_ignored: true,
        ..(*rig.session.config).clone()
    });
    let fx = rig.hello(WS);
    assert!(Rig::reply(fx).error.is_some());
    let fx = rig.hello(WS);
    assert_eq!(fx.then_close.map(|c| c.code), Some(CLOSE_POLICY));
}

#[test]
fn rule_9_a_pre_registered_agent_is_admitted_when_it_first_speaks() {
    let mut rig = Rig::new(AdminState::NotFound);
    let fx = rig.hello(WS);
    assert_eq!(
        fx.admin_move,
        Some((Some(AdminState::NotFound), Some(AdminState::Managed)))
    );
    assert!(fx.persist);
    assert_eq!(rig.session.record().admin_state, AdminState::Managed);
}

#[test]
fn rule_9_forget_closes_and_ends_the_session() {
    let mut rig = Rig::managed();
    rig.hello(WS);
    let fx = rig.step(Event::Forget);
    assert!(fx.stop);
    assert_eq!(fx.close.map(|c| c.reason), Some("agent deleted".into()));
    assert_eq!(fx.status_moves, vec![(Some(Status::Connected), None)]);
    assert_eq!(fx.admin_move, Some((Some(AdminState::Managed), None)));
    assert_eq!(fx.live_move, Some((Some(Transport::WebSocket), None)));
}

#[test]
fn rule_9_an_admin_disconnect_closes_the_socket_and_the_agent_can_come_back() {
    let mut rig = Rig::managed();
    rig.hello(WS);
    let fx = rig.step(Event::Disconnect);
    assert_eq!(fx.outcome, Some(Ok(())));
    assert_eq!(fx.close.map(|c| c.code), Some(CLOSE_NORMAL));
    assert_eq!(rig.status(), Status::Disconnected);
    assert!(matches!(rig.step(Event::Disconnect).outcome, Some(Err(_))));
    rig.hello(WS2);
    assert_eq!(rig.status(), Status::Connected);
}

#[test]
fn rule_10_the_transport_answers_heartbeats_only_while_nothing_is_due() {
    let mut rig = Rig::managed();
    assert_eq!(rig.session.quiet_after(), None, "not connected");
    rig.hello(WS);
    assert_eq!(rig.session.quiet_after(), Some(1));
    rig.step(Event::Direct(Directive {
        version: Some(version(1, "receivers: {otlp: {}}")),
        ..Directive::default()
    }));
    rig.heartbeat(WS);
    assert_eq!(rig.session.quiet_after(), Some(2), "the offer went out");

    // Over plain HTTP the same: quiet until something is due, which waits for a poll the
    // session sees.
    for via in [WS, Via::Http] {
        let mut rig = Rig::managed();
        rig.hello(via);
        assert_eq!(rig.session.quiet_after(), Some(1), "{via:?}");
        // What the transport answers is what the session would have.
        assert_eq!(Rig::reply(rig.heartbeat(via)), quiet_reply(), "{via:?}");
        assert_eq!(rig.session.quiet_after(), Some(2), "{via:?}");
        rig.step(Event::Direct(Directive {
            version: Some(version(1, "receivers: {otlp: {}}")),
            ..Directive::default()
        }));
        if via == Via::Http {
            assert_eq!(
                rig.session.quiet_after(),
                None,
                "an offer waits for the poll"
            );
            assert!(Rig::reply(rig.heartbeat(via)).remote_config.is_some());
        }
        assert_eq!(
            rig.session.quiet_after(),
            Some(rig.seq),
            "{via:?}: the offer went out"
        );
        if via == Via::Http {
            rig.step(Event::Restart);
            assert_eq!(
                rig.session.quiet_after(),
                None,
                "a restart waits for the poll"
            );
        }
    }
    // An agent that does not take our interval is heard by the session until it has learned
    // the agent's pace from two gaps: only the session learns a gap at once.
    let alone = caps().difference(Caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS);
    let mut rig = Rig::managed();
    rig.send(Via::Http, |r| {
        r.description = Some(description());
        r.capabilities = alone;
    });
    for poll in 0..3 {
        assert_eq!(rig.session.quiet_after(), None, "after {poll} polls");
        rig.later(5);
        rig.send(Via::Http, |r| r.capabilities = alone);
    }
    assert_eq!(rig.session.quiet_after(), Some(4));
    assert_eq!(rig.session.grace(), Duration::from_millis(12_500));
    // A poll while the agent's WebSocket is attached is not quiet on that link.
    let mut rig = Rig::managed();
    rig.hello(WS);
    let fx = rig.heartbeat(Via::Http);
    assert!(
        fx.close.is_some(),
        "the session hears the move and closes the socket"
    );
    assert!(Rig::reply(fx).heartbeat_interval_seconds.is_some());
    assert_eq!(rig.session.quiet_after(), Some(2));
    let fx = rig.send(Via::Http, |r| r.disconnect = true);
    assert_eq!(
        fx.link,
        LinkChange::Detach,
        "a goodbye lets go of the polling link"
    );
    assert_eq!(rig.session.quiet_after(), None);
}

#[derive(Clone, Debug)]
enum Op {
    Hello(u8),
    Heartbeat(u8),
    Gap(u8),
    Goodbye(u8),
    Applied,
    Failed,
    Closed(u8),
    Direct(u8),
    Admin(u8),
    Silence(u8),
    Restart,
    Retry,
    Disconnect,
    Overflowed,
    Answered(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3u8).prop_map(Op::Hello),
        (0..3u8).prop_map(Op::Heartbeat),
        (0..3u8).prop_map(Op::Gap),
        (0..3u8).prop_map(Op::Goodbye),
        Just(Op::Applied),
        Just(Op::Failed),
        (0..3u8).prop_map(Op::Closed),
        (0..3u8).prop_map(Op::Direct),
        (0..6u8).prop_map(Op::Admin),
        (0..60u8).prop_map(Op::Silence),
        Just(Op::Restart),
        Just(Op::Retry),
        Just(Op::Disconnect),
        Just(Op::Overflowed),
        (0..3u8).prop_map(Op::Answered),
    ]
}

fn via(n: u8) -> Via {
    match n {
        0 => Via::Http,
        n => Via::WebSocket(u64::from(n)),
    }
}

proptest! {
    /// Whatever arrives in whatever order: only allowed status moves, never an offer of a
    /// hash the agent reported unless an admin asked, never an offer to an unmanaged agent,
    /// and never two offers of one hash on one connection.
    #[test]
    fn no_sequence_breaks_the_rules(ops in proptest::collection::vec(op(), 1..80)) {
        let versions = [version(1, "receivers: {otlp: {}}"), version(2, "exporters: {debug: {}}")];
        let mut rig = Rig::managed();
        let mut offered_on: Option<(Option<Via>, ContentHash)> = None;
        // What the gauges count for this agent, from the moves the session reported.
        let mut counted_status: Option<Status> = None;
        let mut counted_admin = Some(AdminState::Managed);
        // An admin's retry holds until the offer goes out (with the next poll over HTTP).
        let mut retried = false;
        for op in ops {
            let before = rig.session.record().clone();
            let fx = match op.clone() {
                Op::Hello(n) => rig.hello(via(n)),
                Op::Heartbeat(n) => rig.heartbeat(via(n)),
                Op::Gap(n) => { rig.seq += 2; rig.heartbeat(via(n)) }
                Op::Goodbye(n) => rig.send(via(n), |r| r.disconnect = true),
                Op::Applied | Op::Failed => {
                    let hash = before.offered_config_hash.clone().unwrap_or_default();
                    let on = rig.session.via.unwrap_or(Via::Http);
                    if matches!(op, Op::Applied) { rig.send(on, applied(&hash)) } else { rig.send(on, failed(&hash)) }
                }
                Op::Closed(n) => rig.step(Event::ConnectionClosed { conn: u64::from(n), reason: "closed".into() }),
                Op::Direct(n) => rig.step(Event::Direct(Directive {
                    version: versions.get(usize::from(n)).cloned(),
                    ..Directive::default()
                })),
                Op::Admin(n) => rig.step(Event::RequestAdminState(STATE_NAMES[usize::from(n)])),
                Op::Disconnect => rig.step(Event::Disconnect),
                Op::Overflowed => rig.step(Event::Overflowed),
                Op::Answered(n) => {
                    rig.seq += u64::from(n);
                    let last_seen = rig.now;
                    rig.step(Event::Answered { last_seq: Some(rig.seq), gap: None, last_seen })
                }
                Op::Silence(secs) => { rig.later(i64::from(secs)); let seen = rig.now - chrono::Duration::seconds(i64::from(secs)); rig.step(Event::Silence { last_seen: seen }) }
                Op::Restart => rig.step(Event::Restart),
                Op::Retry => {
                    let fx = rig.step(Event::RetryConfig);
                    retried |= fx.outcome == Some(Ok(()));
                    fx
                }
            };
            for (from, to) in &fx.status_moves {
                prop_assert_eq!(*from, counted_status, "a status move from what is not counted");
                counted_status = *to;
            }
            if let Some((from, to)) = fx.admin_move {
                prop_assert_eq!(from, counted_admin);
                counted_admin = to;
            }
            prop_assert_eq!(counted_admin, Some(rig.session.record().admin_state));
            if counted_status.is_some() {
                prop_assert_eq!(counted_status, Some(rig.session.record().status));
            }
            let goodbye = matches!(op, Op::Goodbye(_));
            for entry in &fx.history {
                prop_assert!(entry.from.is_none_or(|from| crate::core::status::allowed(from, entry.to)), "{entry:?}");
            }
            // A new connection or polling session may be offered again what the last one was.
            if matches!(fx.link, LinkChange::Attach(_)) || fx.live_move.is_some_and(|(_, to)| to.is_some()) {
                offered_on = None;
            }
            for offer in [fx.reply.as_ref(), fx.push.as_ref()].into_iter().flatten().filter_map(|r| r.remote_config.as_ref()) {
                prop_assert!(!goodbye, "nothing is offered to an agent saying goodbye");
                prop_assert!(before.admin_state.is_managed() || rig.session.record().admin_state.is_managed());
                let after = rig.session.record().clone();
                let reported = after.remote_config.as_ref().map(|rc| &rc.hash);
                prop_assert!(retried || reported != Some(&offer.hash), "re-sent a reported hash");
                let here = (rig.session.via, offer.hash.clone());
                prop_assert!(retried || offered_on.as_ref() != Some(&here), "offered twice on one connection");
                offered_on = Some(here);
                retried = false;
            }
        }
    }
}

fn yaml(body: String) -> ConfigMap {
    ConfigMap {
        files: BTreeMap::from([(
            String::new(),
            ConfigFile {
                body: Bytes::from(body),
                content_type: "text/yaml".into(),
            },
        )]),
    }
}

/// An effective config is stored once per change, the one it replaces released (the store
/// keeps it only while some agent refers to it), and one over the limit kept as its size.
#[test]
fn effective_configs_are_stored_on_change_and_the_replaced_one_released() {
    let mut rig = Rig::managed();
    let first = yaml("receivers: {otlp: {}}\n".into());
    let fx = rig.send(WS, |r| {
        r.description = Some(description());
        r.effective_config = Some(first.clone());
    });
    assert_eq!(
        fx.effective_config,
        Some((first.hash(), KeptConfig::Whole(first.clone())))
    );
    assert_eq!(fx.released_config, None);
    let fx = rig.send(WS, |r| r.effective_config = Some(first.clone()));
    assert_eq!((fx.effective_config, fx.released_config), (None, None));

    let large = yaml(format!(
        "processors: {{batch: {{}}}}\n#{}\n",
        "x".repeat(2000)
    ));
    let fx = rig.send(WS, |r| r.effective_config = Some(large.clone()));
    let bytes = large.total_bytes() as u64;
    assert_eq!(
        fx.effective_config,
        Some((large.hash(), KeptConfig::TooLarge { bytes }))
    );
    assert_eq!(fx.released_config, Some(first.hash()));
    assert_eq!(
        rig.session.record().effective_config_hash,
        Some(large.hash())
    );
}
