//! One agent's OpAMP session as a pure state machine: [`AgentSession::step`] takes an
//! [`Event`] and the time, and returns the [`Effects`] to carry out, as plain data. The agent's
//! actor (`crate::tasks::agent`) feeds it events and carries the effects out; it decides
//! nothing itself. No IO, no clock, no prost.
//!
//! Rules, each with a named test in `tests.rs`:
//! 1. Every report is answered on the transport it came on; a heartbeat on a known connection
//!    that changes nothing publishes and persists nothing.
//! 2. `ReportFullState` is asked after a sequence gap (unless the message is itself full) or
//!    once per connection when state the capabilities promise is missing, never again while a
//!    full report is on its way (no ping-pong).
//! 3. Connection settings (heartbeat interval) and own-telemetry destinations are offered
//!    once per connection, to admitted agents that accept them.
//! 4. A configuration or package the directive wants goes out at most once per connection,
//!    never a hash the agent already reported (applied or failed) unless an admin asks; over
//!    WebSocket at once, over HTTP with the next poll. A reconnecting agent that never
//!    confirmed an offer gets it again.
//! 5. A goodbye (`agent_disconnect`) marks the agent disconnected and lets go of its socket
//!    before the reply; a message numbered at or before the goodbye that arrives after it is
//!    answered and changes nothing.
//! 6. A WebSocket that continues an agent's numbering takes over from the old one, which is
//!    closed; an agent moving to plain HTTP has its WebSocket closed.
//! 7. Restart goes alone in its message: now over WebSocket, with the next poll over HTTP;
//!    offers wait for the poll after it.
//! 8. Silence: an agent is watched for a grace period of 2.5 × its expected interval (HTTP
//!    always; WebSocket when it reports heartbeats); silence longer than that takes it
//!    offline and closes its socket; a heartbeat the transport answered counts as heard.
//! 9. The admin state gates what reaches the agent: only managed agents get configurations,
//!    packages and commands; discovered agents get no connection settings either; ignored
//!    agents are answered minimally (or refused) and nothing they send is kept.
//! 10. While nothing but an echo is due, the session lets the transport answer the agent's next
//!     bare heartbeats on its WebSocket, or its next bare polls over plain HTTP, by itself
//!     ([`AgentSession::quiet_after`]), with [`quiet_reply`].
//!
//! The per-connection protocol state is one struct, [`PerConnection`], reset in one place.

mod liveness;
mod offers;
mod sequence;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use liveness::{GRACE_FACTOR, Liveness};
pub use sequence::FullStateTracker;

use crate::core::config::ComponentSet;
use crate::core::domain::{
    AgentCapabilities as Caps, AgentRecord, AgentReport, ContentHash, HISTORY_LIMIT, HistoryEntry,
    KeptConfig, MAX_TEXT, OwnTelemetry, RemoteConfigStatus, ReplyError, ServerCapabilities,
    ServerReply, Transport, cut_text,
};
use crate::core::lifecycle::{
    AdminState, Admission, MoveRefused, Retention, on_first_contact, on_retention, request,
};
use crate::core::rollout::Directive;
use crate::core::status::{ConfigProgress, Connection, Observation, Status, StatusMachine, derive};

/// What Corral offers every agent in its replies.
pub const SERVER_CAPABILITIES: ServerCapabilities = ServerCapabilities::ACCEPTS_STATUS
    .union(ServerCapabilities::OFFERS_REMOTE_CONFIG)
    .union(ServerCapabilities::ACCEPTS_EFFECTIVE_CONFIG)
    .union(ServerCapabilities::OFFERS_PACKAGES)
    .union(ServerCapabilities::ACCEPTS_PACKAGES_STATUS)
    .union(ServerCapabilities::OFFERS_CONNECTION_SETTINGS);

/// What agents are told to expect when they do not accept our connection settings.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// WebSocket close codes the session asks for.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;

/// Identifies one WebSocket connection for as long as the process runs. Never 0 or
/// [`POLLING`].
pub type ConnId = u64;

/// The link of an agent polling over plain HTTP: it has no connection of its own.
pub const POLLING: ConnId = ConnId::MAX;

/// What a quiet session answers a bare heartbeat with (rule 10): the transport sends the same
/// when it answers one by itself.
pub fn quiet_reply() -> ServerReply {
    ServerReply {
        capabilities: Some(SERVER_CAPABILITIES),
        ..ServerReply::default()
    }
}

/// What every session shares: the server's settings.
#[derive(Clone, Debug, Default)]
pub struct SessionConfig {
    pub heartbeat_interval: Duration,
    /// The base URL agents download packages from; else the address they reached us at.
    pub public_url: Option<String>,
    /// Where agents that can should send their own telemetry.
    pub own_telemetry: OwnTelemetry,
    /// Ignored agents are refused with an error instead of answered minimally.
    pub refuse_ignored: bool,
    /// How a pre-registered agent is admitted when it first speaks.
    pub admission: Admission,
    /// Effective configs larger than this are kept as their size only.
    pub max_effective_config: usize,
}

/// The transport a report came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    WebSocket(ConnId),
    Http,
}

impl Via {
    pub fn transport(self) -> Transport {
        match self {
            Via::WebSocket(_) => Transport::WebSocket,
            Via::Http => Transport::Http,
        }
    }
}

/// One report from the agent, with what the session needs to know around it.
#[derive(Debug)]
pub struct Inbound {
    pub report: AgentReport,
    pub via: Via,
    /// The server just chose this agent's uid: tell it in the reply.
    pub assigned: bool,
    /// How the agent reached us (`http://host:port`), for the download URLs we give it.
    pub origin: Option<Arc<str>>,
    /// The component set the agent reported by hash is already known to the server.
    pub components_known: bool,
}

#[derive(Debug)]
pub enum Event {
    Report(Box<Inbound>),
    ConnectionClosed {
        conn: ConnId,
        reason: String,
    },
    /// The agent's WebSocket could not take a message: its queue is full.
    Overflowed,
    /// What the rollout controller wants of this agent now.
    Direct(Directive),
    SetLabels(BTreeMap<String, String>),
    /// An admin asks to move the agent to the admin state of this name.
    RequestAdminState(&'static str),
    /// Retention: the agent is deleted, or returned to `not_found`, if it has been
    /// disconnected longer than `after` (counted from `since` at the earliest: this process's
    /// start, since a restored agent's stored last-seen time may be old).
    Retain {
        after: Duration,
        since: DateTime<Utc>,
    },
    /// An admin asks the agent to restart.
    Restart,
    /// An admin asks to send again the configuration the agent reported FAILED.
    RetryConfig,
    /// An admin asks to drop the agent's connection so that it reconnects.
    Disconnect,
    /// The fleet's watch found nothing heard for the grace period; `last_seen` counts the
    /// heartbeats the transport answered.
    Silence {
        last_seen: DateTime<Utc>,
    },
    /// The transport answered bare heartbeats up to `last_seq` while the session was quiet;
    /// `gap` is the longest between them, `last_seen` when the agent was last heard.
    Answered {
        last_seq: Option<u64>,
        gap: Option<Duration>,
        last_seen: DateTime<Utc>,
    },
    /// The server is stopping.
    Shutdown,
    /// An admin deleted the agent: the session ends.
    Forget,
}

/// A WebSocket to close, with its code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

/// What happens to the agent's WebSocket link, after any close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkChange {
    #[default]
    Keep,
    /// Attach the connection the report came on.
    Attach(ConnId),
    /// The agent polls over plain HTTP now (letting go of any WebSocket, without closing it).
    Poll,
    /// Let go of the attached connection (without closing it).
    Detach,
}

/// What the shell carries out after one step, in this order: close the attached WebSocket,
/// change the link, publish and persist, count, watch, then reply (and close after it) and
/// push.
#[derive(Debug, Default)]
pub struct Effects {
    /// Close the WebSocket attached before this step.
    pub close: Option<Close>,
    pub link: LinkChange,
    /// The new record to publish; persisted when `persist`.
    pub publish: Option<Arc<AgentRecord>>,
    pub persist: bool,
    /// Status changes to append to the stored history (already in the record).
    pub history: Vec<HistoryEntry>,
    /// An effective config to store by its hash.
    pub effective_config: Option<(ContentHash, KeptConfig)>,
    /// The effective config the agent reported before: the store keeps it only while some
    /// agent refers to it.
    pub released_config: Option<ContentHash>,
    /// A component set to cache and store by its hash.
    pub component_set: Option<(ContentHash, ComponentSet)>,
    /// Gauge moves: status, admin state, live transport (`None` = not counted).
    pub status_moves: Vec<(Option<Status>, Option<Status>)>,
    pub admin_move: Option<(Option<AdminState>, Option<AdminState>)>,
    pub live_move: Option<(Option<Transport>, Option<Transport>)>,
    /// Watch for silence longer than this (`Some(None)`: stop watching).
    pub watch: Option<Option<Duration>>,
    /// The agent was heard at this time, and its last sequence number.
    pub seen: Option<DateTime<Utc>>,
    pub last_seq: Option<u64>,
    /// The answer to the report, on its transport.
    pub reply: Option<ServerReply>,
    /// Close the report's connection after the reply.
    pub then_close: Option<Close>,
    /// A message for the attached WebSocket now.
    pub push: Option<ServerReply>,
    /// The answer to an admin's request.
    pub outcome: Option<Result<(), Refused>>,
    /// Remove everything stored of the agent (after this step's other writes).
    pub delete: bool,
    /// The session is over (deleted).
    pub stop: bool,
}

/// Why an admin's request cannot be done, and for a move, the states it may move to instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub message: String,
    pub allowed: Option<Vec<&'static str>>,
}

impl From<String> for Refused {
    fn from(message: String) -> Self {
        Self {
            message,
            allowed: None,
        }
    }
}

impl From<&str> for Refused {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl From<MoveRefused> for Refused {
    fn from(refused: MoveRefused) -> Self {
        Self {
            message: refused.to_string(),
            allowed: Some(refused.allowed),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the session knows only for the current connection (WebSocket) or polling session
/// (HTTP). A new connection starts from `PerConnection::fresh`.
#[derive(Debug, Default)]
struct PerConnection {
    /// When the agent last sent a bare heartbeat, to learn its interval.
    last_heartbeat: Option<DateTime<Utc>>,
    offered_settings: bool,
    offered_config: bool,
    offered_package: bool,
    asked_components: bool,
}

#[derive(Debug)]
pub struct AgentSession {
    record: Arc<AgentRecord>,
    machine: StatusMachine,
    config: Arc<SessionConfig>,
    /// The transport the agent is live on, and its WebSocket if any.
    via: Option<Via>,
    conn: PerConnection,
    full_state: FullStateTracker,
    liveness: Liveness,
    last_heard: Option<DateTime<Utc>>,
    /// The fleet's silence watch looks at this agent.
    watched: bool,
    /// The sequence number of the agent's goodbye, to ignore messages it had queued before.
    said_goodbye_at: Option<u64>,
    directive: Directive,
    /// An admin asked to send the failed configuration once more.
    retry_failed: bool,
    /// A restart command waits for the agent's next poll.
    restart_pending: bool,
    origin: Option<Arc<str>>,
    /// The record has never been written.
    unsaved: bool,
}

impl AgentSession {
    /// A session for `record`: a new agent (`is_new`), or one read back from the store, which
    /// is not connected to this process yet.
    pub fn new(
        record: AgentRecord,
        is_new: bool,
        config: Arc<SessionConfig>,
        now: DateTime<Utc>,
    ) -> (Self, Effects) {
        let machine = if is_new {
            StatusMachine::default()
        } else {
            StatusMachine::resume(record.status, record.status_reason.clone())
        };
        let mut fx = Effects {
            admin_move: Some((None, Some(record.admin_state))),
            ..Effects::default()
        };
        if !is_new {
            fx.status_moves.push((None, Some(record.status)));
        }
        let mut session = Self {
            record: Arc::new(record),
            machine,
            config,
            via: None,
            conn: PerConnection::default(),
            full_state: FullStateTracker::default(),
            liveness: Liveness::new(DEFAULT_HEARTBEAT),
            last_heard: None,
            watched: false,
            said_goodbye_at: None,
            directive: Directive::default(),
            retry_failed: false,
            restart_pending: false,
            origin: None,
            unsaved: is_new,
        };
        if !is_new && session.record.status != Status::Disconnected {
            let mut rec = (*session.record).clone();
            session.settle(
                &mut rec,
                Connection::Lost("server restarted".into()),
                now,
                &mut fx,
            );
            session.publish(rec, true, &mut fx);
        }
        (session, fx)
    }

    pub fn record(&self) -> &Arc<AgentRecord> {
        &self.record
    }

    pub fn step(&mut self, event: Event, now: DateTime<Utc>) -> Effects {
        let mut fx = Effects::default();
        match event {
            Event::Report(inbound) => self.on_report(*inbound, now, &mut fx),
            Event::ConnectionClosed { conn, reason } => {
                if self.via == Some(Via::WebSocket(conn)) {
                    self.go_offline(None, reason, now, &mut fx);
                }
            }
            Event::Overflowed => {
                if matches!(self.via, Some(Via::WebSocket(_))) {
                    self.go_offline(
                        None,
                        "connection could not keep up with replies".into(),
                        now,
                        &mut fx,
                    );
                }
            }
            Event::Direct(directive) => self.on_directive(directive, now, &mut fx),
            Event::SetLabels(labels) => {
                let mut rec = (*self.record).clone();
                rec.labels = labels;
                self.publish(rec, true, &mut fx);
            }
            Event::RequestAdminState(name) => {
                let from = self.record.admin_state;
                fx.outcome = Some(match request(from, name) {
                    Ok(to) => {
                        self.set_admin_state(to, now, &mut fx);
                        Ok(())
                    }
                    // Asking for the state it is in changes nothing, and is no error.
                    Err(_) if from.as_str() == name => Ok(()),
                    Err(refused) => Err(refused.into()),
                });
            }
            Event::Retain { after, since } => self.retain(after, since, now, &mut fx),
            Event::Restart => fx.outcome = Some(self.restart(&mut fx).map_err(Refused::from)),
            Event::RetryConfig => {
                fx.outcome = Some(self.retry_config(now, &mut fx).map_err(Refused::from))
            }
            Event::Disconnect => {
                fx.outcome = Some(match self.via {
                    None => Err("the agent is not connected".into()),
                    Some(_) => {
                        let reason = "disconnected by an admin".to_string();
                        self.go_offline(Some(CLOSE_NORMAL), reason, now, &mut fx);
                        Ok(())
                    }
                });
            }
            Event::Silence { last_seen } => self.on_silence(last_seen, now, &mut fx),
            Event::Answered {
                last_seq,
                gap,
                last_seen,
            } => {
                if self.last_heard.is_some_and(|heard| heard < last_seen) {
                    self.last_heard = Some(last_seen);
                }
                if let Some(seq) = last_seq {
                    self.full_state.caught_up(seq);
                    // The next gap the session measures itself starts from its next heartbeat.
                    self.conn.last_heartbeat = None;
                }
                if let Some(gap) = gap {
                    self.liveness.record_gap(gap);
                }
            }
            Event::Shutdown => {
                if matches!(self.via, Some(Via::WebSocket(_))) {
                    fx.close = Some(Close {
                        code: CLOSE_GOING_AWAY,
                        reason: "server shutting down".into(),
                    });
                }
            }
            Event::Forget => self.forget(&mut fx),
        }
        fx
    }

    /// Ends the session of a deleted agent: its connection is closed, its gauges given back and
    /// everything stored of it removed.
    fn forget(&mut self, fx: &mut Effects) {
        if matches!(self.via, Some(Via::WebSocket(_))) {
            fx.close = Some(Close {
                code: CLOSE_NORMAL,
                reason: "agent deleted".into(),
            });
        }
        self.detach(fx);
        // A session that never settled (an agent ignored on first contact) was never counted.
        if let Some(status) = self.machine.status() {
            fx.status_moves.push((Some(status), None));
        }
        fx.admin_move = Some((Some(self.record.admin_state), None));
        fx.delete = true;
        fx.stop = true;
    }

    fn retain(
        &mut self,
        after: Duration,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) {
        let heard = self
            .last_heard
            .map_or(self.record.last_seen, |h| h.max(self.record.last_seen));
        let gone_for = (now - heard.max(since)).to_std().unwrap_or_default();
        if self.via.is_some() || self.record.status != Status::Disconnected || gone_for <= after {
            return;
        }
        match on_retention(self.record.admin_state, self.record.pre_registered) {
            Retention::Keep => {}
            Retention::NotFound => self.set_admin_state(AdminState::NotFound, now, fx),
            Retention::Delete => self.forget(fx),
        }
    }

    /// While nothing but an echo is due: the sequence number after which the transport may
    /// answer bare heartbeats (WebSocket) or polls (plain HTTP) by itself, with
    /// [`quiet_reply`]. Attached, greeted, the agent's interval known (accepted or learned),
    /// nothing to offer or ask, no restart or goodbye under way.
    pub fn quiet_after(&self) -> Option<u64> {
        let quiet = self
            .via
            .is_some_and(|via| self.record.transport == Some(via.transport()))
            && self.record.admin_state.is_tracked()
            && (self.conn.offered_settings || !self.record.admin_state.gets_settings())
            && !self.restart_pending
            && self.said_goodbye_at.is_none()
            && self.full_state.settled()
            && self.liveness.settled()
            && !missing_state(&self.record)
            && self.config_due(&self.record).is_none()
            && self.package_due(&self.record).is_none();
        if quiet {
            self.full_state.last_seq()
        } else {
            None
        }
    }

    /// The grace period of silence the agent is held to.
    pub fn grace(&self) -> Duration {
        self.liveness.grace()
    }

    fn on_report(&mut self, inbound: Inbound, now: DateTime<Utc>, fx: &mut Effects) {
        let Inbound {
            report,
            via,
            assigned,
            origin,
            components_known,
        } = inbound;
        if origin.is_some() {
            self.origin = origin;
        }
        fx.seen = Some(now);
        if self.record.admin_state == AdminState::Ignored {
            if self.unsaved {
                // Ignored when it first spoke (a rule, or a copy of an ignored agent): what it
                // said then is kept, so admins see what they ignore, and so is the decision.
                let mut rec = (*self.record).clone();
                rec.last_seen = now;
                merge(
                    &mut rec,
                    &report,
                    (components_known, self.config.max_effective_config),
                    fx,
                );
                self.publish(rec, true, fx);
            }
            self.answer_ignored(via, assigned, fx);
            return;
        }
        if self.is_late_after_goodbye(&report) {
            // Sent before the goodbye, delivered after it: answer, but the agent stays gone.
            fx.reply = Some(ServerReply::default());
            return;
        }
        self.said_goodbye_at = report.disconnect.then_some(report.sequence_num);
        let transport = via.transport();
        let fresh = self.attach(via, fx);
        if fresh {
            self.conn = PerConnection::default();
            self.full_state.reconnected();
            self.liveness.forget_gaps();
        }
        if report.is_heartbeat() {
            if let Some(prev) = self.conn.last_heartbeat {
                let gap = (now - prev).to_std().unwrap_or_default();
                // A gap longer than the grace period is no interval of a connected agent but a
                // step of the wall clock: learning it would leave silence unnoticed.
                if gap <= self.liveness.grace() {
                    self.liveness.record_gap(gap);
                }
            }
            self.conn.last_heartbeat = Some(now);
        }
        self.last_heard = Some(now);

        // A heartbeat on a known connection changes nothing that is published or stored.
        let unchanged = !fresh
            && !assigned
            && report.is_heartbeat()
            && report.capabilities == self.record.capabilities
            && self.record.transport == Some(transport);
        let managed = self.record.admin_state.is_managed();
        // A restart goes alone: offers wait for the polls after it.
        let restarting =
            self.restart_pending && transport == Transport::Http && managed && !report.disconnect;
        let mut offer = None;
        let mut packages = None;
        let report_full_state = if unchanged
            && (restarting
                || (self.config_due(&self.record).is_none()
                    && self.package_due(&self.record).is_none()))
        {
            self.full_state
                .observe(report.sequence_num, false, missing_state(&self.record))
        } else {
            let mut rec = (*self.record).clone();
            let mut persist = self.unsaved || fresh;
            if fresh {
                rec.connected_at = Some(now);
            }
            if rec.admin_state == AdminState::NotFound {
                // Pre-registered and speaking at last: admitted.
                let admitted =
                    on_first_contact(Some(rec.admin_state), self.config.admission, false);
                fx.admin_move = Some((Some(rec.admin_state), Some(admitted)));
                rec.admin_state = admitted;
                persist = true;
            }
            rec.last_seen = now;
            if rec.transport != Some(transport) {
                rec.transport = Some(transport);
                persist = true;
            }
            persist |= merge(
                &mut rec,
                &report,
                (components_known, self.config.max_effective_config),
                fx,
            );
            // Nothing goes out to an agent saying goodbye.
            if !restarting && !report.disconnect {
                offer = self.take_offer(&mut rec);
                packages = self.take_package_offer(&mut rec);
            }
            persist |= offer.is_some() || packages.is_some();
            let full = self.full_state.observe(
                report.sequence_num,
                report.description.is_some(),
                missing_state(&rec),
            );
            let connection = if report.disconnect {
                Connection::Lost("agent disconnected".into())
            } else {
                Connection::Live
            };
            persist |= self.settle(&mut rec, connection, now, fx);
            self.publish(rec, persist, fx);
            full
        };
        fx.last_seq = Some(report.sequence_num);

        let caps = self.record.capabilities;
        let admitted = self.record.admin_state.gets_settings();
        let accepts_settings = caps.contains(Caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS) && admitted;
        self.liveness
            .set_offered(accepts_settings.then_some(self.config.heartbeat_interval));
        let watched = transport == Transport::Http || caps.contains(Caps::REPORTS_HEARTBEAT);
        let grace = (watched && !report.disconnect).then(|| self.liveness.grace());
        self.watch(grace, fx);

        if restarting {
            self.restart_pending = false;
            fx.reply = Some(ServerReply {
                capabilities: Some(SERVER_CAPABILITIES),
                restart: true,
                ..ServerReply::default()
            });
            return;
        }
        let first_on_connection = !self.conn.offered_settings;
        let heartbeat_interval_seconds = (accepts_settings && first_on_connection)
            .then(|| self.config.heartbeat_interval.as_secs());
        let own_telemetry = self
            .own_telemetry_offer()
            .filter(|_| first_on_connection && admitted);
        self.conn.offered_settings = true;
        let report_available_components = self.wants_components(&report, components_known);
        fx.reply = Some(ServerReply {
            capabilities: Some(SERVER_CAPABILITIES),
            report_full_state,
            report_available_components,
            new_instance_uid: assigned.then_some(self.record.uid),
            heartbeat_interval_seconds,
            remote_config: offer,
            packages,
            own_telemetry,
            ..ServerReply::default()
        });
        // Let go of the socket before the goodbye's reply goes out: once the connection has
        // the reply, it must see that no actor will close it at shutdown.
        if report.disconnect {
            self.detach(fx);
        }
    }

    /// An ignored agent is answered minimally (or refused) and nothing it says is kept.
    fn answer_ignored(&self, via: Via, assigned: bool, fx: &mut Effects) {
        if self.config.refuse_ignored {
            fx.reply = Some(ServerReply {
                error: Some(ReplyError::BadRequest(
                    "this agent is ignored by the server".into(),
                )),
                ..ServerReply::default()
            });
            if let Via::WebSocket(_) = via {
                fx.then_close = Some(Close {
                    code: CLOSE_POLICY,
                    reason: "agent is ignored".into(),
                });
            }
            return;
        }
        fx.reply = Some(ServerReply {
            capabilities: Some(SERVER_CAPABILITIES),
            new_instance_uid: assigned.then_some(self.record.uid),
            ..ServerReply::default()
        });
    }

    fn on_directive(&mut self, directive: Directive, now: DateTime<Utc>, fx: &mut Effects) {
        if directive == self.directive && !self.retry_failed {
            return;
        }
        if self.record.admin_state == AdminState::Ignored {
            // Nothing of an ignored agent changes but its connection.
            self.directive = directive;
            return;
        }
        if directive.version != self.directive.version {
            // A retry is for the version that failed, not for whatever comes next.
            self.retry_failed = false;
        }
        self.directive = directive;
        self.offer_now(now, fx);
    }

    /// Settles the status after a change of directive or admin state, and pushes over the
    /// agent's WebSocket whatever became due (a polling agent takes it with its next poll).
    fn offer_now(&mut self, now: DateTime<Utc>, fx: &mut Effects) {
        let mut rec = (*self.record).clone();
        let (offer, packages) = if matches!(self.via, Some(Via::WebSocket(_))) {
            (self.take_offer(&mut rec), self.take_package_offer(&mut rec))
        } else {
            (None, None)
        };
        let connection = match self.via {
            Some(_) => Connection::Live,
            None => Connection::Lost(rec.status_reason.clone()),
        };
        let persist =
            self.settle(&mut rec, connection, now, fx) | offer.is_some() | packages.is_some();
        self.publish(rec, persist, fx);
        if offer.is_some() || packages.is_some() {
            fx.push = Some(ServerReply {
                capabilities: Some(SERVER_CAPABILITIES),
                remote_config: offer,
                packages,
                ..ServerReply::default()
            });
        }
    }

    fn set_admin_state(&mut self, state: AdminState, now: DateTime<Utc>, fx: &mut Effects) {
        let from = self.record.admin_state;
        if from == state {
            return;
        }
        let mut rec = (*self.record).clone();
        rec.admin_state = state;
        fx.admin_move = Some((Some(from), Some(state)));
        self.publish(rec, true, fx);
        if state.gets_settings() && !from.gets_settings() {
            // Admitted on an open connection: its next reply offers the connection settings.
            self.conn.offered_settings = false;
        }
        if !state.is_managed() {
            self.restart_pending = false;
            self.retry_failed = false;
        }
        self.offer_now(now, fx);
    }

    fn restart(&mut self, fx: &mut Effects) -> Result<(), String> {
        if !self.record.admin_state.is_managed() {
            return Err(format!(
                "the agent is {}, not managed",
                self.record.admin_state
            ));
        }
        if !self
            .record
            .capabilities
            .contains(Caps::ACCEPTS_RESTART_COMMAND)
        {
            return Err("the agent does not accept the restart command".into());
        }
        match self.via {
            None => Err("the agent is not connected".into()),
            Some(Via::WebSocket(_)) => {
                fx.push = Some(ServerReply {
                    capabilities: Some(SERVER_CAPABILITIES),
                    restart: true,
                    ..ServerReply::default()
                });
                Ok(())
            }
            Some(Via::Http) => {
                self.restart_pending = true;
                Ok(())
            }
        }
    }

    fn retry_config(&mut self, now: DateTime<Utc>, fx: &mut Effects) -> Result<(), String> {
        if !self.record.admin_state.is_managed() {
            return Err(format!(
                "the agent is {}, not managed",
                self.record.admin_state
            ));
        }
        let failed_target = self.directive.version.as_ref().is_some_and(|v| {
            self.record
                .remote_config
                .as_ref()
                .is_some_and(|rc| rc.hash == v.hash && rc.status == RemoteConfigStatus::Failed)
        });
        if !failed_target {
            return Err("the agent has not reported its assigned configuration failed".into());
        }
        self.retry_failed = true;
        self.on_directive(self.directive.clone(), now, fx);
        Ok(())
    }

    fn on_silence(&mut self, last_seen: DateTime<Utc>, now: DateTime<Utc>, fx: &mut Effects) {
        if self.via.is_none() || !self.watched {
            // Went offline, or stopped being watched, while the watch's word was on its way.
            return;
        }
        // Heartbeats the transport answered count as heard.
        let grace = self.liveness.grace();
        let heard = (now - last_seen).to_std().ok();
        if heard.is_some_and(|ago| ago < grace) {
            self.watch(Some(grace), fx);
            return;
        }
        let expected = self.liveness.expected_interval().as_secs_f64();
        let silent = self.last_heard.map_or(0.0, |t| {
            (now - t).to_std().unwrap_or_default().as_secs_f64()
        });
        let reason = format!("no message for {silent:.0}s (expected every {expected:.0}s)");
        self.go_offline(Some(CLOSE_GOING_AWAY), reason, now, fx);
    }

    /// Binds the agent to the connection a report came on. Returns whether this starts a
    /// new connection (WebSocket) or polling session (HTTP).
    fn attach(&mut self, via: Via, fx: &mut Effects) -> bool {
        if self.via == Some(via) {
            return false;
        }
        if let Some(Via::WebSocket(_)) = self.via {
            let reason = match via {
                // The router saw the same agent continue on a new connection.
                Via::WebSocket(_) => "replaced by a newer connection",
                Via::Http => "agent moved to plain HTTP",
            };
            fx.close = Some(Close {
                code: CLOSE_NORMAL,
                reason: reason.into(),
            });
        }
        fx.link = match via {
            Via::WebSocket(conn) => LinkChange::Attach(conn),
            Via::Http => LinkChange::Poll,
        };
        self.set_via(Some(via), fx);
        true
    }

    fn set_via(&mut self, via: Option<Via>, fx: &mut Effects) {
        let before = self.via.map(Via::transport);
        let after = via.map(Via::transport);
        self.via = via;
        if before != after {
            let start = fx.live_move.map_or(before, |(from, _)| from);
            fx.live_move = (start != after).then_some((start, after));
        }
    }

    /// Forgets the agent's connection or polling (without closing anything).
    fn detach(&mut self, fx: &mut Effects) {
        if self.via.is_some() || fx.link != LinkChange::Keep {
            fx.link = LinkChange::Detach;
        }
        self.set_via(None, fx);
        self.watch(None, fx);
    }

    /// Has the fleet's silence watch look for silence longer than `grace` (or stop looking).
    fn watch(&mut self, grace: Option<Duration>, fx: &mut Effects) {
        self.watched = grace.is_some();
        fx.watch = Some(grace);
    }

    /// Marks the agent Disconnected, closing its WebSocket with `close` if it has one.
    fn go_offline(
        &mut self,
        close: Option<u16>,
        reason: String,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) {
        if let (Some(code), Some(Via::WebSocket(_))) = (close, self.via) {
            fx.close = Some(Close {
                code,
                reason: reason.clone(),
            });
        }
        self.detach(fx);
        let mut rec = (*self.record).clone();
        if let Some(heard) = self.last_heard {
            rec.last_seen = rec.last_seen.max(heard);
        }
        self.settle(&mut rec, Connection::Lost(reason), now, fx);
        self.publish(rec, true, fx);
    }

    /// A message numbered before the agent's goodbye, not a full report of a restarted agent.
    fn is_late_after_goodbye(&self, report: &AgentReport) -> bool {
        self.said_goodbye_at
            .is_some_and(|bye| report.sequence_num <= bye && report.description.is_none())
            && self.via.is_none()
    }

    /// Asks for the full component map when the agent sent only a hash we do not know, once
    /// per connection.
    fn wants_components(&mut self, report: &AgentReport, known: bool) -> bool {
        let Some(reported) = &report.available_components else {
            return false;
        };
        if reported.set.is_some() || self.conn.asked_components || known {
            return false;
        }
        self.conn.asked_components = true;
        true
    }

    /// Derives the status from the record's facts and moves there, recording each
    /// transition. Returns whether status or reason changed.
    fn settle(
        &mut self,
        rec: &mut AgentRecord,
        connection: Connection,
        now: DateTime<Utc>,
        fx: &mut Effects,
    ) -> bool {
        let reported = rec.remote_config.as_ref();
        let awaiting_offer = match (&self.directive.version, &rec.offered_config_hash) {
            (Some(v), Some(offered)) => {
                *offered == v.hash && reported.map(|rc| &rc.hash) != Some(offered)
            }
            _ => false,
        };
        let config = match reported {
            _ if awaiting_offer => ConfigProgress::Applying,
            Some(rc) if rc.status == RemoteConfigStatus::Applying => ConfigProgress::Applying,
            Some(rc) if rc.status == RemoteConfigStatus::Failed => {
                ConfigProgress::Failed(rc.error.clone())
            }
            _ => ConfigProgress::Settled,
        };
        let observation = Observation {
            connection,
            config,
            upgrade: self.upgrade_progress(rec),
            health_problem: rec
                .health
                .as_deref()
                .and_then(|h| h.problem.as_deref().map(String::from)),
            // A rollout waits only for managed agents (one in maintenance keeps its directive).
            incompatible: self
                .directive
                .incompatible
                .clone()
                .filter(|_| rec.admin_state.is_managed()),
            pending: self
                .directive
                .pending
                .clone()
                .filter(|_| rec.admin_state.is_managed()),
        };
        let (target, reason) = derive(&observation);
        // Made of what the agent said (component names, errors): bounded like them.
        let reason = if reason.len() > MAX_TEXT {
            cut_text(&reason, MAX_TEXT)
        } else {
            reason
        };
        let transitions = self.machine.settle(target, reason);
        let changed = !transitions.is_empty() || rec.status_reason != self.machine.reason();
        if !transitions.is_empty() {
            let mut history: Vec<HistoryEntry> = rec.history.to_vec();
            for t in transitions {
                fx.status_moves.push((t.from, Some(t.to)));
                let entry = HistoryEntry::new(now, t);
                fx.history.push(entry.clone());
                history.push(entry);
            }
            let excess = history.len().saturating_sub(HISTORY_LIMIT);
            history.drain(..excess);
            rec.history = Arc::from(history);
        }
        rec.status = self.machine.status().unwrap_or(Status::Connected);
        rec.status_reason = self.machine.reason().to_string();
        changed
    }

    fn publish(&mut self, rec: AgentRecord, persist: bool, fx: &mut Effects) {
        self.record = Arc::new(rec);
        fx.publish = Some(self.record.clone());
        if persist {
            fx.persist = true;
            self.unsaved = false;
        }
    }
}

/// Merges a possibly compressed report into the last full state. Returns whether anything
/// the store keeps changed.
fn merge(
    rec: &mut AgentRecord,
    report: &AgentReport,
    (components_known, max_effective_config): (bool, usize),
    fx: &mut Effects,
) -> bool {
    let mut changed = false;
    if rec.capabilities != report.capabilities {
        rec.capabilities = report.capabilities;
        changed = true;
    }
    if let Some(description) = &report.description
        && *rec.description != *description
    {
        rec.description = Arc::new(description.clone());
        changed = true;
    }
    if let Some(health) = &report.health
        && rec.health.as_deref() != Some(health)
    {
        rec.health = Some(Arc::new(health.clone()));
        changed = true;
    }
    if let Some(config) = &report.effective_config {
        let hash = config.hash();
        if rec.effective_config_hash.as_ref() != Some(&hash) {
            let kept = KeptConfig::within(config, max_effective_config);
            fx.effective_config = Some((hash.clone(), kept));
            fx.released_config = rec.effective_config_hash.replace(hash);
            changed = true;
        }
    }
    if let Some(status) = &report.remote_config_status
        && rec.remote_config.as_ref() != Some(status)
    {
        if status.status == RemoteConfigStatus::Applied {
            rec.applied_config_hash = Some(status.hash.clone());
        }
        rec.remote_config = Some(status.clone());
        changed = true;
    }
    if let Some(packages) = &report.package_statuses
        && rec.packages.as_deref() != Some(packages)
    {
        rec.packages = Some(Arc::new(packages.clone()));
        changed = true;
    }
    if let Some(reported) = &report.available_components {
        if let Some(set) = &reported.set
            && !components_known
        {
            fx.component_set = Some((reported.hash.clone(), set.clone()));
        }
        if rec.components_hash.as_ref() != Some(&reported.hash) {
            rec.components_hash = Some(reported.hash.clone());
            changed = true;
        }
    }
    changed
}

/// Whether the merged state lacks something the agent's capabilities promise.
fn missing_state(rec: &AgentRecord) -> bool {
    let caps = rec.capabilities;
    (rec.description.identifying.is_empty() && rec.description.non_identifying.is_empty())
        || (caps.contains(Caps::REPORTS_HEALTH) && rec.health.is_none())
        || (caps.contains(Caps::REPORTS_EFFECTIVE_CONFIG) && rec.effective_config_hash.is_none())
}

#[cfg(test)]
mod tests;
