//! The OpAMP endpoint: WebSocket and plain HTTP on one path. These tasks decode, route to
//! the agent's actor and write back what it answers; they make no decisions of their own.

mod http;
mod socket;
mod ws;

pub use http::{BodyError, read_message};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{Predicate, SizeAbove};
use tower_http::decompression::RequestDecompressionLayer;

use crate::core::packages::DOWNLOAD_PATH;
use crate::tasks::agent::ConnId;
use crate::tasks::fleet::Fleet;

pub const OPAMP_PATH: &str = "/v1/opamp";
/// Set (to `opamp`) on the OpAMP listener's answer to a path it does not serve, so that a
/// client that meant the admin API (the CLI's `--server`) can say where it went instead.
pub const LISTENER_HEADER: &str = "x-corral-listener";
/// Default bound on one inbound message (after decompression).
pub use crate::settings::DEFAULT_MAX_MESSAGE_SIZE;

/// A package's bytes by SHA-256, with range requests so an agent can resume a download.
async fn download(
    axum::extract::State(state): axum::extract::State<OpampState>,
    axum::extract::Path(sha256): axum::extract::Path<String>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use tower::ServiceExt;
    let hash = (sha256.len() == 64)
        .then(|| crate::core::domain::ContentHash::from_hex(&sha256))
        .flatten();
    let Some(hash) = hash else {
        return (StatusCode::NOT_FOUND, "no such package").into_response();
    };
    let path = state.blobs.path(&hash);
    if !path.is_file() {
        return (StatusCode::NOT_FOUND, "no such package").into_response();
    }
    // A download holds a file as well as its connection: their number is bounded apart.
    let Ok(place) = state.downloads.clone().try_acquire_owned() else {
        state.fleet.metrics().rejected("downloads_busy");
        return crate::edge::listener::retry_later(
            "too many downloads at once; retry later",
            crate::edge::listener::gate::retry_after(),
        );
    };
    match tower_http::services::ServeFile::new(path)
        .oneshot(request)
        .await
    {
        Ok(response) => response.map(|body| {
            axum::body::Body::new(crate::edge::listener::Guarded::new(
                axum::body::Body::new(body),
                place,
            ))
        }),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `http://host[:port]` from the request's Host header: where this agent reaches us.
fn origin(headers: &axum::http::HeaderMap) -> Option<Arc<str>> {
    let host = headers.get(axum::http::header::HOST)?.to_str().ok()?;
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    valid.then(|| Arc::from(format!("http://{host}")))
}

/// How long a WebSocket may stay quiet.
#[derive(Clone, Copy, Debug)]
pub struct SocketTimers {
    /// Until its first message.
    pub first_message_timeout: std::time::Duration,
    /// Between signs of life, for agents that do not report heartbeats.
    pub ping_interval: std::time::Duration,
}

#[derive(Clone)]
pub struct OpampState {
    pub fleet: Arc<Fleet>,
    pub blobs: crate::edge::store::BlobStore,
    pub max_message_size: usize,
    pub limits: SocketTimers,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    next_conn: Arc<AtomicU64>,
    /// Places for package downloads at once.
    downloads: Arc<tokio::sync::Semaphore>,
}

/// Package downloads served at once; more are told to retry later.
pub const MAX_DOWNLOADS: usize = 64;

impl OpampState {
    pub fn new(
        fleet: Arc<Fleet>,
        blobs: crate::edge::store::BlobStore,
        max_message_size: usize,
        limits: SocketTimers,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            fleet,
            blobs,
            max_message_size,
            limits,
            cancel,
            tracker,
            next_conn: Arc::new(AtomicU64::new(1)),
            downloads: Arc::new(tokio::sync::Semaphore::new(MAX_DOWNLOADS)),
        }
    }

    fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// How request bodies are decompressed: gzip only. The size bound applies after it, in
/// [`read_message`].
pub fn request_decompression() -> RequestDecompressionLayer {
    RequestDecompressionLayer::new()
        .gzip(true)
        .no_br()
        .no_deflate()
        .no_zstd()
}

/// Replies up to this many bytes go out as they are, whatever the client accepts: one that
/// fits a packet gains nothing on the wire from gzip, and setting up a deflate stream (some
/// 300 KiB of tables, zeroed) costs more than the whole rest of a bare poll's reply.
pub const COMPRESS_ABOVE: u16 = 1400;

/// The OpAMP listener's routes: `GET` (WebSocket upgrade) and `POST` (plain HTTP) on
/// [`OPAMP_PATH`]. Request bodies may be gzipped; replies larger than [`COMPRESS_ABOVE`] are
/// gzipped for clients that accept it.
pub fn router(state: OpampState) -> Router {
    let metrics = state.fleet.clone();
    let not_found_metrics = state.fleet.clone();
    let opamp = Router::new()
        .route(
            OPAMP_PATH,
            get(ws::upgrade)
                .post(http::poll)
                .fallback(move || async move {
                    metrics.metrics().rejected("method_not_allowed");
                    (
                        StatusCode::METHOD_NOT_ALLOWED,
                        "use POST for plain HTTP or GET to open a WebSocket",
                    )
                }),
        )
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .no_br()
                .no_deflate()
                .no_zstd()
                .compress_when(
                    SizeAbove::new(COMPRESS_ABOVE)
                        .and(|status: StatusCode, _, _: &_, _: &_| status.is_success()),
                ),
        )
        .layer(request_decompression());
    // Packages go out as stored: their length and ranges are what lets agents show progress
    // and resume, and they are compressed archives already.
    let downloads = Router::new().route(&format!("{DOWNLOAD_PATH}{{sha256}}"), get(download));
    opamp
        .merge(downloads)
        .fallback(move || async move {
            not_found_metrics.metrics().rejected("not_found");
            (
                StatusCode::NOT_FOUND,
                [(LISTENER_HEADER, "opamp")],
                format!("no such path; the OpAMP endpoint is {OPAMP_PATH}"),
            )
                .into_response()
        })
        .with_state(state)
}
