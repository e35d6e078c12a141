//! Persistence. [`Store`] is what the rest of the server sees; [`SqliteStore`] is the embedded
//! default. A PostgreSQL implementation will sit beside it and pass the same
//! [`conformance`] suite.
//!
//! Actors never wait for the store: they put changes into a [`WriteBuffer`], which coalesces
//! them per agent and is flushed in batches by one task.

mod blobs;
pub mod conformance;
mod sqlite;
mod writer;

use async_trait::async_trait;

use crate::core::config::{ComponentSet, ConfigVersion, Configuration};
use crate::core::domain::{AgentRecord, ConfigMap, ContentHash, HistoryEntry, InstanceUid};
use crate::core::packages::Package;
use crate::core::rollout::{Phase, Rollout};

pub use blobs::{BlobError, BlobStore};
pub use sqlite::SqliteStore;
pub use writer::{FLUSH_INTERVAL, WriteBuffer, run_flusher};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row for agent {uid}: {detail}")]
    Corrupt { uid: String, detail: String },
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// Changes to write together, in one transaction.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Latest state of each changed agent (its history is written from `history`, not here).
    pub agents: Vec<std::sync::Arc<AgentRecord>>,
    /// New status changes, oldest first.
    pub history: Vec<(InstanceUid, HistoryEntry)>,
    /// Effective configurations by hash, written once each.
    pub effective_configs: Vec<(ContentHash, ConfigMap)>,
    /// Component sets agents reported, by hash, written once each.
    pub component_sets: Vec<(ContentHash, ComponentSet)>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.history.is_empty()
            && self.effective_configs.is_empty()
            && self.component_sets.is_empty()
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every known agent, each with its most recent history (oldest first, at most
    /// [`crate::core::domain::HISTORY_LIMIT`] entries).
    async fn load_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Writes a batch atomically. Agents are upserted; history beyond the limit is pruned.
    async fn write(&self, batch: &WriteBatch) -> Result<(), StoreError>;

    async fn effective_config(&self, hash: &ContentHash) -> Result<Option<ConfigMap>, StoreError>;

    async fn load_component_sets(&self) -> Result<Vec<(ContentHash, ComponentSet)>, StoreError>;

    /// Every configuration with all its versions, by name.
    async fn load_configurations(&self) -> Result<Vec<Configuration>, StoreError>;

    /// Creates or updates a configuration's selector and priority and, when given, adds its
    /// next version, atomically.
    async fn save_configuration(
        &self,
        config: &Configuration,
        new_version: Option<&ConfigVersion>,
    ) -> Result<(), StoreError>;

    /// Every rollout with its per-agent progress, oldest first.
    async fn load_rollouts(&self) -> Result<Vec<Rollout>, StoreError>;

    async fn load_packages(&self) -> Result<Vec<Package>, StoreError>;

    /// Adds a package, or replaces the entry with the same name, version, platform and arch.
    async fn save_package(&self, package: &Package) -> Result<(), StoreError>;

    /// Upserts a rollout and the given agents' phases (`None` removes the agent).
    async fn save_rollout(
        &self,
        rollout: &Rollout,
        agents: &[(InstanceUid, Option<Phase>)],
    ) -> Result<(), StoreError>;
}
