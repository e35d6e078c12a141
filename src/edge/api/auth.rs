//! Who may call the admin API. Every request but the open ones (`/healthz`, `/metrics` unless
//! `--metrics-need-key`, the OpenAPI document) carries `Authorization: Bearer <key>`; the key's role must reach the role
//! [`ACCESS`] names for the route and method, else 401 (no key, or one unknown, revoked or
//! expired) or 403 (a role that may not). Nothing is done for a refused request.
//!
//! Keys are known by their SHA-256, kept in memory ([`Keys`]): a request costs a hash and a
//! map lookup, never a store read. `last_used_at` is kept in an atomic per key and written to
//! the store every [`TOUCH_EVERY`] by [`keep_last_used`]. A key the map does not hold makes
//! the server read the store's keys again, at most once per [`RELOAD_EVERY`]: that is how a key
//! `corral admin create-key` wrote beside a running server starts working.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::core::keys::{ApiKey, KEY_BYTES, KeyHash, Role};
use crate::edge::store::{Store, StoreError};

/// The file in the data directory the server writes its first admin key to.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// How often `last_used_at` is written to the store.
pub const TOUCH_EVERY: Duration = Duration::from_secs(2);
/// The store is read for keys it holds and the server does not at most this often.
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Most keys kept.
pub const MAX_KEYS: usize = 1000;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No key.
    Open,
    /// No key, or a viewer's with `--metrics-need-key`.
    Metrics,
    /// A key with at least this role.
    Needs(Role),
}

use Access::{Metrics, Needs, Open};
use Role::{Admin, Operator, Viewer};

/// Every documented operation, by method and route template, with what it needs. Reads need a
/// viewer; changes to the fleet an operator; keys an admin. A unit test holds this list equal to
/// the document's operations, so a new route cannot be served without a decision here.
pub const ACCESS: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Open),
    ("GET", "/metrics", Metrics),
    ("GET", "/api/v1/openapi.json", Open),
    ("GET", "/api/v1/fleet", Needs(Viewer)),
    ("GET", "/api/v1/agents", Needs(Viewer)),
    ("POST", "/api/v1/agents", Needs(Operator)),
    ("GET", "/api/v1/agents/{uid}", Needs(Viewer)),
    ("DELETE", "/api/v1/agents/{uid}", Needs(Operator)),
    ("POST", "/api/v1/agents/{uid}/admin-state", Needs(Operator)),
    ("POST", "/api/v1/agents/{uid}/disconnect", Needs(Operator)),
    (
        "GET",
        "/api/v1/agents/{uid}/effective-config",
        Needs(Viewer),
    ),
    ("PUT", "/api/v1/agents/{uid}/labels", Needs(Operator)),
    ("POST", "/api/v1/agents/{uid}/restart", Needs(Operator)),
    ("POST", "/api/v1/agents/{uid}/retry-config", Needs(Operator)),
    ("POST", "/api/v1/agents/admin-state", Needs(Operator)),
    ("POST", "/api/v1/agents/delete", Needs(Operator)),
    ("POST", "/api/v1/agents/disconnect", Needs(Operator)),
    ("POST", "/api/v1/agents/restart", Needs(Operator)),
    ("GET", "/api/v1/expected-agents", Needs(Viewer)),
    ("DELETE", "/api/v1/expected-agents/{id}", Needs(Operator)),
    ("GET", "/api/v1/ignore-rules", Needs(Viewer)),
    ("POST", "/api/v1/ignore-rules", Needs(Operator)),
    ("DELETE", "/api/v1/ignore-rules/{id}", Needs(Operator)),
    ("GET", "/api/v1/configurations", Needs(Viewer)),
    ("GET", "/api/v1/configurations/{name}", Needs(Viewer)),
    ("PUT", "/api/v1/configurations/{name}", Needs(Operator)),
    ("DELETE", "/api/v1/configurations/{name}", Needs(Operator)),
    ("GET", "/api/v1/configurations/{name}/diff", Needs(Viewer)),
    (
        "GET",
        "/api/v1/configurations/{name}/versions",
        Needs(Viewer),
    ),
    (
        "GET",
        "/api/v1/configurations/{name}/versions/{version}",
        Needs(Viewer),
    ),
    ("GET", "/api/v1/rollouts", Needs(Viewer)),
    ("POST", "/api/v1/rollouts", Needs(Operator)),
    ("GET", "/api/v1/rollouts/{id}", Needs(Viewer)),
    ("POST", "/api/v1/rollouts/{id}/{action}", Needs(Operator)),
    ("GET", "/api/v1/packages", Needs(Viewer)),
    ("POST", "/api/v1/packages", Needs(Operator)),
    ("DELETE", "/api/v1/packages", Needs(Operator)),
    ("GET", "/api/v1/keys", Needs(Admin)),
    ("POST", "/api/v1/keys", Needs(Admin)),
    ("DELETE", "/api/v1/keys/{id}", Needs(Admin)),
];

/// What a request needs: its route's entry in [`ACCESS`]. A request no route takes (404, 405)
/// needs a viewer, so that what the API serves is not told to callers without a key.
pub fn access(method: &Method, route: Option<&str>) -> Access {
    let method = if *method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    route
        .and_then(|route| {
            ACCESS
                .iter()
                .find(|(m, path, _)| *m == method && *path == route)
        })
        .map_or(Needs(Viewer), |(_, _, access)| *access)
}

/// A key the server knows, with when it was last used.
struct Entry {
    key: ApiKey,
    /// Milliseconds since the epoch of the last use; 0 when not used since loaded.
    used_ms: AtomicI64,
    /// The last use written to the store.
    stored_ms: AtomicI64,
}

impl Entry {
    fn new(key: ApiKey) -> Arc<Entry> {
        let stored = key.last_used_at.map_or(0, |t| t.timestamp_millis());
        Arc::new(Entry {
            key,
            used_ms: AtomicI64::new(stored),
            stored_ms: AtomicI64::new(stored),
        })
    }

    fn snapshot(&self) -> ApiKey {
        let used = self.used_ms.load(Ordering::Relaxed);
        ApiKey {
            last_used_at: (used > 0)
                .then(|| DateTime::from_timestamp_millis(used))
                .flatten(),
            ..self.key.clone()
        }
    }
}

/// Whose key a request was let in with: a request extension for the handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub role: Role,
}

/// Why a key lets nobody in.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    Unknown,
    Expired,
}

/// Why a key cannot be revoked or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key {0}")]
    NotFound(String),
    #[error("{0} is the last admin key: create another admin key before revoking it")]
    LastAdmin(String),
    #[error("{0} is the key of this request: revoke it with another key")]
    OwnKey(String),
    #[error("at most {MAX_KEYS} keys")]
    TooMany,
    #[error("no randomness for a key: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The keys the server knows, by hash.
pub struct Keys {
    store: Arc<dyn Store>,
    by_hash: parking_lot::RwLock<HashMap<KeyHash, Arc<Entry>>>,
    /// Held across each change's store write and map update (create, revoke, reload), so a
    /// reload that read the store before a revoke cannot bring the key back.
    changes: tokio::sync::Mutex<()>,
    /// When the store was last read for keys written beside the server.
    reloaded: parking_lot::Mutex<Option<tokio::time::Instant>>,
}

impl Keys {
    pub async fn load(store: Arc<dyn Store>) -> Result<Arc<Keys>, StoreError> {
        let keys = store.load_api_keys().await?;
        Ok(Arc::new(Keys {
            store,
            by_hash: parking_lot::RwLock::new(
                keys.into_iter().map(|k| (k.hash, Entry::new(k))).collect(),
            ),
            changes: tokio::sync::Mutex::new(()),
            reloaded: parking_lot::Mutex::new(None),
        }))
    }

    /// Who holds the key, if it lets its holder in at `now`; the use is noted.
    pub fn authenticate(&self, key: &str, now: DateTime<Utc>) -> Result<Caller, Denied> {
        let entry = self
            .by_hash
            .read()
            .get(&KeyHash::of(key))
            .cloned()
            .ok_or(Denied::Unknown)?;
        if entry.key.expired(now) {
            return Err(Denied::Expired);
        }
        entry
            .used_ms
            .fetch_max(now.timestamp_millis(), Ordering::Relaxed);
        Ok(Caller {
            key_id: entry.key.id.clone(),
            role: entry.key.role,
        })
    }

    /// Reads the store's keys again, unless that was done less than [`RELOAD_EVERY`] ago.
    /// Returns whether it did.
    pub async fn reload(&self) -> bool {
        {
            let mut last = self.reloaded.lock();
            let now = tokio::time::Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < RELOAD_EVERY) {
                return false;
            }
            *last = Some(now);
        }
        let _changes = self.changes.lock().await;
        match self.store.load_api_keys().await {
            Ok(stored) => {
                let mut map = self.by_hash.write();
                let mut kept: HashMap<KeyHash, Arc<Entry>> = HashMap::with_capacity(stored.len());
                for key in stored {
                    let entry = match map.remove(&key.hash) {
                        Some(known) if known.key.id == key.id => known,
                        _ => Entry::new(key),
                    };
                    kept.insert(entry.key.hash, entry);
                }
                *map = kept;
                true
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read API keys from the store");
                false
            }
        }
    }

    /// Every key, oldest first, with its last use.
    pub fn list(&self) -> Vec<ApiKey> {
        let mut keys: Vec<ApiKey> = self.by_hash.read().values().map(|e| e.snapshot()).collect();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        keys
    }

    /// Whether some admin key lets its holder in at `now`.
    pub fn has_admin(&self, now: DateTime<Utc>) -> bool {
        self.by_hash
            .read()
            .values()
            .any(|e| e.key.role == Admin && !e.key.expired(now))
    }

    /// Creates a key, stored before it is returned with the key itself.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(ApiKey, String), KeyError> {
        let (key, secret) = new_key(name, role, expires_at, now)?;
        self.add(key.clone()).await?;
        Ok((key, secret))
    }

    /// Stores a key made with [`new_key`] and lets it in.
    pub async fn add(&self, key: ApiKey) -> Result<(), KeyError> {
        let _changes = self.changes.lock().await;
        if self.by_hash.read().len() >= MAX_KEYS {
            return Err(KeyError::TooMany);
        }
        self.store.save_api_key(&key).await?;
        self.by_hash.write().insert(key.hash, Entry::new(key));
        Ok(())
    }

    /// Revokes a key; from the answer on it lets nobody in. The last admin key that works
    /// stays: without it nobody could manage keys until a restart.
    pub async fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<(), KeyError> {
        let _changes = self.changes.lock().await;
        let (hash, last_admin) = {
            let map = self.by_hash.read();
            let entry = map
                .values()
                .find(|e| e.key.id == id)
                .ok_or_else(|| KeyError::NotFound(id.into()))?;
            let admins = map
                .values()
                .filter(|e| e.key.role == Admin && !e.key.expired(now))
                .count();
            let works = entry.key.role == Admin && !entry.key.expired(now);
            (entry.key.hash, works && admins == 1)
        };
        if last_admin {
            return Err(KeyError::LastAdmin(id.into()));
        }
        if !self.store.delete_api_key(id).await? {
            tracing::warn!(id, "revoked key was not in the store");
        }
        self.by_hash.write().remove(&hash);
        Ok(())
    }

    /// Writes the uses not written yet.
    pub async fn store_last_used(&self) {
        let due: Vec<(Arc<Entry>, i64)> = self
            .by_hash
            .read()
            .values()
            .filter_map(|e| {
                let used = e.used_ms.load(Ordering::Relaxed);
                (used > e.stored_ms.load(Ordering::Relaxed)).then(|| (e.clone(), used))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let rows: Vec<(String, DateTime<Utc>)> = due
            .iter()
            .filter_map(|(e, used)| {
                Some((e.key.id.clone(), DateTime::from_timestamp_millis(*used)?))
            })
            .collect();
        match self.store.touch_api_keys(&rows).await {
            Ok(()) => {
                for (entry, used) in due {
                    entry.stored_ms.fetch_max(used, Ordering::Relaxed);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot store when API keys were last used"),
        }
    }
}

/// A new key and its stored form.
pub fn new_key(
    name: &str,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(ApiKey, String), KeyError> {
    let mut random = [0u8; KEY_BYTES];
    getrandom::fill(&mut random).map_err(|e| KeyError::Random(e.to_string()))?;
    let secret = crate::core::keys::new_key(&random);
    let key = ApiKey {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.into(),
        role,
        hash: KeyHash::of(&secret),
        created_at: now,
        expires_at,
        last_used_at: None,
    };
    Ok((key, secret))
}

/// Writes `last_used_at` every [`TOUCH_EVERY`], and once more at shutdown.
pub async fn keep_last_used(keys: Arc<Keys>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TOUCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => keys.store_last_used().await,
            () = shutdown.cancelled() => break,
        }
    }
    keys.store_last_used().await;
}

/// On a store without a working admin key, creates one and writes it to
/// `<data_dir>/admin.key` (mode 0600). Returns the file's path when it did.
pub async fn bootstrap(keys: &Keys, data_dir: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    let now = Utc::now();
    if keys.has_admin(now) {
        return Ok(None);
    }
    // The file first: a key stored that nobody can read would stop the next start from
    // making one, while a file whose key was not stored is replaced at the next start.
    let (key, secret) = new_key("admin", Admin, None, now)?;
    let path = data_dir.join(ADMIN_KEY_FILE);
    write_secret(&path, &secret)?;
    keys.add(key).await?;
    Ok(Some(path))
}

/// Writes a key to a file only its owner may read, whole or not at all.
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let partial = path.with_extension("key.partial");
    let _ = std::fs::remove_file(&partial);
    let mut options = std::fs::File::options();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial)?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

fn refuse(status: StatusCode, message: String) -> Response {
    let body = super::dto::ErrorDto {
        error: message,
        allowed: None,
        matched: None,
    };
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The key a request carries: `Authorization: Bearer <key>`.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// What the layer needs: the keys, and whether `/metrics` needs one.
#[derive(Clone)]
pub struct Gate {
    pub keys: Arc<Keys>,
    pub metrics_need_key: bool,
}

/// The layer: lets a request through only with a key whose role its route needs.
pub async fn authorize(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let required = match access(request.method(), route) {
        Needs(role) => role,
        Metrics if gate.metrics_need_key => Viewer,
        Open | Metrics => return next.run(request).await,
    };
    let keys = gate.keys;
    let Some(key) = bearer(&request) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "an API key is needed: Authorization: Bearer <key>".into(),
        );
    };
    let mut checked = keys.authenticate(key, Utc::now());
    if checked == Err(Denied::Unknown) && keys.reload().await {
        checked = keys.authenticate(key, Utc::now());
    }
    match checked {
        Err(Denied::Unknown) => refuse(
            StatusCode::UNAUTHORIZED,
            "the API key is unknown or revoked".into(),
        ),
        Err(Denied::Expired) => refuse(StatusCode::UNAUTHORIZED, "the API key has expired".into()),
        Ok(caller) if !caller.role.allows(required) => refuse(
            StatusCode::FORBIDDEN,
            format!(
                "a key with role {} may not do this; it needs {}",
                caller.role.as_str(),
                required.as_str()
            ),
        ),
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::store::SqliteStore;

    async fn keys() -> (tempfile::TempDir, Arc<dyn Store>, Arc<Keys>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.expect("store"));
        let keys = Keys::load(store.clone()).await.expect("keys");
        (dir, store, keys)
    }

    #[tokio::test]
    async fn a_key_lets_in_until_it_expires_or_is_revoked_and_its_use_is_stored() {
        let (_dir, store, keys) = keys().await;
        let now = Utc::now();
        let (admin, admin_secret) = keys.create("a", Admin, None, now).await.expect("create");
        let soon = now + chrono::Duration::seconds(10);
        let (viewer, secret) = keys
            .create("v", Viewer, Some(soon), now)
            .await
            .expect("create");
        let caller = keys.authenticate(&secret, now).expect("let in");
        assert_eq!((caller.role, caller.key_id), (Viewer, viewer.id.clone()));
        assert_eq!(keys.authenticate(&secret, soon), Err(Denied::Expired));
        assert_eq!(keys.authenticate("corral_00", now), Err(Denied::Unknown));
        keys.store_last_used().await;
        let stored = store.load_api_keys().await.expect("load");
        let used = stored.iter().find(|k| k.id == viewer.id).expect("stored");
        assert_eq!(
            used.last_used_at.map(|t| t.timestamp_millis()),
            Some(now.timestamp_millis())
        );
        assert!(matches!(
            keys.revoke(&admin.id, now).await,
            Err(KeyError::LastAdmin(_))
        ));
        keys.revoke(&viewer.id, now).await.expect("revoke");
        assert_eq!(keys.authenticate(&secret, now), Err(Denied::Unknown));
        assert!(keys.authenticate(&admin_secret, now).is_ok());
        assert_eq!(store.load_api_keys().await.expect("load").len(), 1);
    }

    #[tokio::test]
    async fn a_key_stored_beside_the_server_is_taken_at_a_reload_at_most_once_a_second() {
        let (_dir, store, keys) = keys().await;
        let now = Utc::now();
        let (first, first_secret) = new_key("first", Operator, None, now).expect("key");
        store.save_api_key(&first).await.expect("save");
        assert_eq!(keys.authenticate(&first_secret, now), Err(Denied::Unknown));
        assert!(keys.reload().await);
        assert!(keys.authenticate(&first_secret, now).is_ok());
        let (second, second_secret) = new_key("second", Operator, None, now).expect("key");
        store.save_api_key(&second).await.expect("save");
        assert!(!keys.reload().await, "read again within a second");
        assert_eq!(keys.authenticate(&second_secret, now), Err(Denied::Unknown));
        assert_eq!(keys.list().len(), 1);
    }

    /// Every documented operation has its entry, and every entry is an operation: a route
    /// added without deciding who may call it fails here.
    #[test]
    fn every_operation_has_its_access() {
        let doc = super::super::openapi();
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            for (method, present) in [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
                ("HEAD", item.head.is_some()),
                ("OPTIONS", item.options.is_some()),
            ] {
                if present {
                    documented.insert((method.to_string(), path.clone()));
                }
            }
        }
        let listed: std::collections::BTreeSet<(String, String)> = ACCESS
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(listed.len(), ACCESS.len(), "an operation listed twice");
        let missing: Vec<_> = documented.difference(&listed).collect();
        assert!(missing.is_empty(), "operations without access: {missing:?}");
        let extra: Vec<_> = listed.difference(&documented).collect();
        assert!(
            extra.is_empty(),
            "access for operations that do not exist: {extra:?}"
        );
    }

    #[test]
    fn reads_need_a_viewer_changes_an_operator_keys_an_admin() {
        for (method, path, access) in ACCESS {
            let expected = if *path == "/metrics" {
                Metrics
            } else if matches!(*path, "/healthz" | "/api/v1/openapi.json") {
                Open
            } else if path.starts_with("/api/v1/keys") {
                Needs(Admin)
            } else if *method == "GET" {
                Needs(Viewer)
            } else {
                Needs(Operator)
            };
            assert_eq!(*access, expected, "{method} {path}");
        }
        assert_eq!(access(&Method::HEAD, Some("/api/v1/fleet")), Needs(Viewer));
        assert_eq!(access(&Method::GET, None), Needs(Viewer));
        assert_eq!(access(&Method::PATCH, Some("/api/v1/keys")), Needs(Viewer));
    }
}
