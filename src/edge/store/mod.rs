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
use crate::core::domain::{AgentRecord, ContentHash, HistoryEntry, InstanceUid, KeptConfig};
use crate::core::keys::ApiKey;
use crate::core::lifecycle::{Expected, IgnoreRule};
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
    /// The flush a [`WriteBuffer::sync`] waited for failed; the writes stay buffered and are
    /// retried, so they may still land later.
    #[error("buffered writes not stored: {0}")]
    Flush(#[source] std::sync::Arc<StoreError>),
    /// The data directory is another server's, or its database is not a Corral store.
    #[error("{0}")]
    Foreign(String),
    /// The database can be read but not written (a read-only file or file system).
    #[error("cannot write to {path}: {source}")]
    ReadOnly {
        path: String,
        source: std::io::Error,
    },
    /// The buffer is dropped or its flusher has stopped: nothing buffered will be written.
    #[error("the store's write buffer is closed")]
    Closed,
}

/// The agents read back at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub agents: Vec<AgentRecord>,
    /// Rows that could not be read, moved aside: each one's error.
    pub set_aside: Vec<StoreError>,
}

/// Changes to write together, in one transaction. Deletes apply first, so an agent deleted and
/// then heard from again in the same batch keeps its new record.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Agents to remove with their history and rollout progress.
    pub deleted_agents: Vec<InstanceUid>,
    /// Pre-registrations by attributes used up by agents that turned up in this batch.
    pub used_expected: Vec<String>,
    /// Effective configs agents stopped reporting, and those deleted agents' unwritten records
    /// referred to: removed, like those the deleted agents' stored records refer to, when no
    /// agent refers to them any more.
    pub released_configs: Vec<ContentHash>,
    /// Latest state of each changed agent (its history is written from `history`, not here).
    pub agents: Vec<std::sync::Arc<AgentRecord>>,
    /// New status changes, oldest first.
    pub history: Vec<(InstanceUid, HistoryEntry)>,
    /// Effective configurations by hash, written once each.
    pub effective_configs: Vec<(ContentHash, KeptConfig)>,
    /// Component sets agents reported, by hash, written once each.
    pub component_sets: Vec<(ContentHash, ComponentSet)>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.deleted_agents.is_empty()
            && self.used_expected.is_empty()
            && self.released_configs.is_empty()
            && self.agents.is_empty()
            && self.history.is_empty()
            && self.effective_configs.is_empty()
            && self.component_sets.is_empty()
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every known agent, each with its most recent history (oldest first, at most
    /// [`crate::core::domain::HISTORY_LIMIT`] entries). A row that cannot be read is set
    /// aside where an admin can inspect it, and named in [`Loaded::set_aside`]; the rest load.
    async fn load_agents(&self) -> Result<Loaded, StoreError>;

    /// Writes a batch atomically. Deleted agents go first, with everything stored for them
    /// alone (history, rollout progress, effective configs no other agent refers to; an
    /// effective config written in the same batch is kept, since the record that refers to it
    /// may come in the next). Then agents are upserted; history beyond the limit is pruned.
    async fn write(&self, batch: &WriteBatch) -> Result<(), StoreError>;

    async fn effective_config(&self, hash: &ContentHash) -> Result<Option<KeptConfig>, StoreError>;

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

    /// Deletes a configuration with its versions and its rollouts (and their progress),
    /// atomically.
    async fn delete_configuration(&self, name: &str) -> Result<(), StoreError>;

    /// Every rollout with its per-agent progress, oldest first.
    async fn load_rollouts(&self) -> Result<Vec<Rollout>, StoreError>;

    async fn load_packages(&self) -> Result<Vec<Package>, StoreError>;

    /// Adds a package, or replaces the entry with the same name, version, platform and arch.
    async fn save_package(&self, package: &Package) -> Result<(), StoreError>;

    /// Deletes every build of a package version.
    async fn delete_package(&self, name: &str, version: &str) -> Result<(), StoreError>;

    /// Upserts a rollout and the given agents' phases (`None` removes the agent).
    async fn save_rollout(
        &self,
        rollout: &Rollout,
        agents: &[(InstanceUid, Option<Phase>)],
    ) -> Result<(), StoreError>;

    /// Agents pre-registered by identifying attributes, oldest first.
    async fn load_expected(&self) -> Result<Vec<Expected>, StoreError>;

    /// Creates the pre-registration, or replaces the one with the same id.
    async fn save_expected(&self, expected: &Expected) -> Result<(), StoreError>;

    /// Returns whether there was one with this id.
    async fn delete_expected(&self, id: &str) -> Result<bool, StoreError>;

    /// Ignore rules, oldest first.
    async fn load_ignore_rules(&self) -> Result<Vec<IgnoreRule>, StoreError>;

    /// Creates the rule, or replaces the one with the same id.
    async fn save_ignore_rule(&self, rule: &IgnoreRule) -> Result<(), StoreError>;

    /// Returns whether there was one with this id.
    async fn delete_ignore_rule(&self, id: &str) -> Result<bool, StoreError>;

    /// Admin API keys (without the keys: their hashes), oldest first.
    async fn load_api_keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// Adds a key; its id and its hash are each unique.
    async fn save_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// Revokes a key. Returns whether there was one with this id.
    async fn delete_api_key(&self, id: &str) -> Result<bool, StoreError>;

    /// Records when keys were last used; an id no longer stored is passed over.
    async fn touch_api_keys(
        &self,
        used: &[(String, chrono::DateTime<chrono::Utc>)],
    ) -> Result<(), StoreError>;
}
