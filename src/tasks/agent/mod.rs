//! One actor per agent. The actor task alone owns an agent's state, whichever transport the
//! agent uses and across HTTP polls; connection tasks only move bytes to and from it.
//! [`AgentHandle`] is the cloneable way in: a bounded mailbox and the [`LinkState`] that
//! publishes the agent's latest [`AgentRecord`].

mod actor;
mod silence;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use dashmap::DashMap;

use crate::core::config::ComponentSet;
use crate::core::domain::{AgentRecord, AgentReport, ContentHash, InstanceUid, ServerReply};
use crate::core::rollout::Directive;
use crate::core::session::{AgentSession, Event, Refused, SessionConfig};
use crate::edge::store::WriteBuffer;
use crate::telemetry::Metrics;

pub use crate::core::session::{ConnId, POLLING, SERVER_CAPABILITIES};
pub use silence::{SILENCE_TICK_MS, SilenceWatch};

/// Commands waiting for one agent's actor.
pub const MAILBOX_CAPACITY: usize = 16;
/// Replies and pushes waiting for one WebSocket connection's writer.
pub const OUTBOUND_CAPACITY: usize = 8;
/// A reply in domain terms, with the uid as the agent sent it; the transport encodes it.
#[derive(Debug)]
pub struct Reply {
    pub raw_uid: Bytes,
    pub reply: ServerReply,
}

/// Something for a WebSocket connection's writer to do.
#[derive(Debug)]
pub enum Outgoing {
    Reply(Box<Reply>),
    Close { code: u16, reason: String },
}

/// Where a report came from, and so where its reply goes.
#[derive(Debug)]
pub enum Source {
    WebSocket {
        conn: ConnId,
        /// Aborted to drop a connection whose queue is too full to take even a close.
        outbound: crate::channel::Sender<Outgoing>,
    },
    Http {
        reply: oneshot::Sender<Reply>,
    },
}

/// One message from an agent, on its way to the agent's actor.
#[derive(Debug)]
pub struct Delivery {
    pub raw_uid: Bytes,
    pub report: AgentReport,
    pub source: Source,
    /// The server just chose this agent's uid: tell it in the reply.
    pub assigned: bool,
    /// How the agent reached us (`http://host:port`), for the download URLs we give it.
    pub origin: Option<Arc<str>>,
}

/// New admin labels, and where to send the agent's record once they are set.
pub type LabelsRequest = (BTreeMap<String, String>, oneshot::Sender<Arc<AgentRecord>>);

/// An admin's request of the session, and where its outcome goes: the agent's record, or why
/// it cannot be done.
pub type AdminRequest = (Event, oneshot::Sender<Result<Arc<AgentRecord>, Refused>>);

/// What an actor's mailbox carries. Kept to two words: a channel allocates its slots in
/// blocks, so every idle agent pays for the largest variant many times over.
#[derive(Debug)]
pub enum Command {
    Report(Box<Delivery>),
    ConnectionClosed {
        conn: ConnId,
        reason: Box<str>,
    },
    SetLabels(Box<LabelsRequest>),
    /// What the rollout controller wants of this agent now.
    Direct(Box<Directive>),
    /// An admin's request: restart, retry a failed configuration, change the admin state,
    /// disconnect, forget.
    Admin(Box<AdminRequest>),
    /// The fleet's watch found nothing heard from the agent for its grace period.
    Silence,
}

/// What every actor shares: settings, metrics and the store's write buffer.
pub struct AgentContext {
    pub session: Arc<SessionConfig>,
    /// Component sets agents reported, by hash; shared by every actor and the controller.
    pub components: Arc<DashMap<ContentHash, Arc<ComponentSet>>>,
    pub metrics: Arc<Metrics>,
    pub writes: Arc<WriteBuffer>,
    pub cancel: CancellationToken,
    /// Bumped whenever any agent publishes a changed record, so the rollout controller can
    /// tell a quiet fleet (heartbeats only) from one it must look at again.
    pub changes: Arc<AtomicU64>,
    /// The agents whose records changed since the rollout controller last looked, so it can
    /// look at those alone (a fleet with churn changes somewhere all the time). Added to
    /// before `changes` is bumped.
    pub changed: Arc<parking_lot::Mutex<std::collections::HashSet<InstanceUid>>>,
    /// The agents deleted since the rollout controller last looked, for it to forget.
    pub forgotten: Arc<parking_lot::Mutex<std::collections::HashSet<InstanceUid>>>,
    /// Agents watched for silence; see [`Fleet::spawn_silence_watch`](crate::tasks::fleet::Fleet).
    pub silence: SilenceWatch,
}

/// What the router and the API read of an agent without asking its actor: facts about its
/// live connection, and its latest published record.
pub struct LinkState {
    /// The actor's latest record; replaced whole on every change.
    record: arc_swap::ArcSwap<AgentRecord>,
    /// The record's capabilities, for the heartbeat fast path to read without the record.
    capabilities: AtomicU64,
    /// The WebSocket connection the agent is attached to, [`POLLING`] while it polls over
    /// plain HTTP, 0 while it has neither.
    link: AtomicU64,
    /// `u64::MAX` until the first message.
    last_seq: AtomicU64,
    /// When the last message came (kept here, not in the record, so a heartbeat publishes
    /// nothing), and the fleet's watch for silence.
    watched: silence::Watched,
    /// While the actor has nothing to add to a bare heartbeat on its WebSocket: the sequence
    /// number it last saw. The transport answers a heartbeat numbered one more by itself and
    /// advances this, so the actor is not woken for it. [`NOT_QUIET`] otherwise.
    quiet_after: AtomicU64,
    /// The longest gap between heartbeats the transport answered, in milliseconds, for the
    /// actor to learn the agent's interval from.
    answered_gap_ms: AtomicI64,
    /// The actor has stopped (the agent was deleted).
    gone: std::sync::atomic::AtomicBool,
}

/// The actor wants to see every message.
const NOT_QUIET: u64 = u64::MAX;

impl LinkState {
    fn new(record: Arc<AgentRecord>) -> Self {
        Self {
            capabilities: AtomicU64::new(record.capabilities.bits()),
            record: arc_swap::ArcSwap::new(record),
            link: AtomicU64::new(0),
            last_seq: AtomicU64::new(u64::MAX),
            watched: silence::Watched::default(),
            quiet_after: AtomicU64::new(NOT_QUIET),
            answered_gap_ms: AtomicI64::new(0),
            gone: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The capabilities the agent last reported.
    pub fn capabilities(&self) -> crate::core::domain::AgentCapabilities {
        crate::core::domain::AgentCapabilities::from_bits_retain(
            self.capabilities.load(Ordering::Acquire),
        )
    }

    fn publish(&self, record: Arc<AgentRecord>) {
        self.capabilities
            .store(record.capabilities.bits(), Ordering::Release);
        self.record.store(record);
    }

    /// Claims a bare heartbeat numbered `seq` on connection `conn` ([`POLLING`]: a plain-HTTP
    /// poll) for the transport to answer without the actor: only while the actor is quiet, on
    /// the link it is attached to, and in sequence (a gap goes to the actor, which asks for
    /// the full state). The heartbeat counts as heard.
    pub fn claim_heartbeat(&self, conn: ConnId, seq: u64) -> bool {
        if seq == 0 || conn == 0 || self.link.load(Ordering::Acquire) != conn {
            return false;
        }
        if self
            .quiet_after
            .compare_exchange(seq - 1, seq, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.last_seq.store(seq, Ordering::Release);
        let now = Utc::now().timestamp_millis();
        let before = self.watched.last_seen_ms.swap(now, Ordering::AcqRel);
        if before != i64::MIN {
            self.answered_gap_ms
                .fetch_max(now.saturating_sub(before), Ordering::AcqRel);
        }
        true
    }

    /// Takes the transport's heartbeats back: the last sequence number it answered, if any,
    /// and the longest gap between them. Until [`LinkState::set_quiet`], every message goes
    /// to the actor.
    fn take_answered(&self) -> (Option<u64>, Option<Duration>) {
        let last = self.quiet_after.swap(NOT_QUIET, Ordering::AcqRel);
        let gap = self.answered_gap_ms.swap(0, Ordering::AcqRel);
        (
            (last != NOT_QUIET).then_some(last),
            (gap > 0).then(|| Duration::from_millis(gap as u64)),
        )
    }

    /// Lets the transport answer heartbeats after `seq` (or, with `None`, none).
    fn set_quiet(&self, seq: Option<u64>) {
        self.quiet_after
            .store(seq.unwrap_or(NOT_QUIET), Ordering::Release);
    }

    fn seen(&self, at: DateTime<Utc>) {
        self.watched.seen(at.timestamp_millis());
    }

    fn stopped(&self) {
        self.gone.store(true, Ordering::Release);
    }

    /// The agent's actor has stopped: it was deleted.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// The agent is attached to WebSocket `conn` ([`POLLING`]: polls over plain HTTP; 0:
    /// neither).
    fn attach(&self, conn: ConnId) {
        self.link.store(conn, Ordering::Release);
    }

    fn set_last_seq(&self, seq: u64) {
        self.last_seq.store(seq, Ordering::Release);
    }

    fn watched(&self) -> &silence::Watched {
        &self.watched
    }

    /// When the agent last sent anything (the epoch if never, in this process).
    pub fn last_seen(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.watched.last_seen_ms.load(Ordering::Acquire))
            .unwrap_or_default()
    }

    /// The WebSocket connection the agent is attached to, if any.
    pub fn ws_conn(&self) -> Option<ConnId> {
        match self.link.load(Ordering::Acquire) {
            0 | POLLING => None,
            conn => Some(conn),
        }
    }

    /// Whether `seq` continues the agent's numbering (so it is the same agent speaking).
    pub fn continues(&self, seq: u64) -> bool {
        let last = self.last_seq.load(Ordering::Acquire);
        last != u64::MAX && last.wrapping_add(1) == seq
    }
}

#[derive(Clone)]
pub struct AgentHandle {
    mailbox: crate::channel::Sender<Command>,
    link: Arc<LinkState>,
}

#[derive(Debug, thiserror::Error)]
#[error("agent actor has stopped")]
pub struct ActorGone;

impl AgentHandle {
    /// Starts the actor for `record` (a new agent, or one read back from the store).
    pub fn spawn(
        record: AgentRecord,
        is_new: bool,
        ctx: Arc<AgentContext>,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (mailbox, inbox) = crate::channel::bounded(MAILBOX_CAPACITY);
        let (session, first) = AgentSession::new(record, is_new, ctx.session.clone(), Utc::now());
        let link = Arc::new(LinkState::new(session.record().clone()));
        let actor = actor::AgentActor::new(session, first, ctx, link.clone());
        tracker.spawn(actor.run(inbox));
        Self { mailbox, link }
    }

    pub async fn send(&self, cmd: Command) -> Result<(), ActorGone> {
        self.mailbox.send(cmd).await.map_err(|_| ActorGone)
    }

    /// Sends `cmd`, or gives it back when the actor has stopped.
    pub async fn deliver(&self, cmd: Command) -> Result<(), Command> {
        self.mailbox.send(cmd).await.map_err(|closed| closed.0)
    }

    /// Whether both handles lead to the same actor.
    pub fn same(&self, other: &AgentHandle) -> bool {
        Arc::ptr_eq(&self.link, &other.link)
    }

    /// Tells the actor its agent has been silent for its grace period; `false` when the
    /// mailbox is full.
    pub fn tell_silent(&self) -> bool {
        self.mailbox.try_send(Command::Silence).is_ok()
    }

    /// Hands over a directive without waiting; `false` when the mailbox is full (try later).
    pub fn try_direct(&self, directive: Directive) -> bool {
        self.mailbox
            .try_send(Command::Direct(Box::new(directive)))
            .is_ok()
    }

    /// The agent's latest published state; its `last_seen` may lag behind heartbeats.
    pub fn record(&self) -> Arc<AgentRecord> {
        self.link.record.load_full()
    }

    /// The agent's latest published record, borrowed for a quick look (a scan over the fleet)
    /// without touching its reference count.
    pub fn peek(&self) -> impl std::ops::Deref<Target = Arc<AgentRecord>> + '_ {
        self.link.record.load()
    }

    /// The agent's latest state, with `last_seen` up to the last heartbeat.
    pub fn snapshot(&self) -> Arc<AgentRecord> {
        let record = self.record();
        let seen = self.link.last_seen();
        if seen <= record.last_seen {
            return record;
        }
        let mut fresh = (*record).clone();
        fresh.last_seen = seen;
        Arc::new(fresh)
    }

    pub fn link(&self) -> &LinkState {
        &self.link
    }

    pub async fn set_labels(
        &self,
        labels: BTreeMap<String, String>,
    ) -> Result<Arc<AgentRecord>, ActorGone> {
        let (done, rx) = oneshot::channel();
        self.send(Command::SetLabels(Box::new((labels, done))))
            .await?;
        rx.await.map_err(|_| ActorGone)
    }

    /// Asks the agent's session to act for an admin (`Event::Restart`, `RetryConfig`,
    /// `SetAdminState`, `Disconnect`, `Forget`). `Err` says why it cannot.
    pub async fn admin(
        &self,
        event: Event,
    ) -> Result<Result<Arc<AgentRecord>, Refused>, ActorGone> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Admin(Box::new((event, done)))).await?;
        rx.await.map_err(|_| ActorGone)
    }

    /// Sends the Restart command: now over WebSocket, with the next poll over HTTP.
    pub async fn restart(&self) -> Result<Result<Arc<AgentRecord>, Refused>, ActorGone> {
        self.admin(Event::Restart).await
    }

    /// Sends the agent's failed configuration again (now over WebSocket, with the next poll
    /// over HTTP). `Err` says why there is nothing to retry.
    pub async fn retry_config(&self) -> Result<Result<Arc<AgentRecord>, Refused>, ActorGone> {
        self.admin(Event::RetryConfig).await
    }

    pub fn uid(&self) -> InstanceUid {
        self.link.record.load().uid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_slots_stay_small() {
        assert!(
            std::mem::size_of::<Command>() <= 32,
            "{}",
            std::mem::size_of::<Command>()
        );
        assert!(
            std::mem::size_of::<Outgoing>() <= 32,
            "{}",
            std::mem::size_of::<Outgoing>()
        );
    }

    #[test]
    fn the_transport_answers_heartbeats_only_while_quiet_on_the_attached_connection_in_order() {
        let link = LinkState::new(Arc::new(AgentRecord::new(
            InstanceUid::new_v7(),
            Utc::now(),
        )));
        link.attach(7);
        assert!(
            !link.claim_heartbeat(7, 5),
            "the actor has not said it is quiet"
        );
        link.set_quiet(Some(4));
        assert!(!link.claim_heartbeat(8, 5), "another connection");
        assert!(!link.claim_heartbeat(7, 6), "a gap goes to the actor");
        assert!(link.claim_heartbeat(7, 5));
        assert!(link.claim_heartbeat(7, 6));
        assert!(
            !link.claim_heartbeat(7, 6),
            "a repeated number goes to the actor"
        );
        assert!(
            link.continues(7),
            "clone detection sees the answered numbers"
        );
        let (last, _) = link.take_answered();
        assert_eq!(last, Some(6));
        assert!(
            !link.claim_heartbeat(7, 7),
            "taken back until the actor is quiet again"
        );

        // A poll is answered only while the agent polls, not while a WebSocket is attached,
        // and a WebSocket heartbeat not while the agent polls.
        link.set_quiet(Some(6));
        assert!(!link.claim_heartbeat(POLLING, 7), "attached to a WebSocket");
        link.attach(POLLING);
        assert_eq!(link.ws_conn(), None);
        assert!(!link.claim_heartbeat(7, 7), "the agent polls now");
        assert!(link.claim_heartbeat(POLLING, 7));
        link.attach(0);
        assert!(!link.claim_heartbeat(POLLING, 8), "neither");
        assert!(!link.claim_heartbeat(0, 8));
    }

    /// Every agent's actor is a task that waits on this future: its size is paid per agent.
    #[test]
    fn an_idle_actor_stays_small() {
        fn future_size<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(actor::AgentActor::run);
        assert!(size <= 1024, "actor future is {size} bytes");
    }
}
