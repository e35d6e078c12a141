use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tokio::time::Instant;

use super::{
    AgentContext, Command, ConnId, DEFAULT_HEARTBEAT, Delivery, FullStateTracker, LinkState,
    Liveness, Outgoing, SERVER_CAPABILITIES, Source,
};
use crate::core::domain::{
    AgentCapabilities as Caps, AgentRecord, AgentReport, HISTORY_LIMIT, HistoryEntry, OwnTelemetry,
    PackageOffer, PackageState, RemoteConfigOffer, RemoteConfigStatus, ServerReply, Transport,
};
use crate::core::rollout::Directive;
use crate::core::status::{
    ConfigProgress, Connection, Observation, Status, StatusMachine, UpgradeProgress, derive,
};
use crate::edge::protocol;

/// WebSocket close codes the actor uses.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;

/// The WebSocket an agent is attached to.
#[derive(Clone)]
struct WsLink {
    conn: ConnId,
    outbound: crate::channel::Sender<Outgoing>,
}

impl WsLink {
    /// Has the connection close with `code`; drops it when its queue has no room even for
    /// the close.
    fn close(&self, code: u16, reason: String) {
        if self
            .outbound
            .try_send(Outgoing::Close { code, reason })
            .is_err()
        {
            self.outbound.abort();
        }
    }
}

pub(super) struct AgentActor {
    record: Arc<AgentRecord>,
    machine: StatusMachine,
    ctx: Arc<AgentContext>,
    link: Arc<LinkState>,
    /// The WebSocket the agent is attached to.
    ws: Option<WsLink>,
    /// The transport the agent is live on, as counted in the connections gauge.
    live: Option<Transport>,
    full_state: FullStateTracker,
    liveness: Liveness,
    last_heard: Option<Instant>,
    /// When the agent last sent a bare heartbeat, to learn its interval.
    last_heartbeat: Option<Instant>,
    /// The sequence number of the agent's goodbye, to ignore messages it had queued before.
    said_goodbye_at: Option<u64>,
    /// Connection settings were offered on the current connection.
    offered_settings: bool,
    /// What the rollout controller wants of this agent.
    directive: Directive,
    /// The offered configuration was sent on the current connection.
    offered_config_here: bool,
    /// The full component map was asked for on the current connection.
    asked_components: bool,
    /// An admin asked to send the failed configuration once more.
    retry_failed: bool,
    /// The offered package was sent on the current connection.
    offered_package_here: bool,
    /// A restart command waits for the agent's next poll.
    restart_pending: bool,
    /// How the agent reaches us, for download URLs.
    origin: Option<Arc<str>>,
    /// The record has never been written.
    unsaved: bool,
}

impl AgentActor {
    pub(super) fn new(
        record: Arc<AgentRecord>,
        is_new: bool,
        ctx: Arc<AgentContext>,
        link: Arc<LinkState>,
    ) -> Self {
        let machine = if is_new {
            StatusMachine::default()
        } else {
            StatusMachine::resume(record.status, record.status_reason.clone())
        };
        if !is_new {
            ctx.metrics.move_agent(None, Some(record.status));
        }
        let mut actor = Self {
            record,
            machine,
            liveness: Liveness::new(DEFAULT_HEARTBEAT),
            ctx,
            link,
            ws: None,
            live: None,
            full_state: FullStateTracker::default(),
            last_heard: None,
            last_heartbeat: None,
            said_goodbye_at: None,
            offered_settings: false,
            directive: Directive::default(),
            offered_config_here: false,
            asked_components: false,
            retry_failed: false,
            offered_package_here: false,
            restart_pending: false,
            origin: None,
            unsaved: is_new,
        };
        if !is_new && actor.record.status != Status::Disconnected {
            // Known before a restart: it is not connected to this process yet.
            let mut rec = (*actor.record).clone();
            actor.settle(&mut rec, Connection::Lost("server restarted".into()));
            actor.publish(rec, true);
        }
        actor
    }

    pub(super) async fn run(mut self, inbox: crate::channel::Receiver<Command>) {
        let cancel = self.ctx.cancel.clone();
        // Made once: a fresh one per message would join and leave the token's waiter list,
        // which every agent shares, on every heartbeat.
        let mut cancelled = pin!(cancel.cancelled());
        loop {
            tokio::select! {
                biased;
                cmd = inbox.recv() => match cmd {
                    Ok(cmd) => {
                        self.take_answered();
                        self.handle(cmd);
                    }
                    Err(_) => break,
                },
                _ = &mut cancelled => {
                    self.close_for_shutdown();
                    break;
                }
            }
            self.update_quiet();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Report(delivery) => {
                let Delivery {
                    raw_uid,
                    report,
                    source,
                    assigned,
                    origin,
                } = *delivery;
                if origin.is_some() {
                    self.origin = origin;
                }
                self.on_report(raw_uid, report, source, assigned)
            }
            Command::Restart { done } => {
                let _ = done.send(self.restart());
            }
            Command::ConnectionClosed { conn, reason } => {
                if self.ws.as_ref().is_some_and(|link| link.conn == conn) {
                    self.go_offline(None, reason.into());
                }
            }
            Command::SetLabels(request) => {
                let (labels, done) = *request;
                let mut rec = (*self.record).clone();
                rec.labels = labels;
                self.publish(rec, true);
                let _ = done.send(self.record.clone());
            }
            Command::Direct(directive) => self.on_directive(*directive),
            Command::Silence => self.on_silence(),
            Command::RetryConfig { done } => {
                let failed_target = self.directive.version.as_ref().is_some_and(|v| {
                    self.record.remote_config.as_ref().is_some_and(|rc| {
                        rc.hash == v.hash && rc.status == RemoteConfigStatus::Failed
                    })
                });
                if !failed_target {
                    let _ = done.send(Err(
                        "the agent has not reported its assigned configuration failed".into(),
                    ));
                    return;
                }
                self.retry_failed = true;
                self.on_directive(self.directive.clone());
                let _ = done.send(Ok(self.record.clone()));
            }
        }
    }

    fn on_directive(&mut self, directive: Directive) {
        if directive == self.directive && !self.retry_failed {
            return;
        }
        if directive.version != self.directive.version {
            // A retry is for the version that failed, not for whatever comes next.
            self.retry_failed = false;
        }
        self.directive = directive;
        let mut rec = (*self.record).clone();
        // A polling agent takes its offers with its next poll's reply.
        let (offer, packages) = if self.ws.is_some() {
            (self.take_offer(&mut rec), self.take_package_offer(&mut rec))
        } else {
            (None, None)
        };
        let connection = match self.live {
            Some(_) => Connection::Live,
            None => Connection::Lost(rec.status_reason.clone()),
        };
        let persist = self.settle(&mut rec, connection) | offer.is_some() | packages.is_some();
        self.publish(rec, persist);
        if offer.is_some() || packages.is_some() {
            let reply = ServerReply {
                capabilities: Some(SERVER_CAPABILITIES),
                remote_config: offer,
                packages,
                ..ServerReply::default()
            };
            self.push_now(&reply);
        }
    }

    /// Pushes a message over the agent's WebSocket, if it has one.
    fn push_now(&mut self, reply: &ServerReply) {
        if let Some(WsLink { outbound, .. }) = self.ws.clone() {
            let raw_uid = Bytes::copy_from_slice(self.record.uid.as_bytes());
            self.push(&outbound, protocol::reply_to_proto(raw_uid, reply));
        }
    }

    fn restart(&mut self) -> Result<(), String> {
        if !self
            .record
            .capabilities
            .contains(Caps::ACCEPTS_RESTART_COMMAND)
        {
            return Err("the agent does not accept the restart command".into());
        }
        match self.live {
            None => Err("the agent is not connected".into()),
            Some(Transport::WebSocket) => {
                self.push_now(&ServerReply {
                    capabilities: Some(SERVER_CAPABILITIES),
                    restart: true,
                    ..ServerReply::default()
                });
                Ok(())
            }
            Some(Transport::Http) => {
                self.restart_pending = true;
                Ok(())
            }
        }
    }

    /// The package to offer now, if the directive wants one the agent neither has nor is
    /// working on; records it as offered. Once per connection, like configurations.
    fn take_package_offer(&mut self, rec: &mut AgentRecord) -> Option<PackageOffer> {
        let (package, base) = self.package_due(rec)?;
        let hash = package.hash();
        rec.offered_package_hash = Some(hash.clone());
        self.offered_package_here = true;
        Some(PackageOffer {
            name: package.name.clone(),
            version: package.version.clone(),
            hash,
            content_hash: package.sha256.clone(),
            download_url: format!(
                "{base}{}{}",
                crate::edge::transport::PACKAGES_PATH,
                package.sha256.to_hex()
            ),
        })
    }

    /// The package to offer `rec` now, with the base URL to offer it from, if one is due.
    fn package_due(
        &self,
        rec: &AgentRecord,
    ) -> Option<(Arc<crate::core::packages::Package>, String)> {
        let package = self.directive.package.as_ref()?;
        if self.live.is_none() || !rec.capabilities.contains(Caps::ACCEPTS_PACKAGES) {
            return None;
        }
        let hash = package.hash();
        if let Some(report) = rec
            .packages
            .as_ref()
            .and_then(|p| p.packages.get(package.name.as_str()))
        {
            let has_it = report.state == PackageState::Installed && report.agent_has_hash == hash;
            let on_it = report.server_offered_hash == hash
                && (report.state.in_progress() || report.state == PackageState::InstallFailed);
            if has_it || on_it {
                return None;
            }
        }
        if rec.offered_package_hash.as_ref() == Some(&hash) && self.offered_package_here {
            return None;
        }
        let base = self
            .ctx
            .public_url
            .as_deref()
            .or(self.origin.as_deref())?
            .to_string();
        Some((package.clone(), base))
    }

    /// The configuration to send now, if the directive wants one the agent has not reported;
    /// records it as offered. Sent once per connection: a reconnecting agent that never
    /// reported it gets it again, since it may have missed it.
    fn take_offer(&mut self, rec: &mut AgentRecord) -> Option<RemoteConfigOffer> {
        let version = self.config_due(rec)?;
        self.retry_failed = false;
        rec.offered_config_hash = Some(version.hash.clone());
        self.offered_config_here = true;
        Some(RemoteConfigOffer {
            hash: version.hash.clone(),
            files: version.files.clone(),
        })
    }

    /// The configuration version to send `rec` now, if one is due.
    fn config_due(&self, rec: &AgentRecord) -> Option<Arc<crate::core::config::ConfigVersion>> {
        let version = self.directive.version.as_ref()?;
        if self.live.is_none() || !rec.capabilities.contains(Caps::ACCEPTS_REMOTE_CONFIG) {
            return None;
        }
        let retry = self.retry_failed
            && rec.remote_config.as_ref().is_some_and(|rc| {
                rc.hash == version.hash && rc.status == RemoteConfigStatus::Failed
            });
        if !retry {
            // Never again a hash the agent has reported, nor twice on one connection.
            if rec.remote_config.as_ref().map(|rc| &rc.hash) == Some(&version.hash) {
                return None;
            }
            if rec.offered_config_hash.as_ref() == Some(&version.hash) && self.offered_config_here {
                return None;
            }
        }
        Some(version.clone())
    }

    fn on_report(&mut self, raw_uid: Bytes, report: AgentReport, source: Source, assigned: bool) {
        let now = Utc::now();
        let instant = Instant::now();
        let transport = match &source {
            Source::WebSocket { .. } => Transport::WebSocket,
            Source::Http { .. } => Transport::Http,
        };
        self.ctx.metrics.message_in(transport);
        if self.is_late_after_goodbye(&report) {
            // Sent before the goodbye, delivered after it: answer, but the agent stays gone.
            let message = protocol::reply_to_proto(raw_uid, &ServerReply::default());
            self.reply(source, message);
            return;
        }
        self.said_goodbye_at = report.disconnect.then_some(report.sequence_num);

        let fresh = self.attach(&source, transport);
        if fresh {
            self.full_state.reconnected();
            self.liveness.forget_gaps();
            self.last_heartbeat = None;
            self.offered_settings = false;
            self.offered_config_here = false;
            self.offered_package_here = false;
            self.asked_components = false;
        }
        if report.is_heartbeat() {
            if let Some(prev) = self.last_heartbeat {
                self.liveness.record_gap(instant - prev);
            }
            self.last_heartbeat = Some(instant);
        }
        self.last_heard = Some(instant);
        self.link.seen(now);

        // A heartbeat on a known connection changes nothing that is published or stored.
        let unchanged = !fresh
            && !assigned
            && report.is_heartbeat()
            && report.capabilities == self.record.capabilities
            && self.record.transport == Some(transport);
        let mut offer = None;
        let mut packages = None;
        // A restart goes alone: offers wait for the polls after it.
        let restarting = self.restart_pending && transport == Transport::Http;
        let report_full_state =
            if unchanged && (restarting || (!self.wants_offer() && !self.wants_package())) {
                self.full_state
                    .observe(report.sequence_num, false, missing_state(&self.record))
            } else {
                let mut rec = (*self.record).clone();
                let mut persist = self.unsaved || fresh;
                if fresh {
                    rec.connected_at = Some(now);
                }
                rec.last_seen = now;
                if rec.transport != Some(transport) {
                    rec.transport = Some(transport);
                    persist = true;
                }
                persist |= self.merge(&mut rec, &report);
                if !restarting {
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
                persist |= self.settle(&mut rec, connection);
                self.publish(rec, persist);
                full
            };
        self.link
            .last_seq
            .store(report.sequence_num, Ordering::Release);

        let caps = self.record.capabilities;
        let accepts_settings = caps.contains(Caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS);
        self.liveness
            .set_offered(accepts_settings.then_some(self.ctx.heartbeat_interval));
        let watched = transport == Transport::Http || caps.contains(Caps::REPORTS_HEARTBEAT);
        self.watch((watched && !report.disconnect).then(|| self.liveness.grace()));

        if restarting {
            self.restart_pending = false;
            let reply = ServerReply {
                capabilities: Some(SERVER_CAPABILITIES),
                restart: true,
                ..ServerReply::default()
            };
            self.reply(source, protocol::reply_to_proto(raw_uid, &reply));
            return;
        }
        let own_telemetry = self.own_telemetry_offer();
        let first_on_connection = !self.offered_settings;
        let heartbeat_interval_seconds = (accepts_settings && first_on_connection)
            .then(|| self.ctx.heartbeat_interval.as_secs());
        let own_telemetry = own_telemetry.filter(|_| first_on_connection);
        self.offered_settings = true;
        let report_available_components = self.wants_components(&report);
        let reply = ServerReply {
            capabilities: Some(SERVER_CAPABILITIES),
            report_full_state,
            report_available_components,
            new_instance_uid: assigned.then_some(self.record.uid),
            heartbeat_interval_seconds,
            remote_config: offer,
            packages,
            own_telemetry,
            ..ServerReply::default()
        };
        // Let go of the socket before the goodbye's reply goes out (the reply goes through
        // `source`): once the connection has the reply, it must see that no actor will close
        // it at shutdown.
        if report.disconnect {
            self.detach();
        }
        self.reply(source, protocol::reply_to_proto(raw_uid, &reply));
    }

    fn reply(&mut self, source: Source, message: crate::edge::protocol::proto::ServerToAgent) {
        match source {
            Source::Http { reply } => {
                // The poll's request may have gone away; its agent will poll again.
                if reply.send(message).is_ok() {
                    self.ctx.metrics.message_out(Transport::Http);
                }
            }
            Source::WebSocket { outbound, .. } => self.push(&outbound, message),
        }
    }

    /// A message numbered before the agent's goodbye, not a full report of a restarted agent.
    fn is_late_after_goodbye(&self, report: &AgentReport) -> bool {
        self.said_goodbye_at
            .is_some_and(|bye| report.sequence_num <= bye && report.description.is_none())
            && self.live.is_none()
    }

    /// The own-telemetry destinations for the kinds the agent says it can send, if any.
    fn own_telemetry_offer(&self) -> Option<OwnTelemetry> {
        let caps = self.record.capabilities;
        let own = &self.ctx.own_telemetry;
        let pick =
            |cap: Caps, endpoint: &Option<String>| endpoint.clone().filter(|_| caps.contains(cap));
        let offer = OwnTelemetry {
            metrics: pick(Caps::REPORTS_OWN_METRICS, &own.metrics),
            logs: pick(Caps::REPORTS_OWN_LOGS, &own.logs),
            traces: pick(Caps::REPORTS_OWN_TRACES, &own.traces),
        };
        (offer != OwnTelemetry::default()).then_some(offer)
    }

    /// Whether a package is due that has not been offered on this connection.
    fn wants_package(&self) -> bool {
        self.package_due(&self.record).is_some()
    }

    /// Whether a configuration is due that the last published record has not been offered.
    fn wants_offer(&self) -> bool {
        self.config_due(&self.record).is_some()
    }

    /// Asks for the full component map when the agent sent only a hash we do not know, once
    /// per connection.
    fn wants_components(&mut self, report: &AgentReport) -> bool {
        let Some(reported) = &report.available_components else {
            return false;
        };
        if reported.set.is_some()
            || self.asked_components
            || self.ctx.components.contains_key(&reported.hash)
        {
            return false;
        }
        self.asked_components = true;
        true
    }

    /// Merges a possibly compressed report into the last full state. Returns whether anything
    /// the store keeps changed.
    fn merge(&self, rec: &mut AgentRecord, report: &AgentReport) -> bool {
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
                self.ctx
                    .writes
                    .effective_config(hash.clone(), config.clone());
                rec.effective_config_hash = Some(hash);
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
                && !self.ctx.components.contains_key(&reported.hash)
            {
                self.ctx
                    .components
                    .insert(reported.hash.clone(), Arc::new(set.clone()));
                self.ctx
                    .writes
                    .component_set(reported.hash.clone(), set.clone());
            }
            if rec.components_hash.as_ref() != Some(&reported.hash) {
                rec.components_hash = Some(reported.hash.clone());
                changed = true;
            }
        }
        changed
    }

    /// Binds the agent to the connection a report came on. Returns whether this starts a
    /// new connection (WebSocket) or polling session (HTTP).
    fn attach(&mut self, source: &Source, transport: Transport) -> bool {
        match source {
            Source::WebSocket { conn, outbound } => {
                match self.ws.take() {
                    Some(link) if link.conn == *conn => {
                        self.ws = Some(link);
                        return false;
                    }
                    Some(WsLink { outbound: old, .. }) => {
                        // The router saw the same agent continue on a new connection.
                        let _ = old.try_send(Outgoing::Close {
                            code: CLOSE_NORMAL,
                            reason: "replaced by a newer connection".into(),
                        });
                    }
                    None => {}
                }
                self.ws = Some(WsLink {
                    conn: *conn,
                    outbound: outbound.clone(),
                });
                self.link.ws_conn.store(*conn, Ordering::Release);
                self.set_live(Some(transport));
                true
            }
            Source::Http { .. } => {
                if let Some(WsLink { outbound: old, .. }) = self.ws.take() {
                    let _ = old.try_send(Outgoing::Close {
                        code: CLOSE_NORMAL,
                        reason: "agent moved to plain HTTP".into(),
                    });
                    self.link.ws_conn.store(0, Ordering::Release);
                }
                if self.live == Some(Transport::Http) {
                    return false;
                }
                self.set_live(Some(transport));
                true
            }
        }
    }

    fn set_live(&mut self, live: Option<Transport>) {
        if self.live == live {
            return;
        }
        if let Some(old) = self.live {
            self.ctx.metrics.connections(old).dec();
        }
        if let Some(new) = live {
            self.ctx.metrics.connections(new).inc();
        }
        self.live = live;
    }

    /// Forgets the agent's connection (without closing it).
    fn detach(&mut self) {
        self.ws = None;
        self.link.ws_conn.store(0, Ordering::Release);
        self.set_live(None);
        self.watch(None);
    }

    /// Marks the agent Disconnected, closing its WebSocket with `close` if it has one.
    fn go_offline(&mut self, close: Option<u16>, reason: String) {
        if let (Some(code), Some(link)) = (close, &self.ws) {
            link.close(code, reason.clone());
        }
        self.detach();
        let mut rec = (*self.record).clone();
        rec.last_seen = self.link.last_seen().max(rec.last_seen);
        self.settle(&mut rec, Connection::Lost(reason));
        self.publish(rec, true);
    }

    /// Heartbeats the transport answered while the actor was quiet: the numbering goes on from
    /// the last of them, and their gaps teach the interval.
    fn take_answered(&mut self) {
        let (last, gap) = self.link.take_answered();
        if let Some(seq) = last {
            self.full_state.caught_up(seq);
            // The next gap the actor measures itself starts from its next heartbeat.
            self.last_heartbeat = None;
        }
        if let Some(gap) = gap {
            self.liveness.record_gap(gap);
        }
    }

    /// Lets the transport answer bare heartbeats on the agent's WebSocket by itself while
    /// the actor would only echo them: attached, greeted, nothing to offer or ask, no restart
    /// or goodbye under way.
    fn update_quiet(&mut self) {
        let quiet = self.ws.is_some()
            && self.live == Some(Transport::WebSocket)
            && self.record.transport == Some(Transport::WebSocket)
            && self.offered_settings
            && !self.restart_pending
            && self.said_goodbye_at.is_none()
            && self.full_state.settled()
            && !missing_state(&self.record)
            && !self.wants_offer()
            && !self.wants_package();
        self.link
            .set_quiet(quiet.then(|| self.full_state.last_seq()).flatten());
    }

    /// Has the fleet's silence watch look for silence longer than `grace` (or stop looking).
    fn watch(&self, grace: Option<Duration>) {
        let watched = &self.link.watched;
        match grace {
            Some(grace) => {
                let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
                self.ctx.silence.watch(self.record.uid, watched, grace_ms);
            }
            None => watched.unwatch(),
        }
    }

    /// Closes the agent's WebSocket as the server stops. Its connection leaves this to the
    /// actor once an agent speaks on it (see `serve_connection`).
    fn close_for_shutdown(&self) {
        if let Some(link) = &self.ws {
            link.close(CLOSE_GOING_AWAY, "server shutting down".into());
        }
    }

    fn on_silence(&mut self) {
        if !self.link.watched.is_watched() {
            // Went offline while the watch's word was on its way.
            return;
        }
        // Heartbeats the transport answered count as heard.
        let grace = self.liveness.grace();
        let heard = (Utc::now() - self.link.last_seen()).to_std().ok();
        if heard.is_some_and(|ago| ago < grace) {
            self.watch(Some(grace));
            return;
        }
        let expected = self.liveness.expected_interval().as_secs_f64();
        let silent = self.last_heard.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let reason = format!("no message for {silent:.0}s (expected every {expected:.0}s)");
        tracing::info!(uid = %self.record.uid, %reason, "agent went silent");
        self.go_offline(Some(CLOSE_GOING_AWAY), reason);
    }

    fn push(
        &mut self,
        outbound: &crate::channel::Sender<Outgoing>,
        message: crate::edge::protocol::proto::ServerToAgent,
    ) {
        match outbound.try_send(Outgoing::Message(Box::new(message))) {
            Ok(()) => self.ctx.metrics.message_out(Transport::WebSocket),
            Err(crate::channel::TrySendError::Full(_)) => {
                self.ctx.metrics.overflow("websocket_outbound");
                tracing::warn!(uid = %self.record.uid, "agent is not reading its replies; closing");
                // No room for a close either: the connection ends with 1013 when it sees the
                // abort (also the one a goodbye's reply went to, after the actor let go of it).
                outbound.abort();
                self.go_offline(None, "connection could not keep up with replies".into());
            }
            Err(crate::channel::TrySendError::Closed(_)) => {}
        }
    }

    /// Derives the status from the record's facts and moves there, recording each
    /// transition. Returns whether status or reason changed.
    fn settle(&mut self, rec: &mut AgentRecord, connection: Connection) -> bool {
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
            incompatible: self.directive.incompatible.clone(),
            pending: self.directive.pending,
        };
        let (target, reason) = derive(&observation);
        let transitions = self.machine.settle(target, reason);
        let now = Utc::now();
        let changed = !transitions.is_empty() || rec.status_reason != self.machine.reason();
        if !transitions.is_empty() {
            let mut history: Vec<HistoryEntry> = rec.history.to_vec();
            for t in transitions {
                self.ctx.metrics.move_agent(t.from, Some(t.to));
                tracing::debug!(uid = %rec.uid, from = ?t.from, to = %t.to, reason = %t.reason, "status change");
                let entry = HistoryEntry::new(now, t);
                self.ctx.writes.history(rec.uid, entry.clone());
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

    /// Where the agent is with the package it was offered.
    fn upgrade_progress(&self, rec: &AgentRecord) -> UpgradeProgress {
        let Some(offered) = &rec.offered_package_hash else {
            return UpgradeProgress::Idle;
        };
        let report = rec.packages.as_ref().and_then(|p| {
            p.packages
                .values()
                .find(|r| &r.server_offered_hash == offered || &r.agent_has_hash == offered)
        });
        let wanted = self
            .directive
            .package
            .as_ref()
            .is_some_and(|p| &p.hash() == offered);
        match report {
            Some(r) if r.state == PackageState::Installed && &r.agent_has_hash == offered => {
                UpgradeProgress::Idle
            }
            Some(r) if r.state == PackageState::InstallFailed => UpgradeProgress::Failed(format!(
                "upgrade to {} failed: {}",
                r.server_offered_version, r.error
            )),
            Some(r) if r.state.in_progress() => {
                UpgradeProgress::InProgress(match r.download_percent {
                    Some(pct) if r.state == PackageState::Downloading => {
                        format!("downloading {} ({pct:.0}%)", r.server_offered_version)
                    }
                    _ => format!(
                        "{} {}",
                        r.state.as_str().replace('_', " "),
                        r.server_offered_version
                    ),
                })
            }
            // Offered on this connection and not reported yet: on its way.
            _ if wanted && self.offered_package_here && self.live.is_some() => {
                UpgradeProgress::InProgress("package offered".into())
            }
            _ => UpgradeProgress::Idle,
        }
    }

    fn publish(&mut self, rec: AgentRecord, persist: bool) {
        self.record = Arc::new(rec);
        self.link.publish(self.record.clone());
        self.ctx.changed.lock().insert(self.record.uid);
        self.ctx.changes.fetch_add(1, Ordering::Release);
        if persist {
            self.ctx.writes.agent(self.record.clone());
            self.unsaved = false;
        }
    }
}

/// Whether the merged state lacks something the agent's capabilities promise.
fn missing_state(rec: &AgentRecord) -> bool {
    let caps = rec.capabilities;
    (rec.description.identifying.is_empty() && rec.description.non_identifying.is_empty())
        || (caps.contains(Caps::REPORTS_HEALTH) && rec.health.is_none())
        || (caps.contains(Caps::REPORTS_EFFECTIVE_CONFIG) && rec.effective_config_hash.is_none())
}
