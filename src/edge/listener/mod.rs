//! The accept loop under both listeners: HTTP/1.1 (with upgrades) on every accepted
//! connection, within bounds no client can stretch: a number of open connections, a pace of
//! new ones, and a deadline on every step of a request (see [`conn`]).

mod conn;
pub mod gate;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub use conn::{Conn, Guarded, Step, Timeouts};
use gate::{Ceiling, Gate, Refusal};

use crate::telemetry::Metrics;

/// What a connection past the limit is told before it is closed.
const FULL: &str = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\n\
                    Connection: close\r\nContent-Length: 0\r\n\r\n";

/// How long accepting pauses after an error that is not the client's (out of files).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Hands places back from parked connections when the listener's connections pass 15/16 of
/// their limit (each new connection then closes one parked connection), so that a new connection is not refused while idle ones could make room. The one
/// parked last goes first: its agent has just been answered and is the latest to come back,
/// so its next request is the least likely to cross the close, and the agents that keep their
/// connections stay the same ones.
struct Reclaim {
    open: Ceiling,
    crowded_at: usize,
    parked: tokio::sync::Notify,
}

impl Reclaim {
    fn new(open: Ceiling, max: usize) -> Self {
        Self {
            open,
            crowded_at: max - max.div_ceil(16),
            parked: tokio::sync::Notify::new(),
        }
    }

    fn crowded(&self) -> bool {
        self.open.held() > self.crowded_at
    }

    /// A connection came in: if places are running out, one parked connection closes.
    fn entered(&self) {
        if self.crowded() {
            self.parked.notify_last();
        }
    }
}

/// One listener's bounds.
pub struct Bounds {
    /// Its name in metrics: `opamp` or `api`.
    pub name: &'static str,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    /// Paces new connections (the OpAMP listener); `None` serves every one.
    pub gate: Option<Gate>,
}

/// Serves `router` on `listener` until `shutdown`; then asks every connection to finish its
/// request and close, and waits for them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut bounds: Bounds,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let open = Ceiling::new(bounds.max_connections);
    let reclaim = Arc::new(Reclaim::new(open.clone(), bounds.max_connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    let name = bounds.name;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !is_connection_error(&e) {
                        tracing::warn!(listener = name, error = %e, "cannot accept connections");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Some(place) = open.enter() else {
            metrics.cut(name, "max_connections");
            // Room for the next one, if a connection is parked.
            reclaim.entered();
            // Best effort, without waiting: a client that reads learns when to come back.
            let _ = stream.try_write(FULL.as_bytes());
            continue;
        };
        reclaim.entered();
        // Replies are small and answer a request: never hold them back.
        let _ = stream.set_nodelay(true);
        let (handshake, refusal) = match &mut bounds.gate {
            Some(gate) => match gate.admit(std::time::Instant::now()) {
                Ok(handshake) => (Some(handshake), None),
                Err((refusal, after)) => {
                    metrics.cut(name, refusal.as_str());
                    (None, Some((refusal, after)))
                }
            },
            None => (None, None),
        };
        let conn = Conn::new(place, handshake);
        let io = conn::Timed::new(stream, conn.clone(), bounds.timeouts);
        let close_after_reply = bounds.timeouts.keep_alive.is_zero();
        let service = Service {
            conn: conn.clone(),
            router: router.clone(),
            refusal,
            close_after_reply,
        };
        connections.spawn(run(
            http.clone(),
            io,
            service,
            (name, metrics.clone()),
            (reclaim.clone(), shutdown.clone()),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// What serves one connection's requests.
#[derive(Clone)]
struct Service {
    conn: Conn,
    router: Router,
    /// Told to come back later instead (its first request, after which it is closed).
    refusal: Option<(Refusal, Duration)>,
    /// No keep-alive: every reply says `Connection: close`.
    close_after_reply: bool,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let Service {
            conn,
            router,
            refusal,
            close_after_reply,
        } = self.clone();
        conn.request_started();
        let mut request = conn.request(request);
        request.extensions_mut().insert(conn.clone());
        Box::pin(async move {
            let mut response = match refusal {
                Some((refusal, after)) => come_back_later(refusal, after),
                None => router.oneshot(request).await.into_response(),
            };
            conn.replying();
            // A WebSocket's task takes the connection over once the 101 is out.
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                return Ok(response);
            }
            if close_after_reply {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let replied = conn::Replied(conn);
            Ok(response.map(|body| axum::body::Body::new(Guarded::new(body, replied))))
        })
    }
}

/// How one round of HTTP on a connection ended.
enum Round {
    /// The connection is done (closed, upgraded, failed or told to close).
    Over,
    /// It went idle and its HTTP state was dropped; the socket waits for the next request.
    Parked,
}

/// Serves one accepted connection until it closes. Between requests the connection is parked:
/// hyper's state (a read and a write buffer, 16 KiB) is dropped and only the socket waits, so
/// that an agent polling every 30 s on a kept-alive connection costs its socket, not
/// buffers; the next request starts a new round of HTTP on the same socket.
async fn run(
    http: hyper::server::conn::http1::Builder,
    mut io: conn::Timed,
    mut service: Service,
    (name, metrics): (&'static str, Arc<Metrics>),
    (reclaim, shutdown): (Arc<Reclaim>, CancellationToken),
) {
    let conn = service.conn.clone();
    loop {
        let mut connection = Box::pin(
            http.serve_connection(TokioIo::new(io), service.clone())
                .with_upgrades(),
        );
        // Only the first request can be refused.
        service.refusal = None;
        // When parking was asked: the service's moves then.
        let mut parking: Option<u32> = None;
        let round = std::future::poll_fn(|cx| {
            loop {
                match connection.as_mut().poll(cx) {
                    // Parked only if hyper closed the idle connection as asked. Not if a
                    // request slipped in meanwhile (hyper answered it with `Connection:
                    // close`), nor after an error, which is the client's (gone, or breaking
                    // HTTP; hyper answers what it can).
                    std::task::Poll::Ready(Ok(())) if parking == Some(conn.moves()) => {
                        return std::task::Poll::Ready(Round::Parked);
                    }
                    std::task::Poll::Ready(_) => return std::task::Poll::Ready(Round::Over),
                    // Idle between requests: hyper closes its side at once and gives the
                    // socket back.
                    std::task::Poll::Pending if parking.is_none() && conn.is_idle() => {
                        parking = Some(conn.moves());
                        connection.as_mut().graceful_shutdown();
                    }
                    std::task::Poll::Pending => return std::task::Poll::Pending,
                }
            }
        });
        let round = tokio::select! {
            round = round => round,
            () = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
                break;
            }
        };
        let parts = match round {
            Round::Parked => std::pin::Pin::into_inner(connection).into_parts(),
            Round::Over => None,
        };
        let Some(hyper::server::conn::http1::Parts {
            io: kept, read_buf, ..
        }) = parts
        else {
            break;
        };
        io = kept.into_inner();
        // Copied: the bytes hyper hands back share its whole read buffer, which must go
        // before the wait.
        io.unread(&read_buf);
        drop(read_buf);
        let next = loop {
            tokio::select! {
                next = io.next_request() => break next,
                () = reclaim.parked.notified() => if reclaim.crowded() {
                    metrics.cut(name, "reclaimed");
                    break false;
                },
                () = shutdown.cancelled() => break false,
            }
        };
        if !next {
            break;
        }
    }
    if let Some(step) = conn.timed_out() {
        metrics.cut(name, step.timeout_reason());
    }
}

/// A 503 with a retry delay drawn at random, so that the excess of a storm comes back spread
/// out. The connection is closed after it.
fn come_back_later(refusal: Refusal, after: Duration) -> Response {
    let message = match refusal {
        Refusal::Rate => "too many new connections; retry later",
        Refusal::Handshakes => "too many connections starting at once; retry later",
    };
    let mut response = retry_later(message, after);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// 503 Service Unavailable, saying why and when to come back.
pub fn retry_later(message: &'static str, after: Duration) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
    response
}

/// Errors of one connection that is gone already: nothing to wait for.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every parked connection is a task waiting on this future: its size is paid per
    /// connection kept alive.
    #[tokio::test]
    async fn a_parked_connection_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let conn = Conn::new(Ceiling::new(1).enter().unwrap(), None);
        let timeouts = Timeouts {
            headers: Duration::from_secs(1),
            request: None,
            stall: Duration::from_secs(1),
            keep_alive: Duration::from_secs(1),
        };
        let service = Service {
            conn: conn.clone(),
            router: Router::new(),
            refusal: None,
            close_after_reply: false,
        };
        let task = run(
            hyper::server::conn::http1::Builder::new(),
            conn::Timed::new(stream, conn, timeouts),
            service,
            ("test", Arc::new(Metrics::default())),
            (
                Arc::new(Reclaim::new(Ceiling::new(1), 1)),
                CancellationToken::new(),
            ),
        );
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task: {size} B");
        assert!(size <= 1536, "{size} B");
    }
}
