//! Wiring: opens the store, restores the fleet, and serves the OpAMP and API listeners until
//! the shutdown token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::domain::OwnTelemetry;
use crate::core::session::SessionConfig;
use crate::edge::api::{self, ApiState};
use crate::edge::listener;
use crate::edge::store::BlobStore;
use crate::edge::store::{SqliteStore, Store, WriteBuffer, run_flusher};
use crate::edge::transport::{self, OpampState};
use crate::settings::Settings;
use crate::tasks::agent::AgentContext;
use crate::tasks::controller::spawn_controller;
use crate::tasks::fleet::{Fleet, Rules};
use crate::telemetry::Metrics;

/// How long actors and connections get to finish after shutdown is asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the listeners may finish their requests at shutdown; with the agents' grace, the
/// process stops within 10 s whatever clients do.
const LISTENER_GRACE: Duration = Duration::from_secs(3);
/// Admin API connections open at once: admins and their scripts, not agents.
const API_CONNECTIONS: usize = 128;

pub struct Listeners {
    pub opamp: TcpListener,
    pub api: TcpListener,
}

impl Listeners {
    pub async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let opamp = TcpListener::bind(settings.opamp_listen)
            .await
            .with_context(|| format!("cannot listen for OpAMP on {}", settings.opamp_listen))?;
        let api = TcpListener::bind(settings.api_listen)
            .await
            .with_context(|| format!("cannot listen for the API on {}", settings.api_listen))?;
        Ok(Self { opamp, api })
    }
}

/// Runs the server on the given listeners until `shutdown` is cancelled.
pub async fn serve(
    listeners: Listeners,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&settings.data_dir)
            .await
            .with_context(|| format!("cannot open the store in {}", settings.data_dir.display()))?,
    );
    let metrics = Arc::new(Metrics::default());
    let writes = Arc::new(WriteBuffer::default());
    let tracker = TaskTracker::new();
    let components = Arc::new(DashMap::new());
    for (hash, set) in store
        .load_component_sets()
        .await
        .context("cannot load component sets")?
    {
        components.insert(hash, Arc::new(set));
    }
    let ctx = Arc::new(AgentContext {
        session: Arc::new(SessionConfig {
            heartbeat_interval: settings.heartbeat_interval,
            public_url: settings.public_url.clone(),
            own_telemetry: OwnTelemetry {
                metrics: settings.own_metrics_endpoint.clone(),
                logs: settings.own_logs_endpoint.clone(),
                traces: settings.own_traces_endpoint.clone(),
            },
            refuse_ignored: settings.refuse_ignored,
            admission: settings.admission,
            max_effective_config: settings.max_effective_config,
        }),
        components: components.clone(),
        changes: Arc::default(),
        changed: Arc::default(),
        forgotten: Arc::default(),
        metrics: metrics.clone(),
        writes: writes.clone(),
        cancel: shutdown.clone(),
        silence: Default::default(),
    });
    let rules = Rules {
        admission: settings.admission,
        expected: store
            .load_expected()
            .await
            .context("cannot load pre-registrations")?,
        ignore: store
            .load_ignore_rules()
            .await
            .context("cannot load ignore rules")?,
    };
    let fleet = Arc::new(Fleet::new(ctx, tracker.clone(), rules, settings.max_agents));
    let loaded = store.load_agents().await.context("cannot load agents")?;
    for error in &loaded.set_aside {
        tracing::error!(%error, "agent row set aside: it could not be read (see the agents_set_aside table)");
        metrics.store_rows_set_aside.inc();
    }
    let known = loaded.agents;
    tracing::info!(agents = known.len(), "restored fleet");
    fleet.restore(known);
    fleet.spawn_silence_watch();
    if let Some(after) = settings.forget_disconnected_after {
        fleet.spawn_retention(after);
    }
    let controller = spawn_controller(
        store.clone(),
        fleet.clone(),
        components,
        settings
            .heartbeat_interval
            .mul_f64(crate::core::session::GRACE_FACTOR),
        shutdown.clone(),
        &tracker,
    )
    .await
    .context("cannot load configurations and rollouts")?;

    let flush_stop = CancellationToken::new();
    let flusher = tokio::spawn(run_flusher(
        writes.clone(),
        store.clone(),
        metrics.clone(),
        flush_stop.clone(),
    ));

    let opamp_addr = listeners.opamp.local_addr()?;
    let api_addr = listeners.api.local_addr()?;
    tracing::info!(%opamp_addr, %api_addr, data_dir = %settings.data_dir.display(), "corral serving");
    let blobs = BlobStore::open(&settings.data_dir)
        .with_context(|| format!("cannot use {} for packages", settings.data_dir.display()))?;
    let opamp = transport::router(OpampState::new(
        fleet.clone(),
        blobs.clone(),
        settings.max_message_size,
        transport::SocketTimers {
            first_message_timeout: settings.limits.first_message_timeout,
            ping_interval: settings.limits.ping_interval,
        },
        shutdown.clone(),
        tracker.clone(),
    ));
    let keys = api::auth::Keys::load(store.clone())
        .await
        .context("cannot load API keys")?;
    if let Some(path) = api::auth::bootstrap(&keys, &settings.data_dir)
        .await
        .context("cannot create the first admin API key")?
    {
        tracing::info!(path = %path.display(), "no admin API key was stored: created one, in this file (mode 0600)");
    }
    tracker.spawn(api::auth::keep_last_used(keys.clone(), shutdown.clone()));
    let api = api::router(ApiState {
        fleet: fleet.clone(),
        store,
        writes,
        controller,
        blobs,
        max_package_size: settings.max_package_size,
        allowed_hosts: api::AllowedHosts(settings.api_allowed_hosts.clone().into()),
        keys,
        metrics_need_key: settings.metrics_need_key,
    });
    let limits = &settings.limits;
    let opamp_bounds = listener::Bounds {
        name: "opamp",
        timeouts: listener::Timeouts {
            headers: limits.header_timeout,
            request: Some(limits.body_timeout),
            stall: limits.idle_timeout,
            keep_alive: limits.keep_alive_timeout,
        },
        max_connections: opamp_connections(limits.max_connections),
        gate: Some(listener::gate::Gate::new(
            limits.new_connections_per_second,
            limits.max_pending_handshakes,
            std::time::Instant::now(),
        )),
    };
    // The admin API: the same header and stall timeouts; a request takes as long as it takes
    // (a package upload may be large), and a connection is kept for the idle timeout (its
    // clients are people and scripts, few and bursty).
    let api_bounds = listener::Bounds {
        name: "api",
        timeouts: listener::Timeouts {
            request: None,
            keep_alive: limits.idle_timeout,
            ..opamp_bounds.timeouts
        },
        max_connections: API_CONNECTIONS,
        gate: None,
    };
    let opamp_server = listener::serve(
        listeners.opamp,
        opamp,
        opamp_bounds,
        metrics.clone(),
        shutdown.clone(),
    );
    let api_server = listener::serve(listeners.api, api, api_bounds, metrics, shutdown.clone());
    let servers = async {
        tokio::join!(opamp_server, api_server);
        Ok::<_, anyhow::Error>(())
    };
    // Graceful, but not for ever: a client holding a half-sent request must not keep the
    // process from stopping.
    let overdue = async {
        shutdown.cancelled().await;
        tokio::time::sleep(LISTENER_GRACE).await;
    };
    let served = tokio::select! {
        served = servers => served,
        () = overdue => {
            tracing::warn!("connections still open after the grace period; dropping them");
            Ok(())
        }
    };
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("agents did not stop within the grace period");
    }
    flush_stop.cancel();
    let _ = flusher.await;
    tracing::info!("corral stopped");
    served
}

/// The OpAMP listener's connection limit: the open-file limit (raised to its hard limit
/// first) less what the admin API, downloads and the store need, or the one given if lower.
fn opamp_connections(given: Option<usize>) -> usize {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let possible = usize::try_from(files)
        .unwrap_or(usize::MAX)
        .saturating_sub(crate::settings::FILES_KEPT)
        .max(1);
    let connections = match given {
        Some(given) if given > possible => {
            tracing::warn!(
                given,
                open_files = files,
                max_connections = possible,
                "max-connections is more than the open-file limit allows; lowered"
            );
            possible
        }
        Some(given) => given,
        None => possible,
    };
    tracing::info!(
        open_files = files,
        max_connections = connections,
        "OpAMP connection limit"
    );
    connections
}
