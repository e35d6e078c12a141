//! One plain-HTTP agent's own keep-alive connection, held the way the collector's OpAMP
//! client (opamp-go, on Go's `http.Transport`) holds it: opened by the first poll, reused while
//! it stays open, closed by the agent after `idle` unused, opened anew when the server has
//! closed it. Every request asks for a gzip reply. A poll that meets its reused connection
//! closed under it goes once more on a new one, as Go retries a request the server closed
//! an idle connection on.

use std::io::Read as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT_ENCODING, CONNECTION, CONTENT_ENCODING, HOST};
use hyper::{HeaderMap, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, timeout};

use crate::context::{Ctx, Endpoint};
use crate::stats::inc;

/// How long one poll may take, connection included.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// A reply, its body decompressed.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a request got no reply.
enum Failed {
    Connect(String),
    Http(hyper::Error),
}

/// The agent's connection, if it holds one, and when it was last used.
#[derive(Default)]
pub struct OwnConnection {
    held: Option<(SendRequest<Full<Bytes>>, Instant)>,
}

/// Where an agent's polls go.
pub struct Route<'a> {
    pub endpoint: &'a Endpoint,
    pub uri: &'a Uri,
    pub idle: Duration,
}

impl OwnConnection {
    /// POSTs `body` with `headers` and reads the whole reply.
    pub async fn post(
        &mut self,
        ctx: &Ctx,
        index: usize,
        route: &Route<'_>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Answer, String> {
        match timeout(
            POLL_TIMEOUT,
            self.exchange(ctx, index, route, headers, body),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => {
                self.held = None;
                Err("poll timed out".into())
            }
        }
    }

    async fn exchange(
        &mut self,
        ctx: &Ctx,
        index: usize,
        route: &Route<'_>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Answer, String> {
        // Go closes a connection unused for its idle timeout; one the server closed is gone.
        if self
            .held
            .as_ref()
            .is_some_and(|(sender, used)| used.elapsed() >= route.idle || sender.is_closed())
        {
            self.held = None;
        }
        let reused = self.held.is_some();
        let response = match self.send(ctx, index, route, headers, body.clone()).await {
            Err(Failed::Http(e)) if reused && (e.is_canceled() || e.is_incomplete_message()) => {
                // Closed by the server between our check and our request.
                self.held = None;
                self.send(ctx, index, route, headers, body).await
            }
            sent => sent,
        }
        .map_err(|e| {
            self.held = None;
            match e {
                Failed::Connect(e) => e,
                Failed::Http(e) => crate::http::error_chain(&e),
            }
        })?;
        let (parts, incoming) = response.into_parts();
        let bytes = incoming
            .collect()
            .await
            .map_err(|e| {
                self.held = None;
                crate::http::error_chain(&e)
            })?
            .to_bytes();
        // A server that says it closes is taken at its word, as Go's client does.
        let closing = parts
            .headers
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if closing {
            self.held = None;
        } else if let Some((_, used)) = &mut self.held {
            *used = Instant::now();
        }
        let gzipped = parts
            .headers
            .get(CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let body = if gzipped {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut plain)
                .map_err(|e| format!("gzip reply: {e}"))?;
            Bytes::from(plain)
        } else {
            bytes
        };
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends one request on the held connection, opening one first if none is held.
    async fn send(
        &mut self,
        ctx: &Ctx,
        index: usize,
        route: &Route<'_>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failed> {
        if self.held.is_none() {
            self.held = Some((open(ctx, index, route).await?, Instant::now()));
        }
        let Some((sender, _)) = self.held.as_mut() else {
            unreachable!("a connection was just opened");
        };
        let mut request = Request::post(route.uri.path())
            .body(Full::new(body))
            .unwrap_or_default();
        *request.headers_mut() = headers.clone();
        if let Some(authority) = route.uri.authority()
            && let Ok(host) = authority.as_str().parse()
        {
            request.headers_mut().insert(HOST, host);
        }
        request.headers_mut().insert(
            ACCEPT_ENCODING,
            hyper::header::HeaderValue::from_static("gzip"),
        );
        sender.ready().await.map_err(Failed::Http)?;
        sender.send_request(request).await.map_err(Failed::Http)
    }
}

/// A new connection for agent `index`, its driver spawned; it ends when the agent lets go of
/// it or the server closes it.
async fn open(
    ctx: &Ctx,
    index: usize,
    route: &Route<'_>,
) -> Result<SendRequest<Full<Bytes>>, Failed> {
    let stream = route
        .endpoint
        .connect(index)
        .await
        .map_err(Failed::Connect)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Failed::Http)?;
    inc(&ctx.stats.http_connections_opened);
    tokio::spawn(connection);
    Ok(sender)
}
