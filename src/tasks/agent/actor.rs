//! The agent's actor: a loop that feeds events to the agent's [`AgentSession`] and carries
//! out the effects it returns. It decides nothing itself.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use chrono::Utc;

use super::{AgentContext, Command, Delivery, LinkState, Outgoing, Reply, Source};
use crate::core::domain::{ServerReply, Transport};
use crate::core::session::{
    AgentSession, Close, Effects, Event, Inbound, LinkChange, POLLING, Via,
};

/// The WebSocket an agent is attached to.
struct WsLink {
    outbound: crate::channel::Sender<Outgoing>,
}

/// Has a connection close with `code`; drops it when its queue has no room even for the
/// close.
fn close(outbound: &crate::channel::Sender<Outgoing>, Close { code, reason }: Close) {
    if outbound.try_send(Outgoing::Close { code, reason }).is_err() {
        outbound.abort();
    }
}

pub(super) struct AgentActor {
    session: AgentSession,
    ctx: Arc<AgentContext>,
    link: Arc<LinkState>,
    /// The WebSocket the agent is attached to.
    ws: Option<WsLink>,
}

impl AgentActor {
    pub(super) fn new(
        session: AgentSession,
        first: Effects,
        ctx: Arc<AgentContext>,
        link: Arc<LinkState>,
    ) -> Self {
        let mut actor = Self {
            session,
            ctx,
            link,
            ws: None,
        };
        actor.carry(first, None);
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
                        if self.handle(cmd) {
                            break;
                        }
                    }
                    Err(_) => break,
                },
                _ = &mut cancelled => {
                    let fx = self.session.step(Event::Shutdown, Utc::now());
                    self.carry(fx, None);
                    break;
                }
            }
            self.link.set_quiet(self.session.quiet_after());
        }
    }

    /// Handles one command; returns whether the actor is done.
    fn handle(&mut self, cmd: Command) -> bool {
        let now = Utc::now();
        match cmd {
            Command::Report(delivery) => {
                let Delivery {
                    raw_uid,
                    report,
                    source,
                    assigned,
                    origin,
                } = *delivery;
                let via = match &source {
                    Source::WebSocket { conn, .. } => Via::WebSocket(*conn),
                    Source::Http { .. } => Via::Http,
                };
                self.ctx.metrics.message_in(via.transport());
                let components_known = report
                    .available_components
                    .as_ref()
                    .is_some_and(|c| self.ctx.components.contains_key(&c.hash));
                let inbound = Inbound {
                    report,
                    via,
                    assigned,
                    origin,
                    components_known,
                };
                let fx = self.session.step(Event::Report(Box::new(inbound)), now);
                self.carry(fx, Some((source, raw_uid)))
            }
            Command::ConnectionClosed { conn, reason } => self.event(
                Event::ConnectionClosed {
                    conn,
                    reason: reason.into(),
                },
                now,
            ),
            Command::SetLabels(request) => {
                let (labels, done) = *request;
                let stop = self.event(Event::SetLabels(labels), now);
                let _ = done.send(self.session.record().clone());
                stop
            }
            Command::Direct(directive) => self.event(Event::Direct(*directive), now),
            Command::Silence => {
                let last_seen = self.link.last_seen();
                let fx = self.session.step(Event::Silence { last_seen }, now);
                if fx.close.is_some() || fx.live_move.is_some() {
                    let record = self.session.record();
                    tracing::info!(uid = %record.uid, reason = %record.status_reason, "agent went silent");
                }
                self.carry(fx, None)
            }
            Command::Admin(request) => {
                let (event, done) = *request;
                let mut fx = self.session.step(event, now);
                let outcome = fx.outcome.take().unwrap_or(Ok(()));
                let stop = self.carry(fx, None);
                let _ = done.send(outcome.map(|()| self.session.record().clone()));
                stop
            }
        }
    }

    fn event(&mut self, event: Event, now: chrono::DateTime<Utc>) -> bool {
        let fx = self.session.step(event, now);
        self.carry(fx, None)
    }

    /// Heartbeats the transport answered while the session was quiet: the numbering goes on
    /// from the last of them, and their gaps teach the interval.
    fn take_answered(&mut self) {
        let (last_seq, gap) = self.link.take_answered();
        if last_seq.is_some() || gap.is_some() {
            let last_seen = self.link.last_seen();
            let fx = self.session.step(
                Event::Answered {
                    last_seq,
                    gap,
                    last_seen,
                },
                Utc::now(),
            );
            self.carry(fx, None);
        }
    }

    /// Carries out one step's effects in the order `Effects` gives. `source` is where the
    /// report came from, with the uid as the agent sent it. Returns whether the actor is done.
    fn carry(&mut self, fx: Effects, source: Option<(Source, Bytes)>) -> bool {
        let Effects {
            close: close_now,
            link,
            publish,
            persist,
            history,
            effective_config,
            released_config,
            component_set,
            status_moves,
            admin_move,
            live_move,
            watch,
            seen,
            last_seq,
            reply,
            push,
            then_close,
            outcome: _,
            delete,
            stop,
        } = fx;
        let ctx = &*self.ctx;
        let uid = self.session.record().uid;
        if let (Some(c), Some(ws)) = (close_now, &self.ws) {
            close(&ws.outbound, c);
        }
        match link {
            LinkChange::Keep => {}
            LinkChange::Attach(conn) => {
                if let Some((Source::WebSocket { outbound, .. }, _)) = &source {
                    self.ws = Some(WsLink {
                        outbound: outbound.clone(),
                    });
                    self.link.attach(conn);
                }
            }
            LinkChange::Poll => {
                self.ws = None;
                self.link.attach(POLLING);
            }
            LinkChange::Detach => {
                self.ws = None;
                self.link.attach(0);
            }
        }
        if let Some(seen) = seen {
            self.link.seen(seen);
        }
        if let Some((hash, config)) = effective_config {
            ctx.writes.effective_config(hash, config);
        }
        if let Some(hash) = released_config {
            ctx.writes.release_config(hash);
        }
        if let Some((hash, set)) = component_set {
            ctx.writes.component_set(hash.clone(), set.clone());
            ctx.components.insert(hash, Arc::new(set));
        }
        for entry in history {
            tracing::debug!(%uid, from = ?entry.from, to = %entry.to, reason = %entry.reason, "status change");
            ctx.writes.history(uid, entry);
        }
        if let Some(record) = publish {
            self.link.publish(record.clone());
            ctx.changed.lock().insert(uid);
            ctx.changes.fetch_add(1, Ordering::Release);
            if persist {
                ctx.writes.agent(record);
            }
        }
        if let Some(seq) = last_seq {
            self.link.set_last_seq(seq);
        }
        for (from, to) in status_moves {
            ctx.metrics.move_agent(from, to);
        }
        if let Some((from, to)) = admin_move {
            ctx.metrics.move_admin(from, to);
        }
        if let Some((from, to)) = live_move {
            if let Some(old) = from {
                ctx.metrics.connections(old).dec();
            }
            if let Some(new) = to {
                ctx.metrics.connections(new).inc();
            }
        }
        match watch {
            Some(Some(grace)) => {
                let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
                ctx.silence.watch(uid, self.link.watched(), grace_ms);
            }
            Some(None) => self.link.watched().unwatch(),
            None => {}
        }
        if delete {
            // After its last writes, so none of them outlives the delete; before the registry
            // lets go of it, so an agent that comes back is new.
            ctx.writes.delete_agent(uid);
            ctx.forgotten.lock().insert(uid);
        }
        if stop {
            self.link.stopped();
        }
        if let (Some(reply), Some((source, raw_uid))) = (reply, source) {
            self.reply(source, raw_uid, reply, then_close);
        }
        if let Some(message) = push
            && let Some(ws) = &self.ws
        {
            let outbound = ws.outbound.clone();
            let raw_uid = Bytes::copy_from_slice(uid.as_bytes());
            return self.push(&outbound, raw_uid, message) || stop;
        }
        stop
    }

    fn reply(&mut self, source: Source, raw_uid: Bytes, reply: ServerReply, then: Option<Close>) {
        match source {
            Source::Http { reply: answer } => {
                // The poll's request may have gone away; its agent will poll again.
                if answer.send(Reply { raw_uid, reply }).is_ok() {
                    self.ctx.metrics.message_out(Transport::Http);
                }
            }
            Source::WebSocket { outbound, .. } => {
                self.push(&outbound, raw_uid, reply);
                if let Some(c) = then {
                    close(&outbound, c);
                }
            }
        }
    }

    /// Queues a message for a WebSocket. A connection whose queue is full is dropped, and the
    /// session hears of it. Returns whether the actor is done.
    fn push(
        &mut self,
        outbound: &crate::channel::Sender<Outgoing>,
        raw_uid: Bytes,
        reply: ServerReply,
    ) -> bool {
        let message = Outgoing::Reply(Box::new(Reply { raw_uid, reply }));
        match outbound.try_send(message) {
            Ok(()) => {
                self.ctx.metrics.message_out(Transport::WebSocket);
                false
            }
            Err(crate::channel::TrySendError::Full(_)) => {
                self.ctx.metrics.overflow("websocket_outbound");
                tracing::warn!(uid = %self.session.record().uid, "agent is not reading its replies; closing");
                // No room for a close either: the connection ends with 1013 when it sees the
                // abort (also the one a goodbye's reply went to, after the actor let go of it).
                outbound.abort();
                let fx = self.session.step(Event::Overflowed, Utc::now());
                self.carry(fx, None)
            }
            Err(crate::channel::TrySendError::Closed(_)) => false,
        }
    }
}
