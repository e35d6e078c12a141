//! The WebSocket under an agent's connection: the RFC 6455 opening handshake on our HTTP
//! server, and a socket whose buffers go back to their small size after a large message.
//!
//! tungstenite keeps a connection's read buffer as large as the largest frame it has read, and
//! its write buffer as large as the largest frame it wrote. Every agent's first report carries
//! its effective config (5 KiB and more for a real collector), so those buffers would be most
//! of what an idle agent costs. After a large message, once every byte read from the network
//! belongs to a frame already handed to us, [`refresh`] rebuilds the socket around the same
//! connection with fresh buffers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// An agent's WebSocket.
pub type Socket = WebSocketStream<CountingIo>;

/// The upgraded connection, counting the bytes read from it.
pub struct CountingIo {
    inner: TokioIo<Upgraded>,
    read: u64,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        poll
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A handshake refused: the status and why.
#[derive(Debug)]
pub struct Rejected(StatusCode, &'static str);

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        let mut response = (self.0, self.1).into_response();
        if self.0 == StatusCode::UPGRADE_REQUIRED {
            // RFC 6455 §4.2.2: name the version we speak.
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// Validates a WebSocket opening handshake. Gives the `101 Switching Protocols` response to
/// return and the connection to take over once it is sent.
pub fn accept(request: &mut Request) -> Result<(Response, OnUpgrade), Rejected> {
    if request.method() != Method::GET {
        return Err(Rejected(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket handshake is a GET",
        ));
    }
    let headers = request.headers();
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Rejected(
            StatusCode::BAD_REQUEST,
            "Connection header must include 'upgrade'",
        ));
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(Rejected(
            StatusCode::BAD_REQUEST,
            "Upgrade header must be 'websocket'",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Rejected(
            StatusCode::UPGRADE_REQUIRED,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Rejected(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key header is missing",
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    let Some(upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(Rejected(
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded",
        ));
    };
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let out = response.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok((response, upgrade))
}

/// Whether a comma-separated header has `token`, in any case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// The socket over a connection whose handshake is done.
pub async fn open(upgraded: Upgraded, config: WebSocketConfig) -> Socket {
    let io = CountingIo {
        inner: TokioIo::new(upgraded),
        read: 0,
    };
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// The fewest bytes a masked client frame with `payload` bytes can take on the wire. Summed
/// over the messages received, it equals the bytes read only if none are left unparsed.
pub fn min_frame_len(payload: usize) -> u64 {
    let length_field = match payload {
        0..=125 => 0,
        126..=65535 => 2,
        _ => 8,
    };
    (2 + length_field + 4 + payload) as u64
}

/// Rebuilds `socket` with fresh buffers if every byte read from the connection belongs to the
/// frames received so far (at least `received` bytes on the wire), so nothing buffered is
/// lost. Otherwise gives it back as it is; a later call may succeed.
pub async fn refresh(socket: Socket, received: u64) -> (Socket, bool) {
    if socket.get_ref().read != received {
        return (socket, false);
    }
    let config = *socket.get_config();
    let io = socket.into_inner();
    let fresh = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    (fresh, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_follow_rfc_6455() {
        assert_eq!(min_frame_len(0), 6);
        assert_eq!(min_frame_len(125), 131);
        assert_eq!(min_frame_len(126), 134);
        assert_eq!(min_frame_len(65535), 65543);
        assert_eq!(min_frame_len(65536), 65550);
    }

    #[test]
    fn header_tokens_are_matched_in_any_case_within_lists() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::CONNECTION, "close"));
    }
}
