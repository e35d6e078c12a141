//! The registry of agents (instance uid → actor handle), routing of inbound reports to
//! actors, and fleet-wide queries over the actors' published snapshots.

mod lifecycle;
mod query;

use std::sync::Arc;

use chrono::Utc;
use dashmap::DashMap;
use tokio_util::task::TaskTracker;

use crate::core::domain::{
    AgentRecord, AgentReport, InstanceUid, ReplyError, ServerReply, Transport,
};
use crate::core::lifecycle::AdminState;
use crate::edge::protocol::Inbound;
use crate::tasks::agent::{
    AgentContext, AgentHandle, Command, ConnId, Delivery, Outgoing, Reply, SERVER_CAPABILITIES,
    SILENCE_TICK_MS, Source,
};

pub use lifecycle::Rules;
pub use query::{AgentFilter, FleetSummary, LabelSelector, Page};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DispatchError {
    /// The message is unusable; the agent gets an error_response BadRequest.
    #[error("{0}")]
    BadRequest(String),
    /// The server is shutting down.
    #[error("server is shutting down")]
    Unavailable,
}

pub struct Fleet {
    agents: DashMap<InstanceUid, AgentHandle>,
    ctx: Arc<AgentContext>,
    tracker: TaskTracker,
    /// Admission, pre-registrations by attributes and ignore rules, for first contacts.
    rules: arc_swap::ArcSwap<Rules>,
    /// When this process started: retention counts from then at the earliest.
    started: chrono::DateTime<Utc>,
    /// New agents beyond this many are asked to come back later.
    max_agents: usize,
}

impl Fleet {
    pub fn new(
        ctx: Arc<AgentContext>,
        tracker: TaskTracker,
        rules: Rules,
        max_agents: usize,
    ) -> Self {
        Self {
            agents: DashMap::new(),
            ctx,
            tracker,
            rules: arc_swap::ArcSwap::from_pointee(rules),
            started: Utc::now(),
            max_agents,
        }
    }

    /// Starts the one task that watches every agent for silence (see `SilenceWatch`); it
    /// stops with the server.
    pub fn spawn_silence_watch(self: &Arc<Self>) {
        let fleet = self.clone();
        self.tracker.spawn(async move {
            let tick = std::time::Duration::from_millis(SILENCE_TICK_MS as u64);
            let mut ticks = tokio::time::interval(tick);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = fleet.ctx.cancel.cancelled() => return,
                }
                let now = Utc::now().timestamp_millis();
                fleet.ctx.silence.sweep(now, |uid| fleet.get(uid));
            }
        });
    }

    /// Starts actors for agents read back from the store.
    pub fn restore(&self, records: Vec<AgentRecord>) {
        for record in records {
            let uid = record.uid;
            let handle = AgentHandle::spawn(record, false, self.ctx.clone(), &self.tracker);
            self.agents.insert(uid, handle);
        }
    }

    pub fn get(&self, uid: &InstanceUid) -> Option<AgentHandle> {
        self.agents.get(uid).map(|h| h.clone())
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    fn get_or_spawn(
        &self,
        uid: InstanceUid,
        report: &AgentReport,
        inherit: Option<AdminState>,
    ) -> AgentHandle {
        if let Some(handle) = self.get(&uid) {
            return handle;
        }
        // The shard lock is held only while the handle is cloned out.
        self.agents
            .entry(uid)
            .or_insert_with(|| {
                let record = self.first_contact(uid, report, inherit);
                AgentHandle::spawn(record, true, self.ctx.clone(), &self.tracker)
            })
            .clone()
    }

    /// Routes one decoded message to its agent's actor, which replies through `source`.
    /// Returns the uid the message was routed to: another than the one it carried when the
    /// server assigned the agent a new uid (on request, or because a second live connection
    /// used a uid already connected, as a cloned machine does).
    ///
    /// An agent Corral does not know must introduce itself: until a message carries its
    /// description, it is asked for its full state and nothing is kept of it (so its admin
    /// state is decided from what it reports, and a flood of bare messages with invented uids
    /// costs nothing).
    pub async fn dispatch(
        &self,
        inbound: Inbound,
        source: Source,
        origin: Option<Arc<str>>,
    ) -> Result<InstanceUid, DispatchError> {
        let Inbound {
            raw_uid,
            uid,
            report,
        } = inbound;
        let uid = uid.map_err(|e| DispatchError::BadRequest(e.to_string()))?;
        // One registry lookup serves the clone check and the delivery.
        let known = self.get(&uid);
        let reassign = report.request_instance_uid
            || known
                .as_ref()
                .is_some_and(|h| is_clone(h, &source, report.sequence_num));
        let target = if reassign {
            let new_uid = InstanceUid::new_v7();
            if !report.request_instance_uid {
                tracing::info!(%uid, %new_uid, "second live connection with the same instance uid; assigning a new one");
            }
            new_uid
        } else {
            uid
        };
        // A copy of an ignored agent under a new uid stays ignored.
        let inherit = known
            .as_ref()
            .filter(|_| reassign)
            .map(|h| h.peek().admin_state)
            .filter(|state| *state == AdminState::Ignored);
        let mut handle = known.filter(|_| !reassign);
        let mut delivery = Box::new(Delivery {
            raw_uid,
            report,
            source,
            assigned: reassign,
            origin,
        });
        // Twice at most: once more when the agent was deleted while its message was on its way.
        for _ in 0..2 {
            let agent = match handle.take().or_else(|| self.get(&target)) {
                Some(agent) => agent,
                None if delivery.report.description.is_none() => {
                    self.answer_unknown(target, *delivery, introduce_yourself());
                    return Ok(target);
                }
                None if self.agents.len() >= self.max_agents => {
                    let reply = self.full();
                    self.answer_unknown(target, *delivery, reply);
                    return Ok(target);
                }
                None => self.get_or_spawn(target, &delivery.report, inherit),
            };
            match agent.deliver(Command::Report(delivery)).await {
                Ok(()) => return Ok(target),
                Err(Command::Report(back)) if agent.link().is_gone() => {
                    self.agents
                        .remove_if(&target, |_, entry| entry.same(&agent));
                    delivery = back;
                }
                Err(_) => return Err(DispatchError::Unavailable),
            }
        }
        Err(DispatchError::Unavailable)
    }

    /// The answer to a new agent when the server holds `--max-agents` already: come back
    /// later (agents it knows are not affected).
    fn full(&self) -> ServerReply {
        ServerReply {
            error: Some(ReplyError::Unavailable {
                message: format!(
                    "this server holds its maximum of {} agents",
                    self.max_agents
                ),
                retry_after_nanos: FULL_RETRY_AFTER.as_nanos() as u64,
            }),
            ..ServerReply::default()
        }
    }

    /// Answers a message from an agent Corral does not keep (yet), without an actor.
    fn answer_unknown(&self, uid: InstanceUid, delivery: Delivery, reply: ServerReply) {
        let Delivery {
            raw_uid,
            source,
            assigned,
            ..
        } = delivery;
        let reply = Reply {
            raw_uid,
            reply: ServerReply {
                new_instance_uid: (assigned && reply.error.is_none()).then_some(uid),
                ..reply
            },
        };
        let metrics = &self.ctx.metrics;
        let transport = match source {
            Source::Http { reply: answer } => {
                let _ = answer.send(reply);
                Transport::Http
            }
            Source::WebSocket { outbound, .. } => {
                // Best effort: a full queue means the agent is not reading anyway.
                let _ = outbound.try_send(Outgoing::Reply(Box::new(reply)));
                Transport::WebSocket
            }
        };
        metrics.message_in(transport);
        metrics.message_out(transport);
    }

    /// Whether the transport may answer this bare heartbeat on connection `conn` (or, with
    /// [`POLLING`](crate::tasks::agent::POLLING), this bare poll) by itself, without waking the
    /// agent's actor: the actor said it has nothing to add (see
    /// `LinkState::claim_heartbeat`), and the heartbeat is next in sequence and changes
    /// nothing, capabilities included. A claimed heartbeat is counted in and out.
    pub fn answer_heartbeat(
        &self,
        agent: &AgentHandle,
        report: &AgentReport,
        conn: ConnId,
    ) -> bool {
        if !report.is_heartbeat() || report.request_instance_uid {
            return false;
        }
        let link = agent.link();
        if link.capabilities() != report.capabilities
            || !link.claim_heartbeat(conn, report.sequence_num)
        {
            return false;
        }
        let transport = if conn == crate::tasks::agent::POLLING {
            Transport::Http
        } else {
            Transport::WebSocket
        };
        let metrics = &self.ctx.metrics;
        metrics.message_in(transport);
        metrics.message_out(transport);
        true
    }

    /// Tells the actors a WebSocket connection ended.
    pub async fn connection_closed(&self, uids: &[InstanceUid], conn: u64, reason: &str) {
        for uid in uids {
            if let Some(handle) = self.get(uid) {
                let _ = handle
                    .send(Command::ConnectionClosed {
                        conn,
                        reason: reason.into(),
                    })
                    .await;
            }
        }
    }

    /// Every agent's latest published record, in no particular order.
    pub fn records(&self) -> Vec<Arc<AgentRecord>> {
        self.agents.iter().map(|h| h.record()).collect()
    }

    /// A number that changes whenever any agent's published record does.
    pub fn changes(&self) -> u64 {
        self.ctx.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The latest records of the agents that published a change since the last call.
    pub fn take_changed(&self) -> Vec<Arc<AgentRecord>> {
        let uids = std::mem::take(&mut *self.ctx.changed.lock());
        uids.iter()
            .filter_map(|uid| self.get(uid))
            .map(|handle| handle.record())
            .collect()
    }

    /// A component set an agent reported, by its hash.
    pub fn components(
        &self,
        hash: &crate::core::domain::ContentHash,
    ) -> Option<Arc<crate::core::config::ComponentSet>> {
        self.ctx.components.get(hash).map(|set| set.clone())
    }

    pub fn metrics(&self) -> &crate::telemetry::Metrics {
        &self.ctx.metrics
    }
}

/// What an agent that did not say who it is hears: send your full state (with the uid chosen
/// for it, when one was).
fn introduce_yourself() -> ServerReply {
    ServerReply {
        capabilities: Some(SERVER_CAPABILITIES),
        report_full_state: true,
        ..ServerReply::default()
    }
}

/// How long a new agent refused for `--max-agents` is asked to wait.
const FULL_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// A connection speaking for an agent attached to another live WebSocket is a clone (or an
/// impostor) unless its sequence number continues the agent's: then it is the same agent
/// reconnecting, or moving to plain HTTP, before its old connection was seen to drop. A plain
/// HTTP message could otherwise take a live agent's uid over, close its socket and replace its
/// state.
fn is_clone(existing: &AgentHandle, source: &Source, seq: u64) -> bool {
    let link = existing.link();
    let elsewhere = match (source, link.ws_conn()) {
        (Source::WebSocket { conn, .. }, Some(other)) => other != *conn,
        (Source::Http { .. }, Some(_)) => true,
        (_, None) => false,
    };
    elsewhere && !link.continues(seq)
}
