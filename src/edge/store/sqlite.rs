use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prost::Message;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool};

use super::{Loaded, Store, StoreError, WriteBatch};
use crate::core::config::{ComponentSet, ConfigVersion, Configuration, Selector};
use crate::core::domain::{
    AgentCapabilities, AgentRecord, ContentHash, HISTORY_LIMIT, HistoryEntry, InstanceUid,
    KeptConfig, RemoteConfigState, RemoteConfigStatus, Transport,
};
use crate::core::keys::{ApiKey, KeyHash, Role};
use crate::core::lifecycle::{AdminState, Expected, IgnoreRule};
use crate::core::packages::Package;
use crate::core::rollout::{
    ConfigPayload, PackagePayload, Params, Payload, Phase, Progress, Rollout, State,
};
use crate::core::status::Status;
use crate::edge::protocol::{self, proto};

const DB_FILE: &str = "corral.db";
const POOL_SIZE: u32 = 4;
/// Rows one batched statement writes: at most 20 bound values each (an agent row), so at
/// most 20,000 in a statement, under SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 1000;
// Batched statements are built with `persistent(false)`: their text changes with the row count,
// and a cached compiled 1,000-row statement holds about a megabyte on each pooled connection.

/// Held while a server uses the data directory.
const LOCK_FILE: &str = "corral.lock";

/// The embedded store: one SQLite database in the data directory.
pub struct SqliteStore {
    pool: SqlitePool,
    /// An exclusive lock on the data directory for as long as the store is open: two servers
    /// on one directory would each think they own every agent.
    _lock: std::fs::File,
}

impl SqliteStore {
    /// Opens the database in `data_dir` and brings its schema up to date. A new data directory
    /// gets a new store; an existing database file must be a Corral store.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        match Self::lock(data_dir)? {
            Some(lock) => Self::open_locked(data_dir, lock).await,
            None => Err(StoreError::Foreign(format!(
                "another Corral server is using {}",
                data_dir.display()
            ))),
        }
    }

    /// Takes the data directory's lock, creating the directory if need be; `None` when another
    /// process holds it.
    fn lock(data_dir: &Path) -> Result<Option<std::fs::File>, StoreError> {
        let dir_error = |source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(dir_error)?;
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join(LOCK_FILE))
            .map_err(dir_error)?;
        match lock.try_lock() {
            Ok(()) => Ok(Some(lock)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(dir_error(source)),
        }
    }

    async fn open_locked(data_dir: &Path, lock: std::fs::File) -> Result<Self, StoreError> {
        let file = data_dir.join(DB_FILE);
        let existed = match std::fs::metadata(&file) {
            Ok(meta) if meta.len() == 0 => {
                return Err(StoreError::Foreign(format!(
                    "{} is empty, not a Corral store: move it away to start afresh",
                    file.display()
                )));
            }
            Ok(_) => {
                // SQLite opens a file it may not write read-only without a word, and a store
                // that cannot write loses every change: find out now.
                std::fs::File::options()
                    .write(true)
                    .open(&file)
                    .map_err(|source| StoreError::ReadOnly {
                        path: file.display().to_string(),
                        source,
                    })?;
                true
            }
            Err(_) => false,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await?;
        if existed {
            let ours: Option<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_optional(&pool)
            .await?;
            if ours.is_none() {
                return Err(StoreError::Foreign(format!(
                    "{} is not a Corral store: move it away to start afresh",
                    file.display()
                )));
            }
        }
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self { pool, _lock: lock })
    }

    /// Adds an API key to the store in `data_dir` from outside the server, whether or not a
    /// server has it open. With no server there, the store is opened as a server opens it
    /// (lock, migrations). With one there, the key is written beside it through a connection
    /// of its own, without the directory's lock: SQLite serializes the two writers, and the
    /// server learns of the key when it is first used (see `Keys::reload` in the API).
    pub async fn add_api_key(data_dir: &Path, key: &ApiKey) -> Result<(), StoreError> {
        if let Some(lock) = Self::lock(data_dir)? {
            let store = Self::open_locked(data_dir, lock).await?;
            store.save_api_key(key).await?;
            store.pool.close().await;
            return Ok(());
        }
        let file = data_dir.join(DB_FILE);
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&file)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'api_keys'",
        )
        .fetch_optional(&pool)
        .await?;
        if table.is_none() {
            pool.close().await;
            return Err(StoreError::Foreign(format!(
                "the server using {} has no API keys (an older version): stop it and try again",
                data_dir.display()
            )));
        }
        let saved = insert_api_key(&pool, key).await;
        pool.close().await;
        saved
    }
}

async fn insert_api_key(pool: &SqlitePool, key: &ApiKey) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, role, key_hash, created_at_ms, expires_at_ms,
            last_used_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&key.id)
    .bind(&key.name)
    .bind(key.role.as_str())
    .bind(key.hash.0.to_vec())
    .bind(millis(key.created_at))
    .bind(key.expires_at.map(millis))
    .bind(key.last_used_at.map(millis))
    .execute(pool)
    .await?;
    Ok(())
}

fn component_set_json(set: &ComponentSet) -> String {
    let mut map: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for (kind, type_) in set.iter() {
        map.entry(kind).or_default().push(type_);
    }
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

fn component_set_from_json(body: &str) -> Result<ComponentSet, serde_json::Error> {
    let map: std::collections::BTreeMap<String, Vec<String>> = serde_json::from_str(body)?;
    let mut set = ComponentSet::new();
    for (kind, types) in &map {
        for t in types {
            set.insert(kind, t);
        }
    }
    Ok(set)
}

/// The tables with rows about one agent (by `instance_uid`): deleting an agent empties them all.
const AGENT_TABLES: [&str; 3] = ["agents", "agent_history", "rollout_agents"];

/// Appends `(?, ?, ...)`, one bound uid each.
fn push_uids(query: &mut sqlx::QueryBuilder<'_, Sqlite>, uids: &[InstanceUid]) {
    query.push("(");
    let mut list = query.separated(", ");
    for uid in uids {
        list.push_bind(uid.as_bytes().to_vec());
    }
    list.push_unseparated(")");
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn corrupt(uid: &[u8], detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        uid: hex::encode(uid),
        detail: detail.to_string(),
    }
}

fn parse_status(uid: &[u8], s: &str) -> Result<Status, StoreError> {
    Status::parse(s).ok_or_else(|| corrupt(uid, format!("unknown status {s:?}")))
}

impl SqliteStore {
    /// Moves an agent row that cannot be read to `agents_set_aside`, every column as an SQL
    /// literal, with why: the agent starts afresh if it comes back, and the row stays for an
    /// admin to inspect.
    async fn set_aside(&self, uid: &[u8], error: &StoreError) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO agents_set_aside (instance_uid, set_aside_ms, problem, row_json)
             SELECT instance_uid, ?, ?, json_object(
                 'status', quote(status), 'status_reason', quote(status_reason), 'transport',
                 quote(transport), 'labels', quote(labels), 'description', quote(description),
                 'capabilities', quote(capabilities), 'health', quote(health),
                 'effective_config_hash', quote(effective_config_hash), 'remote_config_hash',
                 quote(remote_config_hash), 'remote_config_status', quote(remote_config_status),
                 'remote_config_error', quote(remote_config_error), 'last_seen_ms',
                 quote(last_seen_ms), 'connected_at_ms', quote(connected_at_ms),
                 'applied_config_hash', quote(applied_config_hash), 'admin_state',
                 quote(admin_state), 'pre_registered', quote(pre_registered))
             FROM agents WHERE instance_uid = ?",
        )
        .bind(Utc::now().timestamp_millis())
        .bind(error.to_string())
        .bind(uid)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM agents WHERE instance_uid = ?")
            .bind(uid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AgentRecord, StoreError> {
    let uid_bytes: Vec<u8> = row.try_get("instance_uid")?;
    let uid = InstanceUid::from_bytes(&uid_bytes).map_err(|e| corrupt(&uid_bytes, e))?;
    let status = parse_status(&uid_bytes, row.try_get("status")?)?;
    let admin_state: &str = row.try_get("admin_state")?;
    let admin_state = AdminState::from_stored(admin_state)
        .ok_or_else(|| corrupt(&uid_bytes, format!("unknown admin state {admin_state:?}")))?;
    let transport: Option<String> = row.try_get("transport")?;
    let labels: String = row.try_get("labels")?;
    let labels = serde_json::from_str(&labels).map_err(|e| corrupt(&uid_bytes, e))?;
    let description: Vec<u8> = row.try_get("description")?;
    let description = proto::AgentDescription::decode(description.as_slice())
        .map_err(|e| corrupt(&uid_bytes, e))?;
    let health: Option<Vec<u8>> = row.try_get("health")?;
    let health = match health {
        Some(bytes) => Some(Arc::new(
            protocol::health_report_from_bytes(&bytes).map_err(|e| corrupt(&uid_bytes, e))?,
        )),
        None => None,
    };
    let rc_hash: Option<Vec<u8>> = row.try_get("remote_config_hash")?;
    let rc_status: Option<String> = row.try_get("remote_config_status")?;
    let remote_config = match (rc_hash, rc_status) {
        (Some(hash), Some(status)) => Some(RemoteConfigState {
            hash: ContentHash(hash),
            status: RemoteConfigStatus::parse(&status)
                .ok_or_else(|| corrupt(&uid_bytes, format!("unknown config status {status:?}")))?,
            error: row
                .try_get::<Option<String>, _>("remote_config_error")?
                .unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(AgentRecord {
        uid,
        status,
        admin_state,
        pre_registered: row.try_get("pre_registered")?,
        status_reason: row.try_get("status_reason")?,
        transport: transport.as_deref().and_then(Transport::parse),
        labels,
        description: Arc::new(protocol::description_from_proto(description)),
        capabilities: AgentCapabilities::from_bits_retain(
            row.try_get::<i64, _>("capabilities")? as u64
        ),
        health,
        effective_config_hash: row
            .try_get::<Option<Vec<u8>>, _>("effective_config_hash")?
            .map(ContentHash),
        remote_config,
        offered_config_hash: row
            .try_get::<Option<Vec<u8>>, _>("offered_config_hash")?
            .map(ContentHash),
        components_hash: row
            .try_get::<Option<Vec<u8>>, _>("components_hash")?
            .map(ContentHash),
        packages: match row.try_get::<Option<Vec<u8>>, _>("packages")? {
            Some(bytes) => Some(Arc::new(protocol::packages_from_proto(
                proto::PackageStatuses::decode(bytes.as_slice())
                    .map_err(|e| corrupt(&uid_bytes, e))?,
            ))),
            None => None,
        },
        offered_package_hash: row
            .try_get::<Option<Vec<u8>>, _>("offered_package_hash")?
            .map(ContentHash),
        applied_config_hash: row
            .try_get::<Option<Vec<u8>>, _>("applied_config_hash")?
            .map(ContentHash),
        last_seen: from_millis(row.try_get("last_seen_ms")?),
        connected_at: row
            .try_get::<Option<i64>, _>("connected_at_ms")?
            .map(from_millis),
        history: Arc::from([]),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn load_agents(&self) -> Result<Loaded, StoreError> {
        let rows = sqlx::query("SELECT * FROM agents ORDER BY instance_uid")
            .fetch_all(&self.pool)
            .await?;
        let mut agents = Vec::with_capacity(rows.len());
        let mut set_aside = Vec::new();
        for row in &rows {
            match record_from_row(row) {
                Ok(record) => agents.push(record),
                Err(error) => {
                    let uid: Vec<u8> = row.try_get("instance_uid")?;
                    self.set_aside(&uid, &error).await?;
                    set_aside.push(error);
                }
            }
        }
        drop(rows);

        let rows = sqlx::query(
            "SELECT instance_uid, at_ms, from_status, to_status, reason
             FROM agent_history ORDER BY instance_uid, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut history: HashMap<Vec<u8>, Vec<HistoryEntry>> = HashMap::new();
        for row in rows {
            let uid: Vec<u8> = row.try_get("instance_uid")?;
            // History is for display: an entry that cannot be read is left out.
            let entry = (|| {
                let from: Option<String> = row.try_get("from_status")?;
                Ok::<_, StoreError>(HistoryEntry {
                    at: from_millis(row.try_get("at_ms")?),
                    from: from.map(|s| parse_status(&uid, &s)).transpose()?,
                    to: parse_status(&uid, row.try_get("to_status")?)?,
                    reason: row.try_get("reason")?,
                })
            })();
            match entry {
                Ok(entry) => history.entry(uid).or_default().push(entry),
                Err(error) => tracing::warn!(%error, "history entry left out"),
            }
        }
        for agent in &mut agents {
            if let Some(mut entries) = history.remove(agent.uid.as_bytes().as_slice()) {
                let excess = entries.len().saturating_sub(HISTORY_LIMIT);
                entries.drain(..excess);
                agent.history = Arc::from(entries);
            }
        }
        Ok(Loaded { agents, set_aside })
    }

    async fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        // Every write transaction takes the write lock as it begins. A deferred one that read
        // first fails at once with "database is locked" when another connection wrote since
        // its snapshot (the busy timeout does not apply then): schemathesis found an admin
        // write answered 500 that way.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Deletes first: the buffer drops what was queued for an agent before its delete, so a
        // record for it in this batch came after (the agent is back) and must survive.
        for id in &batch.used_expected {
            sqlx::query("DELETE FROM expected_agents WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let mut released: Vec<Vec<u8>> =
            batch.released_configs.iter().map(|h| h.0.clone()).collect();
        for chunk in batch.deleted_agents.chunks(ROWS_PER_STATEMENT) {
            let mut query = sqlx::QueryBuilder::<Sqlite>::new(
                "SELECT DISTINCT effective_config_hash FROM agents
                 WHERE effective_config_hash IS NOT NULL AND instance_uid IN ",
            );
            push_uids(&mut query, chunk);
            for row in query.build().persistent(false).fetch_all(&mut *tx).await? {
                released.push(row.try_get(0)?);
            }
            for table in AGENT_TABLES {
                let mut query = sqlx::QueryBuilder::<Sqlite>::new(format!(
                    "DELETE FROM {table} WHERE instance_uid IN "
                ));
                push_uids(&mut query, chunk);
                query.build().persistent(false).execute(&mut *tx).await?;
            }
        }
        // A batch holds whatever changed in the last flush interval, thousands of agents when
        // a wave lands or a fleet reconnects: one statement per chunk, not one per row.
        for chunk in batch.agents.chunks(ROWS_PER_STATEMENT) {
            let mut query = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO agents (instance_uid, status, status_reason, transport, labels,
                    description, capabilities, health, effective_config_hash, remote_config_hash,
                    remote_config_status, remote_config_error, last_seen_ms, connected_at_ms,
                    offered_config_hash, components_hash, packages, offered_package_hash,
                    applied_config_hash, admin_state, pre_registered) ",
            );
            query.push_values(chunk, |mut row, agent| {
                let hash = |h: &Option<ContentHash>| h.as_ref().map(|h| h.0.clone());
                row.push_bind(agent.uid.as_bytes().to_vec())
                    .push_bind(agent.status.as_str())
                    .push_bind(agent.status_reason.clone())
                    .push_bind(agent.transport.map(Transport::as_str))
                    .push_bind(serde_json::to_string(&agent.labels).unwrap_or_else(|_| "{}".into()))
                    .push_bind(protocol::description_to_proto(&agent.description).encode_to_vec())
                    .push_bind(agent.capabilities.bits() as i64)
                    .push_bind(agent.health.as_deref().map(|h| h.encoded.to_vec()))
                    .push_bind(hash(&agent.effective_config_hash))
                    .push_bind(agent.remote_config.as_ref().map(|rc| rc.hash.0.clone()))
                    .push_bind(agent.remote_config.as_ref().map(|rc| rc.status.as_str()))
                    .push_bind(agent.remote_config.as_ref().map(|rc| rc.error.clone()))
                    .push_bind(millis(agent.last_seen))
                    .push_bind(agent.connected_at.map(millis))
                    .push_bind(hash(&agent.offered_config_hash))
                    .push_bind(hash(&agent.components_hash))
                    .push_bind(
                        agent
                            .packages
                            .as_deref()
                            .map(|p| protocol::packages_to_proto(p).encode_to_vec()),
                    )
                    .push_bind(hash(&agent.offered_package_hash))
                    .push_bind(hash(&agent.applied_config_hash))
                    .push_bind(agent.admin_state.to_stored())
                    .push_bind(agent.pre_registered);
            });
            query.push(
                " ON CONFLICT (instance_uid) DO UPDATE SET
                    status = excluded.status, status_reason = excluded.status_reason,
                    transport = excluded.transport, labels = excluded.labels,
                    description = excluded.description, capabilities = excluded.capabilities,
                    health = excluded.health, effective_config_hash = excluded.effective_config_hash,
                    remote_config_hash = excluded.remote_config_hash,
                    remote_config_status = excluded.remote_config_status,
                    remote_config_error = excluded.remote_config_error,
                    last_seen_ms = excluded.last_seen_ms, connected_at_ms = excluded.connected_at_ms,
                    offered_config_hash = excluded.offered_config_hash,
                    components_hash = excluded.components_hash,
                    packages = excluded.packages,
                    offered_package_hash = excluded.offered_package_hash,
                    applied_config_hash = excluded.applied_config_hash,
                    admin_state = excluded.admin_state,
                    pre_registered = excluded.pre_registered",
            );
            query.build().persistent(false).execute(&mut *tx).await?;
        }
        for chunk in batch.history.chunks(ROWS_PER_STATEMENT) {
            let mut query = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO agent_history (instance_uid, at_ms, from_status, to_status, reason) ",
            );
            query.push_values(chunk, |mut row, (uid, entry)| {
                row.push_bind(uid.as_bytes().to_vec())
                    .push_bind(millis(entry.at))
                    .push_bind(entry.from.map(Status::as_str))
                    .push_bind(entry.to.as_str())
                    .push_bind(entry.reason.clone());
            });
            query.build().persistent(false).execute(&mut *tx).await?;
        }
        let mut touched: Vec<InstanceUid> = batch.history.iter().map(|(uid, _)| *uid).collect();
        touched.sort_unstable();
        touched.dedup();
        for chunk in touched.chunks(ROWS_PER_STATEMENT) {
            // Keep the newest HISTORY_LIMIT entries of each agent that got new ones.
            let mut query = sqlx::QueryBuilder::<Sqlite>::new(
                "DELETE FROM agent_history WHERE id IN (
                    SELECT id FROM (
                        SELECT id, ROW_NUMBER() OVER (
                            PARTITION BY instance_uid ORDER BY id DESC) AS newer
                        FROM agent_history WHERE instance_uid IN (",
            );
            let mut list = query.separated(", ");
            for uid in chunk {
                list.push_bind(uid.as_bytes().to_vec());
            }
            list.push_unseparated(")) WHERE newer > ");
            query.push_bind(HISTORY_LIMIT as i64);
            query.push(")");
            query.build().persistent(false).execute(&mut *tx).await?;
        }
        for (hash, config) in &batch.effective_configs {
            let (body, withheld) = match config {
                KeptConfig::Whole(map) => {
                    (protocol::config_map_to_proto(map).encode_to_vec(), None)
                }
                KeptConfig::TooLarge { bytes } => (Vec::new(), Some(*bytes as i64)),
            };
            sqlx::query(
                "INSERT OR IGNORE INTO effective_configs (hash, body, withheld_bytes)
                 VALUES (?, ?, ?)",
            )
            .bind(hash.0.as_slice())
            .bind(body)
            .bind(withheld)
            .execute(&mut *tx)
            .await?;
        }
        for (hash, set) in &batch.component_sets {
            sqlx::query("INSERT OR IGNORE INTO component_sets (hash, body) VALUES (?, ?)")
                .bind(hash.0.as_slice())
                .bind(component_set_json(set))
                .execute(&mut *tx)
                .await?;
        }
        // Last, once this batch's records are in: an effective config a deleted agent referred
        // to goes when no agent refers to it. One written in this batch stays: an agent just
        // reported it, and its record may land in the next flush.
        released.sort_unstable();
        released.dedup();
        let written: std::collections::HashSet<&[u8]> = batch
            .effective_configs
            .iter()
            .map(|(hash, _)| hash.0.as_slice())
            .collect();
        released.retain(|hash| !written.contains(hash.as_slice()));
        for chunk in released.chunks(ROWS_PER_STATEMENT) {
            let mut query =
                sqlx::QueryBuilder::<Sqlite>::new("DELETE FROM effective_configs WHERE hash IN (");
            let mut list = query.separated(", ");
            for hash in chunk {
                list.push_bind(hash.as_slice());
            }
            list.push_unseparated(
                ") AND hash NOT IN (
                    SELECT effective_config_hash FROM agents
                    WHERE effective_config_hash IS NOT NULL)",
            );
            query.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn effective_config(&self, hash: &ContentHash) -> Result<Option<KeptConfig>, StoreError> {
        let row = sqlx::query("SELECT body, withheld_bytes FROM effective_configs WHERE hash = ?")
            .bind(hash.0.as_slice())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        if let Some(bytes) = row.try_get::<Option<i64>, _>("withheld_bytes")? {
            return Ok(Some(KeptConfig::TooLarge {
                bytes: bytes.max(0) as u64,
            }));
        }
        let body: Vec<u8> = row.try_get("body")?;
        let map =
            proto::AgentConfigMap::decode(body.as_slice()).map_err(|e| corrupt(&hash.0, e))?;
        Ok(Some(KeptConfig::Whole(protocol::config_map_from_proto(
            map,
        ))))
    }

    async fn load_component_sets(&self) -> Result<Vec<(ContentHash, ComponentSet)>, StoreError> {
        let rows = sqlx::query("SELECT hash, body FROM component_sets")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let hash: Vec<u8> = row.try_get("hash")?;
                let body: String = row.try_get("body")?;
                let set = component_set_from_json(&body).map_err(|e| corrupt(&hash, e))?;
                Ok((ContentHash(hash), set))
            })
            .collect()
    }

    async fn load_configurations(&self) -> Result<Vec<Configuration>, StoreError> {
        let rows = sqlx::query("SELECT * FROM configurations ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut configs = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            let selector: String = row.try_get("selector")?;
            let selector = Selector::parse(&selector).map_err(|e| corrupt(name.as_bytes(), e))?;
            let versions = sqlx::query(
                "SELECT version, files, created_at_ms FROM config_versions WHERE name = ? ORDER BY version",
            )
            .bind(&name)
            .fetch_all(&self.pool)
            .await?;
            let mut loaded = Vec::with_capacity(versions.len());
            for v in versions {
                let files: Vec<u8> = v.try_get("files")?;
                let files = proto::AgentConfigMap::decode(files.as_slice())
                    .map_err(|e| corrupt(name.as_bytes(), e))?;
                let version = ConfigVersion::new(
                    v.try_get::<i64, _>("version")? as u32,
                    protocol::config_map_from_proto(files),
                    from_millis(v.try_get("created_at_ms")?),
                )
                .map_err(|e| corrupt(name.as_bytes(), e))?;
                loaded.push(Arc::new(version));
            }
            configs.push(Configuration {
                selector,
                priority: row.try_get::<i64, _>("priority")? as i32,
                versions: loaded,
                created_at: from_millis(row.try_get("created_at_ms")?),
                updated_at: from_millis(row.try_get("updated_at_ms")?),
                name,
            });
        }
        Ok(configs)
    }

    async fn save_configuration(
        &self,
        config: &Configuration,
        new_version: Option<&ConfigVersion>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO configurations (name, selector, priority, created_at_ms, updated_at_ms)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET selector = excluded.selector,
                priority = excluded.priority, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&config.name)
        .bind(config.selector.to_string())
        .bind(i64::from(config.priority))
        .bind(millis(config.created_at))
        .bind(millis(config.updated_at))
        .execute(&mut *tx)
        .await?;
        if let Some(v) = new_version {
            sqlx::query(
                "INSERT INTO config_versions (name, version, hash, files, created_at_ms)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&config.name)
            .bind(i64::from(v.version))
            .bind(v.hash.0.as_slice())
            .bind(protocol::config_map_to_proto(&v.files).encode_to_vec())
            .bind(millis(v.created_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_configuration(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "DELETE FROM rollout_agents WHERE rollout_id IN
                (SELECT id FROM rollouts WHERE configuration = ? AND package_name IS NULL)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM rollouts WHERE configuration = ? AND package_name IS NULL")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM config_versions WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM configurations WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_package(&self, name: &str, version: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM packages WHERE name = ? AND version = ?")
            .bind(name)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn load_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let rows = sqlx::query("SELECT * FROM rollouts ORDER BY created_at_ms, id")
            .fetch_all(&self.pool)
            .await?;
        let mut rollouts = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let state: String = row.try_get("state")?;
            let state = State::parse(&state).ok_or_else(|| {
                corrupt(id.as_bytes(), format!("unknown rollout state {state:?}"))
            })?;
            let mut agents = std::collections::BTreeMap::new();
            let agent_rows = sqlx::query(
                "SELECT instance_uid, phase, wave, at_ms FROM rollout_agents WHERE rollout_id = ?",
            )
            .bind(&id)
            .fetch_all(&self.pool)
            .await?;
            for a in agent_rows {
                let uid: Vec<u8> = a.try_get("instance_uid")?;
                let uid = InstanceUid::from_bytes(&uid).map_err(|e| corrupt(id.as_bytes(), e))?;
                let tag: String = a.try_get("phase")?;
                let phase = match tag.as_str() {
                    "sent" => Phase::Sent {
                        wave: a.try_get::<Option<i64>, _>("wave")?.unwrap_or(0) as u32,
                        at_ms: a.try_get::<Option<i64>, _>("at_ms")?.unwrap_or(0) as u64,
                    },
                    other => Phase::parse(other).ok_or_else(|| {
                        corrupt(id.as_bytes(), format!("unknown phase {other:?}"))
                    })?,
                };
                agents.insert(uid, phase);
            }
            let payload = match row.try_get::<Option<String>, _>("package_name")? {
                Some(name) => {
                    let selector: String = row
                        .try_get::<Option<String>, _>("selector")?
                        .unwrap_or_default();
                    Payload::Package(PackagePayload {
                        name,
                        version: row
                            .try_get::<Option<String>, _>("package_version")?
                            .unwrap_or_default(),
                        selector: Selector::parse(&selector)
                            .map_err(|e| corrupt(id.as_bytes(), e))?,
                    })
                }
                None => Payload::Config(ConfigPayload {
                    configuration: row.try_get("configuration")?,
                    version: row.try_get::<i64, _>("version")? as u32,
                    // Derived from the version by whoever loads it.
                    hash: ContentHash::default(),
                    previous_version: row
                        .try_get::<Option<i64>, _>("previous_version")?
                        .map(|v| v as u32),
                }),
            };
            rollouts.push(Rollout {
                payload,
                params: Params {
                    initial: row.try_get::<i64, _>("initial")? as u32,
                    multiplier: row.try_get::<i64, _>("multiplier")? as u32,
                    maximum: row.try_get::<i64, _>("maximum")? as u32,
                    max_errors: row.try_get::<i64, _>("max_errors")? as u32,
                    wave_timeout_ms: row.try_get::<i64, _>("wave_timeout_ms")? as u64,
                },
                rollback: row.try_get::<i64, _>("rollback")? != 0,
                progress: Progress {
                    state,
                    wave: row.try_get::<i64, _>("wave")? as u32,
                    extra_errors: row.try_get::<i64, _>("extra_errors")? as u32,
                    canary: row.try_get::<i64, _>("canary")? != 0,
                    agents,
                },
                created_at: from_millis(row.try_get("created_at_ms")?),
                updated_at: from_millis(row.try_get("updated_at_ms")?),
                id,
            });
        }
        Ok(rollouts)
    }

    async fn load_packages(&self) -> Result<Vec<Package>, StoreError> {
        let rows = sqlx::query("SELECT * FROM packages ORDER BY name, version, platform, arch")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Package {
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    platform: row.try_get("platform")?,
                    arch: row.try_get("arch")?,
                    sha256: ContentHash(row.try_get("sha256")?),
                    size: row.try_get::<i64, _>("size")? as u64,
                    created_at: from_millis(row.try_get("created_at_ms")?),
                })
            })
            .collect()
    }

    async fn save_package(&self, package: &Package) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO packages (name, version, platform, arch, sha256, size, created_at_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (name, version, platform, arch) DO UPDATE SET
                sha256 = excluded.sha256, size = excluded.size,
                created_at_ms = excluded.created_at_ms",
        )
        .bind(&package.name)
        .bind(&package.version)
        .bind(&package.platform)
        .bind(&package.arch)
        .bind(package.sha256.0.as_slice())
        .bind(package.size as i64)
        .bind(millis(package.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn save_rollout(
        &self,
        rollout: &Rollout,
        agents: &[(InstanceUid, Option<Phase>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let p = &rollout.params;
        let (configuration, version, previous) = match rollout.config() {
            Some(c) => (c.configuration.as_str(), c.version, c.previous_version),
            None => ("", 0, None),
        };
        let package = rollout.package();
        sqlx::query(
            "INSERT INTO rollouts (id, configuration, version, previous_version, initial,
                multiplier, maximum, max_errors, rollback, wave_timeout_ms, state, wave,
                extra_errors, created_at_ms, updated_at_ms, package_name, package_version,
                selector, canary)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, wave = excluded.wave,
                extra_errors = excluded.extra_errors, updated_at_ms = excluded.updated_at_ms,
                canary = excluded.canary",
        )
        .bind(&rollout.id)
        .bind(configuration)
        .bind(i64::from(version))
        .bind(previous.map(i64::from))
        .bind(i64::from(p.initial))
        .bind(i64::from(p.multiplier))
        .bind(i64::from(p.maximum))
        .bind(i64::from(p.max_errors))
        .bind(i64::from(rollout.rollback))
        .bind(p.wave_timeout_ms as i64)
        .bind(rollout.progress.state.as_str())
        .bind(i64::from(rollout.progress.wave))
        .bind(i64::from(rollout.progress.extra_errors))
        .bind(millis(rollout.created_at))
        .bind(millis(rollout.updated_at))
        .bind(package.map(|p| p.name.as_str()))
        .bind(package.map(|p| p.version.as_str()))
        .bind(package.map(|p| p.selector.to_string()))
        .bind(i64::from(rollout.progress.canary))
        .execute(&mut *tx)
        .await?;
        // Many agents change at once (a wave starts, a wave lands): one statement per batch,
        // not one per agent.
        let upserts: Vec<_> = agents
            .iter()
            .filter_map(|(uid, phase)| phase.as_ref().map(|phase| (uid, phase)))
            .collect();
        for batch in upserts.chunks(ROWS_PER_STATEMENT) {
            let mut query = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO rollout_agents (rollout_id, instance_uid, phase, wave, at_ms) ",
            );
            query.push_values(batch, |mut row, (uid, phase)| {
                let (wave, at_ms) = match phase {
                    Phase::Sent { wave, at_ms } => (Some(i64::from(*wave)), Some(*at_ms as i64)),
                    _ => (None, None),
                };
                row.push_bind(rollout.id.as_str())
                    .push_bind(uid.as_bytes().to_vec())
                    .push_bind(phase.as_str())
                    .push_bind(wave)
                    .push_bind(at_ms);
            });
            query.push(
                " ON CONFLICT (rollout_id, instance_uid) DO UPDATE SET
                    phase = excluded.phase, wave = excluded.wave, at_ms = excluded.at_ms",
            );
            query.build().persistent(false).execute(&mut *tx).await?;
        }
        let removed: Vec<_> = agents
            .iter()
            .filter(|(_, phase)| phase.is_none())
            .map(|(uid, _)| uid)
            .collect();
        for batch in removed.chunks(ROWS_PER_STATEMENT) {
            let mut query =
                sqlx::QueryBuilder::<Sqlite>::new("DELETE FROM rollout_agents WHERE rollout_id = ");
            query.push_bind(rollout.id.as_str());
            query.push(" AND instance_uid IN (");
            let mut list = query.separated(", ");
            for uid in batch {
                list.push_bind(uid.as_bytes().to_vec());
            }
            list.push_unseparated(")");
            query.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_expected(&self) -> Result<Vec<Expected>, StoreError> {
        let rows = sqlx::query("SELECT * FROM expected_agents ORDER BY created_at_ms, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let map = |column: &str| -> Result<BTreeMap<String, String>, StoreError> {
                    let json: &str = row.try_get(column)?;
                    serde_json::from_str(json).map_err(|e| corrupt(id.as_bytes(), e))
                };
                Ok(Expected {
                    identifying_attributes: map("identifying_attributes")?,
                    labels: map("labels")?,
                    created_at: from_millis(row.try_get("created_at_ms")?),
                    id,
                })
            })
            .collect()
    }

    async fn save_expected(&self, expected: &Expected) -> Result<(), StoreError> {
        let json = |map: &BTreeMap<String, String>| {
            serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
        };
        sqlx::query(
            "INSERT INTO expected_agents (id, identifying_attributes, labels, created_at_ms)
             VALUES (?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET
                identifying_attributes = excluded.identifying_attributes,
                labels = excluded.labels, created_at_ms = excluded.created_at_ms",
        )
        .bind(&expected.id)
        .bind(json(&expected.identifying_attributes))
        .bind(json(&expected.labels))
        .bind(millis(expected.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_expected(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM expected_agents WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn load_ignore_rules(&self) -> Result<Vec<IgnoreRule>, StoreError> {
        let rows = sqlx::query("SELECT * FROM ignore_rules ORDER BY created_at_ms, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let selector: &str = row.try_get("selector")?;
                Ok(IgnoreRule {
                    selector: Selector::parse(selector).map_err(|e| corrupt(id.as_bytes(), e))?,
                    created_at: from_millis(row.try_get("created_at_ms")?),
                    id,
                })
            })
            .collect()
    }

    async fn save_ignore_rule(&self, rule: &IgnoreRule) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ignore_rules (id, selector, created_at_ms) VALUES (?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET selector = excluded.selector,
                created_at_ms = excluded.created_at_ms",
        )
        .bind(&rule.id)
        .bind(rule.selector.to_string())
        .bind(millis(rule.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_ignore_rule(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM ignore_rules WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn load_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query("SELECT * FROM api_keys ORDER BY created_at_ms, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let role: &str = row.try_get("role")?;
                let hash: Vec<u8> = row.try_get("key_hash")?;
                let expires: Option<i64> = row.try_get("expires_at_ms")?;
                let used: Option<i64> = row.try_get("last_used_at_ms")?;
                Ok(ApiKey {
                    role: Role::parse(role)
                        .ok_or_else(|| corrupt(id.as_bytes(), format!("unknown role {role:?}")))?,
                    hash: KeyHash(
                        hash.try_into()
                            .map_err(|_| corrupt(id.as_bytes(), "key hash is not 32 bytes"))?,
                    ),
                    name: row.try_get("name")?,
                    created_at: from_millis(row.try_get("created_at_ms")?),
                    expires_at: expires.map(from_millis),
                    last_used_at: used.map(from_millis),
                    id,
                })
            })
            .collect()
    }

    async fn save_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        insert_api_key(&self.pool, key).await
    }

    async fn delete_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM api_keys WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn touch_api_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (id, at) in used {
            sqlx::query(
                "UPDATE api_keys SET last_used_at_ms = max(coalesce(last_used_at_ms, 0), ?)
                 WHERE id = ?",
            )
            .bind(millis(*at))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::store::WriteBuffer;
    use crate::edge::store::conformance::{self, Probe};
    use crate::telemetry::Metrics;

    /// Reads the database file through a connection of its own.
    struct FileProbe {
        pool: SqlitePool,
    }

    impl FileProbe {
        async fn open(data_dir: &Path) -> Self {
            let options = SqliteConnectOptions::new()
                .filename(data_dir.join(DB_FILE))
                .read_only(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .expect("open the database file");
            Self { pool }
        }
    }

    #[async_trait]
    impl Probe for FileProbe {
        /// Looks in every column of every table, so a table added later that keeps the uid
        /// (as bytes or as text) is checked without anyone remembering to list it.
        async fn rows_about(&self, uid: InstanceUid) -> Vec<(String, u64)> {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT LIKE 'sqlite_%' AND name != '_sqlx_migrations' ORDER BY name",
            )
            .fetch_all(&self.pool)
            .await
            .expect("list tables");
            assert!(tables.len() >= 10, "the probe sees the schema: {tables:?}");
            let mut found = Vec::new();
            for table in tables {
                let columns: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
                        .bind(&table)
                        .fetch_all(&self.pool)
                        .await
                        .expect("list columns");
                let any = columns
                    .iter()
                    .map(|c| format!("\"{c}\" IN (?1, ?2)"))
                    .collect::<Vec<_>>()
                    .join(" OR ");
                let count: i64 =
                    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{table}\" WHERE {any}"))
                        .bind(uid.as_bytes().to_vec())
                        .bind(uid.to_string())
                        .fetch_one(&self.pool)
                        .await
                        .expect("count rows");
                if count > 0 {
                    found.push((table, count as u64));
                }
            }
            found
        }
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let probe = FileProbe::open(dir.path()).await;
        conformance::run(&store, &probe).await;
    }

    #[tokio::test]
    async fn a_failed_flush_fails_sync_and_is_written_by_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Metrics::default();
        let buffer = WriteBuffer::default();
        let (kept, deleted) = (InstanceUid::new_v7(), InstanceUid::new_v7());
        for uid in [kept, deleted] {
            buffer.agent(Arc::new(AgentRecord::new(uid, Utc::now())));
        }
        let synced = buffer.sync();
        let broken = SqliteStore::open(dir.path()).await.expect("open");
        broken.pool.close().await;
        assert!(buffer.failing().is_none());
        assert!(!buffer.flush(&broken, &metrics).await, "the flush fails");
        assert!(
            matches!(synced.await, Err(StoreError::Flush(_))),
            "sync reports the failed flush"
        );
        assert_eq!(metrics.store_errors.get(), 1);
        assert!(buffer.failing().is_some(), "health shows the failure");
        // While the store fails, an agent's waiting history is bounded.
        for n in 0..HISTORY_LIMIT + 50 {
            let entry = HistoryEntry {
                at: Utc::now(),
                from: None,
                to: Status::Connected,
                reason: format!("flip {n}"),
            };
            buffer.history(kept, entry);
        }
        assert!(
            !buffer.flush(&broken, &metrics).await,
            "the flush fails again"
        );

        buffer.delete_agent(deleted);
        drop(broken);
        let store = SqliteStore::open(dir.path()).await.expect("reopen");
        let synced = buffer.sync();
        assert!(buffer.flush(&store, &metrics).await, "the retry writes");
        synced.await.expect("synced");
        let uids: Vec<_> = store
            .load_agents()
            .await
            .expect("load")
            .agents
            .iter()
            .map(|a| a.uid)
            .collect();
        assert_eq!(
            uids,
            vec![kept],
            "the failed batch is kept, minus the delete"
        );
        assert!(buffer.failing().is_none(), "healthy again");
        let history = &store.load_agents().await.expect("load").agents[0].history;
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(history.last().expect("entries").reason, "flip 149");
    }

    /// A database file the server may not write is refused at start, not discovered at the
    /// first lost write. Root writes any file whatever its mode; `chattr +i` stops it.
    #[tokio::test]
    async fn a_database_that_cannot_be_written_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(SqliteStore::open(dir.path()).await.expect("create"));
        let file = dir.path().join(DB_FILE);
        let mut perms = std::fs::metadata(&file).expect("stat").permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&file, perms).expect("chmod");
        let immutable = std::fs::File::options().write(true).open(&file).is_ok()
            && std::process::Command::new("chattr")
                .arg("+i")
                .arg(&file)
                .status()
                .is_ok_and(|s| s.success());
        if std::fs::File::options().write(true).open(&file).is_ok() {
            eprintln!("SKIPPED: cannot make {} read-only here", file.display());
            return;
        }
        let result = SqliteStore::open(dir.path()).await;
        if immutable {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&file)
                .status();
        }
        match result {
            Err(StoreError::ReadOnly { .. }) => {}
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("a read-only database was opened"),
        }
    }

    #[tokio::test]
    async fn an_unknown_admin_state_is_a_corrupt_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let uid = InstanceUid::new_v7();
        let batch = WriteBatch {
            agents: vec![Arc::new(AgentRecord::new(uid, Utc::now()))],
            ..WriteBatch::default()
        };
        store.write(&batch).await.expect("write");
        sqlx::query("UPDATE agents SET admin_state = 'retired'")
            .execute(&store.pool)
            .await
            .expect("update");
        let other = InstanceUid::new_v7();
        let fine = WriteBatch {
            agents: vec![Arc::new(AgentRecord::new(other, Utc::now()))],
            ..WriteBatch::default()
        };
        store.write(&fine).await.expect("write");
        let loaded = store.load_agents().await.expect("the other rows load");
        assert_eq!(loaded.agents.len(), 1);
        assert_eq!(loaded.agents[0].uid, other);
        let [err] = loaded.set_aside.as_slice() else {
            panic!("one row set aside: {:?}", loaded.set_aside)
        };
        assert!(
            matches!(err, StoreError::Corrupt { detail, .. } if detail.contains("retired")),
            "{err}"
        );
        let (problem, row): (String, String) =
            sqlx::query_as("SELECT problem, row_json FROM agents_set_aside WHERE instance_uid = ?")
                .bind(uid.as_bytes().to_vec())
                .fetch_one(&store.pool)
                .await
                .expect("the row is kept for inspection");
        assert!(problem.contains("retired"), "{problem}");
        assert!(row.contains("'retired'"), "{row}");
        let again = store.load_agents().await.expect("load again");
        assert!(again.set_aside.is_empty(), "set aside once");
    }

    #[tokio::test]
    async fn agents_stored_before_admin_states_are_managed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let uid = InstanceUid::new_v7();
        // A row as an older Corral wrote it: every column before migration 0005.
        sqlx::query(
            "INSERT INTO agents (instance_uid, status, status_reason, labels, description,
                capabilities, last_seen_ms) VALUES (?, 'disconnected', '', '{}', x'', 0, 0)",
        )
        .bind(uid.as_bytes().to_vec())
        .execute(&store.pool)
        .await
        .expect("insert");
        let agents = store.load_agents().await.expect("load").agents;
        assert_eq!(
            agents[0].admin_state,
            crate::core::lifecycle::AdminState::Managed
        );
    }

    #[tokio::test]
    async fn reopening_keeps_the_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = InstanceUid::new_v7();
        {
            let store = SqliteStore::open(dir.path()).await.expect("open");
            let batch = WriteBatch {
                agents: vec![Arc::new(AgentRecord::new(uid, Utc::now()))],
                ..WriteBatch::default()
            };
            store.write(&batch).await.expect("write");
        }
        let store = SqliteStore::open(dir.path()).await.expect("reopen");
        let agents = store.load_agents().await.expect("load").agents;
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].uid, uid);
    }
}
