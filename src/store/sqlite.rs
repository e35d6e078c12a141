use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prost::Message;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{Store, StoreError, WriteBatch};
use crate::domain::{
    AgentCapabilities, AgentRecord, ConfigMap, ContentHash, HISTORY_LIMIT, HistoryEntry,
    InstanceUid, RemoteConfigState, RemoteConfigStatus, Transport,
};
use crate::protocol::{self, proto};
use crate::status::Status;

const DB_FILE: &str = "corral.db";
const POOL_SIZE: u32 = 4;

/// The embedded store: one SQLite database in the data directory.
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to date.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(data_dir.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
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

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AgentRecord, StoreError> {
    let uid_bytes: Vec<u8> = row.try_get("instance_uid")?;
    let uid = InstanceUid::from_bytes(&uid_bytes).map_err(|e| corrupt(&uid_bytes, e))?;
    let status = parse_status(&uid_bytes, row.try_get("status")?)?;
    let transport: Option<String> = row.try_get("transport")?;
    let labels: String = row.try_get("labels")?;
    let labels = serde_json::from_str(&labels).map_err(|e| corrupt(&uid_bytes, e))?;
    let description: Vec<u8> = row.try_get("description")?;
    let description = proto::AgentDescription::decode(description.as_slice())
        .map_err(|e| corrupt(&uid_bytes, e))?;
    let health: Option<Vec<u8>> = row.try_get("health")?;
    let health = match health {
        Some(bytes) => Some(Arc::new(protocol::health_from_proto(
            proto::ComponentHealth::decode(bytes.as_slice()).map_err(|e| corrupt(&uid_bytes, e))?,
        ))),
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
        last_seen: from_millis(row.try_get("last_seen_ms")?),
        connected_at: row
            .try_get::<Option<i64>, _>("connected_at_ms")?
            .map(from_millis),
        history: Arc::from([]),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn load_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM agents ORDER BY instance_uid")
            .fetch_all(&self.pool)
            .await?;
        let mut agents = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>, _>>()?;

        let rows = sqlx::query(
            "SELECT instance_uid, at_ms, from_status, to_status, reason
             FROM agent_history ORDER BY instance_uid, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut history: HashMap<Vec<u8>, Vec<HistoryEntry>> = HashMap::new();
        for row in rows {
            let uid: Vec<u8> = row.try_get("instance_uid")?;
            let from: Option<String> = row.try_get("from_status")?;
            let entry = HistoryEntry {
                at: from_millis(row.try_get("at_ms")?),
                from: from.map(|s| parse_status(&uid, &s)).transpose()?,
                to: parse_status(&uid, row.try_get("to_status")?)?,
                reason: row.try_get("reason")?,
            };
            history.entry(uid).or_default().push(entry);
        }
        for agent in &mut agents {
            if let Some(mut entries) = history.remove(agent.uid.as_bytes().as_slice()) {
                let excess = entries.len().saturating_sub(HISTORY_LIMIT);
                entries.drain(..excess);
                agent.history = Arc::from(entries);
            }
        }
        Ok(agents)
    }

    async fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for agent in &batch.agents {
            let labels = serde_json::to_string(&agent.labels).unwrap_or_else(|_| "{}".into());
            let description = protocol::description_to_proto(&agent.description).encode_to_vec();
            let health = agent
                .health
                .as_deref()
                .map(|h| protocol::health_to_proto(h).encode_to_vec());
            sqlx::query(
                "INSERT INTO agents (instance_uid, status, status_reason, transport, labels,
                    description, capabilities, health, effective_config_hash, remote_config_hash,
                    remote_config_status, remote_config_error, last_seen_ms, connected_at_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (instance_uid) DO UPDATE SET
                    status = excluded.status, status_reason = excluded.status_reason,
                    transport = excluded.transport, labels = excluded.labels,
                    description = excluded.description, capabilities = excluded.capabilities,
                    health = excluded.health, effective_config_hash = excluded.effective_config_hash,
                    remote_config_hash = excluded.remote_config_hash,
                    remote_config_status = excluded.remote_config_status,
                    remote_config_error = excluded.remote_config_error,
                    last_seen_ms = excluded.last_seen_ms, connected_at_ms = excluded.connected_at_ms",
            )
            .bind(agent.uid.as_bytes().as_slice())
            .bind(agent.status.as_str())
            .bind(&agent.status_reason)
            .bind(agent.transport.map(Transport::as_str))
            .bind(labels)
            .bind(description)
            .bind(agent.capabilities.bits() as i64)
            .bind(health)
            .bind(agent.effective_config_hash.as_ref().map(|h| h.0.as_slice()))
            .bind(agent.remote_config.as_ref().map(|rc| rc.hash.0.as_slice()))
            .bind(agent.remote_config.as_ref().map(|rc| rc.status.as_str()))
            .bind(agent.remote_config.as_ref().map(|rc| rc.error.as_str()))
            .bind(millis(agent.last_seen))
            .bind(agent.connected_at.map(millis))
            .execute(&mut *tx)
            .await?;
        }
        let mut touched = Vec::new();
        for (uid, entry) in &batch.history {
            sqlx::query(
                "INSERT INTO agent_history (instance_uid, at_ms, from_status, to_status, reason)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(uid.as_bytes().as_slice())
            .bind(millis(entry.at))
            .bind(entry.from.map(Status::as_str))
            .bind(entry.to.as_str())
            .bind(&entry.reason)
            .execute(&mut *tx)
            .await?;
            if !touched.contains(uid) {
                touched.push(*uid);
            }
        }
        for uid in touched {
            sqlx::query(
                "DELETE FROM agent_history WHERE instance_uid = ?1 AND id <= (
                    SELECT id FROM agent_history WHERE instance_uid = ?1
                    ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )
            .bind(uid.as_bytes().as_slice())
            .bind(HISTORY_LIMIT as i64)
            .execute(&mut *tx)
            .await?;
        }
        for (hash, config) in &batch.effective_configs {
            sqlx::query("INSERT OR IGNORE INTO effective_configs (hash, body) VALUES (?, ?)")
                .bind(hash.0.as_slice())
                .bind(protocol::config_map_to_proto(config).encode_to_vec())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn effective_config(&self, hash: &ContentHash) -> Result<Option<ConfigMap>, StoreError> {
        let row = sqlx::query("SELECT body FROM effective_configs WHERE hash = ?")
            .bind(hash.0.as_slice())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let body: Vec<u8> = row.try_get("body")?;
        let map =
            proto::AgentConfigMap::decode(body.as_slice()).map_err(|e| corrupt(&hash.0, e))?;
        Ok(Some(protocol::config_map_from_proto(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        crate::store::conformance::run(&store).await;
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
        let agents = store.load_agents().await.expect("load");
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].uid, uid);
    }
}
