//! Wiring: opens the store, restores the fleet, and serves the OpAMP and API listeners until
//! the shutdown token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::domain::OwnTelemetry;
use crate::core::session::SessionConfig;
use crate::edge::api::{self, ApiState};
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
    let known = store.load_agents().await.context("cannot load agents")?;
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
        metrics,
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
        shutdown.clone(),
        tracker.clone(),
    ));
    let api = api::router(ApiState {
        fleet: fleet.clone(),
        store,
        writes,
        controller,
        blobs,
        max_package_size: settings.max_package_size,
        allowed_hosts: api::AllowedHosts(settings.api_allowed_hosts.clone().into()),
    });
    let opamp_listener = listeners.opamp.tap_io(|tcp| {
        // Replies are small and answer a request: never hold them back.
        let _ = tcp.set_nodelay(true);
    });
    let opamp_server = axum::serve(opamp_listener, opamp)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let api_server =
        axum::serve(listeners.api, api).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let servers = async {
        tokio::try_join!(
            async { opamp_server.await.context("OpAMP listener failed") },
            async { api_server.await.context("API listener failed") },
        )
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
            Ok(((), ()))
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
    served.map(|_| ())
}
