use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::{Store, WriteBatch};
use crate::core::config::ComponentSet;
use crate::core::domain::{AgentRecord, ConfigMap, ContentHash, HistoryEntry, InstanceUid};
use crate::telemetry::Metrics;

/// How often buffered changes are written. A heartbeat never causes a write by itself.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Pending {
    agents: HashMap<InstanceUid, Arc<AgentRecord>>,
    history: Vec<(InstanceUid, HistoryEntry)>,
    configs: HashMap<ContentHash, ConfigMap>,
    component_sets: HashMap<ContentHash, ComponentSet>,
}

/// Changes waiting for the next flush, coalesced: only an agent's latest record is written.
/// The lock is held for a map insert, never across an await.
#[derive(Default)]
pub struct WriteBuffer {
    pending: Mutex<Pending>,
    /// Configs taken for the write in progress, readable until it lands.
    in_flight: Mutex<HashMap<ContentHash, ConfigMap>>,
}

impl WriteBuffer {
    pub fn agent(&self, record: Arc<AgentRecord>) {
        self.pending.lock().agents.insert(record.uid, record);
    }

    pub fn history(&self, uid: InstanceUid, entry: HistoryEntry) {
        self.pending.lock().history.push((uid, entry));
    }

    pub fn effective_config(&self, hash: ContentHash, config: ConfigMap) {
        self.pending.lock().configs.entry(hash).or_insert(config);
    }

    pub fn component_set(&self, hash: ContentHash, set: ComponentSet) {
        self.pending
            .lock()
            .component_sets
            .entry(hash)
            .or_insert(set);
    }

    /// An effective config not written yet, so readers need not wait for the flush.
    pub fn unwritten_config(&self, hash: &ContentHash) -> Option<ConfigMap> {
        if let Some(config) = self.pending.lock().configs.get(hash) {
            return Some(config.clone());
        }
        self.in_flight.lock().get(hash).cloned()
    }

    fn take(&self) -> WriteBatch {
        let mut guard = self.pending.lock();
        let pending = std::mem::take(&mut *guard);
        if !pending.configs.is_empty() {
            // Still under the pending lock, so a reader always finds the config somewhere.
            self.in_flight.lock().clone_from(&pending.configs);
        }
        drop(guard);
        WriteBatch {
            agents: pending.agents.into_values().collect(),
            history: pending.history,
            effective_configs: pending.configs.into_iter().collect(),
            component_sets: pending.component_sets.into_iter().collect(),
        }
    }

    /// Puts a batch that failed to write back in front of what came since, so nothing is
    /// lost and newer agent records still win.
    fn restore(&self, batch: WriteBatch) {
        let mut pending = self.pending.lock();
        for record in batch.agents {
            pending.agents.entry(record.uid).or_insert(record);
        }
        let newer = std::mem::replace(&mut pending.history, batch.history);
        pending.history.extend(newer);
        for (hash, config) in batch.effective_configs {
            pending.configs.entry(hash).or_insert(config);
        }
        for (hash, set) in batch.component_sets {
            pending.component_sets.entry(hash).or_insert(set);
        }
    }

    /// Writes what is pending. On failure the batch stays buffered for the next try.
    pub async fn flush(&self, store: &dyn Store, metrics: &Metrics) -> bool {
        let batch = self.take();
        if batch.is_empty() {
            return true;
        }
        let written = store.write(&batch).await;
        let ok = match written {
            Ok(()) => {
                metrics.store_flushes.inc();
                true
            }
            Err(error) => {
                metrics.store_errors.inc();
                tracing::error!(%error, agents = batch.agents.len(), "store write failed; will retry");
                self.restore(batch);
                false
            }
        };
        self.in_flight.lock().clear();
        ok
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
}
