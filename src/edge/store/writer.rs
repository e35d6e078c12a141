use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, WriteBatch};
use crate::core::config::ComponentSet;
use crate::core::domain::{
    AgentRecord, ContentHash, HISTORY_LIMIT, HistoryEntry, InstanceUid, KeptConfig,
};
use crate::telemetry::Metrics;

/// How often buffered changes are written. A heartbeat never causes a write by itself.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Pending {
    /// Agents deleted since the last flush; whatever else is pending for them came after.
    deleted: HashSet<InstanceUid>,
    used_expected: Vec<String>,
    released_configs: HashSet<ContentHash>,
    agents: HashMap<InstanceUid, Arc<AgentRecord>>,
    /// Per agent so a delete drops an agent's entries without walking everyone's.
    history: HashMap<InstanceUid, Vec<HistoryEntry>>,
    configs: HashMap<ContentHash, KeptConfig>,
    component_sets: HashMap<ContentHash, ComponentSet>,
}

struct Queue {
    pending: Pending,
    /// Configs released before the last batch was taken, for the next one. A release waits
    /// one flush: the record of an agent that just reported a config is buffered after the
    /// config, so it may land one flush later, and until then only the config says the
    /// agent uses it.
    releasing: HashSet<ContentHash>,
    /// Flushes that have taken their batch. Counted under the same lock as the writes, so a
    /// [`WriteBuffer::sync`] knows which flush is the first to include everything before it.
    begun: u64,
}

/// How the latest flush ended, for [`WriteBuffer::sync`].
#[derive(Clone, Default)]
struct Flushed {
    seq: u64,
    error: Option<Arc<StoreError>>,
    /// The flusher has stopped: no flush will come.
    closed: bool,
}

/// Changes waiting for the next flush, coalesced: only an agent's latest record is written.
/// The lock is held for a map insert, never across an await.
pub struct WriteBuffer {
    queue: Mutex<Queue>,
    /// Configs taken for the write in progress, readable until it lands.
    in_flight: Mutex<HashMap<ContentHash, KeptConfig>>,
    flushed: watch::Sender<Flushed>,
}

impl Default for WriteBuffer {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: Pending::default(),
                releasing: HashSet::new(),
                begun: 0,
            }),
            in_flight: Mutex::default(),
            flushed: watch::Sender::new(Flushed::default()),
        }
    }
}

impl WriteBuffer {
    pub fn agent(&self, record: Arc<AgentRecord>) {
        self.queue.lock().pending.agents.insert(record.uid, record);
    }

    /// A status change to append to the agent's stored history. While the store fails, no
    /// more than the history keeps waits per agent: the oldest go first.
    pub fn history(&self, uid: InstanceUid, entry: HistoryEntry) {
        let mut queue = self.queue.lock();
        let entries = queue.pending.history.entry(uid).or_default();
        if entries.len() >= HISTORY_LIMIT {
            entries.remove(0);
        }
        entries.push(entry);
    }

    /// The error of the latest flush, if it failed: the store is not taking writes.
    pub fn failing(&self) -> Option<Arc<StoreError>> {
        self.flushed.borrow().error.clone()
    }

    pub fn effective_config(&self, hash: ContentHash, config: KeptConfig) {
        self.queue
            .lock()
            .pending
            .configs
            .entry(hash)
            .or_insert(config);
    }

    /// An effective config an agent no longer reports: removed at the next flush unless some
    /// agent still refers to it.
    pub fn release_config(&self, hash: ContentHash) {
        self.queue.lock().pending.released_configs.insert(hash);
    }

    pub fn component_set(&self, hash: ContentHash, set: ComponentSet) {
        self.queue
            .lock()
            .pending
            .component_sets
            .entry(hash)
            .or_insert(set);
    }

    /// Removes the agent from the store at the next flush: its record, history, rollout
    /// progress and the effective configs no other agent refers to. What is pending for it
    /// now is dropped; what comes after (the agent is heard from again) is written after the
    /// delete, in the same flush.
    pub fn delete_agent(&self, uid: InstanceUid) {
        let mut queue = self.queue.lock();
        let pending = &mut queue.pending;
        if let Some(record) = pending.agents.remove(&uid)
            && let Some(hash) = &record.effective_config_hash
        {
            pending.released_configs.insert(hash.clone());
        }
        pending.history.remove(&uid);
        pending.deleted.insert(uid);
    }

    /// Removes a pre-registration by attributes that an agent used up, in the flush that
    /// writes that agent's first record.
    pub fn delete_expected(&self, id: String) {
        self.queue.lock().pending.used_expected.push(id);
    }

    /// Resolves once everything buffered before the call is committed: after the first flush
    /// that begins after the call. Fails if that flush fails (the writes stay buffered and
    /// are retried) or if no flush will come. Waits up to one [`FLUSH_INTERVAL`] plus the
    /// write; callers that need a bound put a timeout around it.
    pub fn sync(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let target = self.queue.lock().begun + 1;
        let mut flushed = self.flushed.subscribe();
        async move {
            let outcome = flushed
                .wait_for(|f| f.seq >= target || f.closed)
                .await
                .map_err(|_| StoreError::Closed)?
                .clone();
            if outcome.seq < target {
                return Err(StoreError::Closed);
            }
            // A later flush than ours may have ended since; it began after the call too, and a
            // failed flush puts its batch back, so the latest outcome is the one that counts.
            match outcome.error {
                Some(error) => Err(StoreError::Flush(error)),
                None => Ok(()),
            }
        }
    }

    /// An effective config not written yet, so readers need not wait for the flush.
    pub fn unwritten_config(&self, hash: &ContentHash) -> Option<KeptConfig> {
        if let Some(config) = self.queue.lock().pending.configs.get(hash) {
            return Some(config.clone());
        }
        self.in_flight.lock().get(hash).cloned()
    }

    fn take(&self) -> (u64, WriteBatch) {
        let mut queue = self.queue.lock();
        queue.begun += 1;
        let seq = queue.begun;
        let mut pending = std::mem::take(&mut queue.pending);
        let releasing = std::mem::take(&mut pending.released_configs);
        let released = std::mem::replace(&mut queue.releasing, releasing);
        if !pending.configs.is_empty() {
            // Still under the queue lock, so a reader always finds the config somewhere.
            self.in_flight.lock().clone_from(&pending.configs);
        }
        drop(queue);
        let batch = WriteBatch {
            deleted_agents: pending.deleted.into_iter().collect(),
            used_expected: pending.used_expected,
            released_configs: released.into_iter().collect(),
            agents: pending.agents.into_values().collect(),
            history: pending
                .history
                .into_iter()
                .flat_map(|(uid, entries)| entries.into_iter().map(move |e| (uid, e)))
                .collect(),
            effective_configs: pending.configs.into_iter().collect(),
            component_sets: pending.component_sets.into_iter().collect(),
        };
        (seq, batch)
    }

    /// Puts a batch that failed to write back in front of what came since, so nothing is
    /// lost, newer agent records still win, and an agent deleted since stays deleted.
    fn restore(&self, batch: WriteBatch) {
        let mut queue = self.queue.lock();
        let pending = &mut queue.pending;
        for record in batch.agents {
            if pending.deleted.contains(&record.uid) {
                if let Some(hash) = &record.effective_config_hash {
                    pending.released_configs.insert(hash.clone());
                }
            } else {
                pending.agents.entry(record.uid).or_insert(record);
            }
        }
        let mut older: HashMap<InstanceUid, Vec<HistoryEntry>> = HashMap::new();
        for (uid, entry) in batch.history {
            if !pending.deleted.contains(&uid) {
                older.entry(uid).or_default().push(entry);
            }
        }
        for (uid, mut entries) in older {
            let newer = pending.history.remove(&uid).unwrap_or_default();
            entries.extend(newer);
            let excess = entries.len().saturating_sub(HISTORY_LIMIT);
            entries.drain(..excess);
            pending.history.insert(uid, entries);
        }
        // The batch's deletes came before anything pending now, which is what a flush assumes.
        pending.deleted.extend(batch.deleted_agents);
        pending.used_expected.extend(batch.used_expected);
        pending.released_configs.extend(batch.released_configs);
        for (hash, config) in batch.effective_configs {
            pending.configs.entry(hash).or_insert(config);
        }
        for (hash, set) in batch.component_sets {
            pending.component_sets.entry(hash).or_insert(set);
        }
    }

    /// Writes what is pending. On failure the batch stays buffered for the next try.
    ///
    /// Flushes must not overlap (one task flushes, [`run_flusher`]): a failed batch is put back
    /// before the next is taken, which is what [`WriteBuffer::sync`] relies on.
    pub async fn flush(&self, store: &dyn Store, metrics: &Metrics) -> bool {
        let (seq, batch) = self.take();
        // Nothing pending writes nothing, but still ends a flush for `sync` waiters: what they
        // wait for may have been in the flush before.
        let error = if batch.is_empty() {
            None
        } else {
            match store.write(&batch).await {
                Ok(()) => {
                    metrics.store_flushes.inc();
                    None
                }
                Err(error) => {
                    metrics.store_errors.inc();
                    tracing::error!(%error, agents = batch.agents.len(), "store write failed; will retry");
                    self.restore(batch);
                    Some(Arc::new(error))
                }
            }
        };
        self.in_flight.lock().clear();
        let ok = error.is_none();
        self.flushed.send_modify(|f| {
            f.seq = seq;
            f.error = error;
        });
        ok
    }

    /// No flush will come any more: `sync` fails instead of waiting forever.
    fn close(&self) {
        self.flushed.send_modify(|f| f.closed = true);
    }
}

/// Flushes every [`FLUSH_INTERVAL`] until cancelled, then once more.
pub async fn run_flusher(
    buffer: Arc<WriteBuffer>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                buffer.flush(store.as_ref(), &metrics).await;
            }
            _ = cancel.cancelled() => break,
        }
    }
    buffer.flush(store.as_ref(), &metrics).await;
    buffer.close();
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::core::status::Status;

    fn entry(reason: &str) -> HistoryEntry {
        HistoryEntry {
            at: DateTime::<Utc>::default(),
            from: None,
            to: Status::Connected,
            reason: reason.into(),
        }
    }

    fn record(uid: InstanceUid, hash: u8) -> Arc<AgentRecord> {
        Arc::new(AgentRecord {
            effective_config_hash: Some(ContentHash(vec![hash])),
            ..AgentRecord::new(uid, DateTime::<Utc>::default())
        })
    }

    #[test]
    fn a_delete_drops_what_came_before_and_keeps_what_came_after() {
        let buffer = WriteBuffer::default();
        let (uid, other) = (InstanceUid::new_v7(), InstanceUid::new_v7());
        buffer.agent(record(uid, 1));
        buffer.history(uid, entry("before"));
        buffer.agent(record(other, 3));
        buffer.delete_agent(uid);
        buffer.agent(record(uid, 2));
        buffer.history(uid, entry("after"));
        let (_, batch) = buffer.take();
        assert_eq!(batch.deleted_agents, vec![uid]);
        assert!(batch.released_configs.is_empty(), "a release waits a flush");
        assert_eq!(batch.agents.len(), 2);
        assert!(batch.agents.contains(&record(uid, 2)));
        assert_eq!(batch.history, vec![(uid, entry("after"))]);
        let (_, next) = buffer.take();
        assert_eq!(next.released_configs, vec![ContentHash(vec![1])]);
    }

    #[test]
    fn a_failed_batch_goes_back_behind_a_delete_made_since() {
        let buffer = WriteBuffer::default();
        let (uid, other) = (InstanceUid::new_v7(), InstanceUid::new_v7());
        buffer.agent(record(uid, 1));
        buffer.history(uid, entry("before"));
        buffer.agent(record(other, 3));
        buffer.history(other, entry("old"));
        let (_, failed) = buffer.take();
        // While the batch was being written: the agent is deleted and comes back.
        buffer.delete_agent(uid);
        buffer.agent(record(uid, 2));
        buffer.history(uid, entry("after"));
        buffer.history(other, entry("new"));
        buffer.restore(failed);
        let (_, batch) = buffer.take();
        assert_eq!(batch.deleted_agents, vec![uid]);
        assert_eq!(
            buffer.take().1.released_configs,
            vec![ContentHash(vec![1])],
            "the unwritten record's config is released, a flush later"
        );
        let mut agents = batch.agents.clone();
        agents.sort_by_key(|a| a.uid);
        assert_eq!(agents, vec![record(uid, 2), record(other, 3)]);
        let history = |u| {
            batch
                .history
                .iter()
                .filter(|(h, _)| *h == u)
                .map(|(_, e)| e.reason.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            history(uid),
            vec!["after"],
            "history before the delete is dropped"
        );
        assert_eq!(
            history(other),
            vec!["old", "new"],
            "older history goes first"
        );
    }

    #[test]
    fn a_failed_delete_is_retried_before_what_came_since() {
        let buffer = WriteBuffer::default();
        let uid = InstanceUid::new_v7();
        buffer.delete_agent(uid);
        let (_, failed) = buffer.take();
        buffer.agent(record(uid, 2));
        buffer.restore(failed);
        let (_, batch) = buffer.take();
        assert_eq!(batch.deleted_agents, vec![uid]);
        assert_eq!(batch.agents, vec![record(uid, 2)]);
    }

    #[tokio::test]
    async fn sync_fails_once_the_flusher_has_stopped() {
        let buffer = WriteBuffer::default();
        let waiting = buffer.sync();
        buffer.close();
        assert!(matches!(waiting.await, Err(StoreError::Closed)));
        assert!(matches!(buffer.sync().await, Err(StoreError::Closed)));
    }
}
