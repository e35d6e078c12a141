//! One accepted connection: where it is in the request cycle, and the socket that closes it
//! when the client takes too long at any step.
//!
//! hyper's own header timeout starts as soon as it waits for a request, so it would cut idle
//! keep-alive connections at the header timeout, and it has no body or idle timeout. Here the
//! service tells the connection when a request's headers are in, when its reply is made and
//! when the reply's body is all out; the socket knows when the next request's first byte comes
//! and when a write moves a reply on, and holds the deadline of the step the connection is at.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::gate::Place;

/// Where a connection is in the request cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// Waiting for a request's headers: since the connection opened or since the request's
    /// first byte.
    Headers = 0,
    /// The headers are in; the body is read and the reply made.
    Request = 1,
    /// The reply is being written (a package download may take long): it must keep moving.
    Replying = 2,
    /// The reply is written; the connection waits for another request.
    Idle = 3,
    /// A WebSocket now: its task keeps its own time.
    Upgraded = 4,
}

impl Step {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Step::Headers,
            1 => Step::Request,
            2 => Step::Replying,
            3 => Step::Idle,
            _ => Step::Upgraded,
        }
    }

    /// What a timeout at this step is counted as.
    pub fn timeout_reason(self) -> &'static str {
        match self {
            Step::Headers => "header_timeout",
            Step::Request => "body_timeout",
            Step::Replying => "reply_stalled",
            Step::Idle | Step::Upgraded => "idle_timeout",
        }
    }
}

/// How long a client may take at each step.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub headers: Duration,
    /// `None`: as long as the request takes (the admin API's package uploads).
    pub request: Option<Duration>,
    /// How long a reply being written may stop moving.
    pub stall: Duration,
    /// How long a connection waits for its next request after a reply; zero: it is closed
    /// after each reply.
    pub keep_alive: Duration,
}

impl Timeouts {
    /// The time allowed at `step`; `written_out`: the last reply is flushed.
    fn of(&self, step: Step, written_out: bool) -> Option<Duration> {
        match step {
            Step::Headers => Some(self.headers),
            Step::Request => self.request,
            // Put back whenever the client takes more of the reply; an idle connection's last
            // bytes may still be going out.
            Step::Replying => Some(self.stall),
            Step::Idle if !written_out => Some(self.stall),
            // With no keep-alive the reply said `Connection: close`: hyper closes after it.
            Step::Idle => (!self.keep_alive.is_zero()).then_some(self.keep_alive),
            Step::Upgraded => None,
        }
    }
}

/// What the connection's service and its socket share. Handlers find it in the request's
/// extensions as a [`Conn`]. It lives as long as the socket, WebSocket included.
#[derive(Debug)]
struct Shared {
    step: AtomicU8,
    /// Bumped whenever the service moves the step, for the socket to set its deadline anew.
    moves: AtomicU32,
    /// Held until the connection's first message is answered.
    handshake: Mutex<Option<Place>>,
    /// The connection's place under the listener's connection limit.
    _open: Place,
    /// The step the socket timed out at, if it did ([`NOT_TIMED_OUT`] if not).
    timed_out: AtomicU8,
    /// Everything written has been flushed: hyper holds nothing unwritten.
    written_out: AtomicBool,
    /// The socket holds bytes read ahead (pipelined) that hyper has not taken yet: the
    /// connection is not parked until they are taken, so they are never copied twice.
    read_ahead: AtomicBool,
    /// The last request may be followed by another on this connection: HTTP/1.1 without
    /// `Connection: close`, and its body read to the end (the rest of a body left unread must
    /// never be taken for a request).
    reusable: AtomicBool,
}

const NOT_TIMED_OUT: u8 = u8::MAX;

/// A connection as its handlers see it.
#[derive(Clone, Debug)]
pub struct Conn(Arc<Shared>);

impl Conn {
    pub fn new(open: Place, handshake: Option<Place>) -> Self {
        Conn(Arc::new(Shared {
            step: AtomicU8::new(Step::Headers as u8),
            moves: AtomicU32::new(0),
            handshake: Mutex::new(handshake),
            _open: open,
            timed_out: AtomicU8::new(NOT_TIMED_OUT),
            written_out: AtomicBool::new(true),
            read_ahead: AtomicBool::new(false),
            reusable: AtomicBool::new(false),
        }))
    }

    /// Between requests: the last reply is all written and flushed, so the connection may be
    /// parked (its HTTP state dropped, its socket kept).
    pub fn is_idle(&self) -> bool {
        self.step() == Step::Idle
            && self.0.written_out.load(Ordering::Acquire)
            && self.0.reusable.load(Ordering::Acquire)
            && !self.0.read_ahead.load(Ordering::Acquire)
    }

    /// A request's head is in: whether the connection may carry another after it, once its
    /// body has been read to the end. Gives the body to read, which tells when it has been.
    pub fn request<B>(
        &self,
        request: axum::http::Request<B>,
    ) -> axum::http::Request<axum::body::Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let closes = request.version() != axum::http::Version::HTTP_11
            || request
                .headers()
                .get_all(axum::http::header::CONNECTION)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
                });
        let ended = request.body().is_end_stream();
        self.0.reusable.store(!closes && ended, Ordering::Release);
        if closes || ended {
            return request.map(axum::body::Body::new);
        }
        let read = ReadToEnd(self.clone());
        request.map(|body| axum::body::Body::new(Guarded::new(body, read)))
    }

    pub fn step(&self) -> Step {
        Step::from_u8(self.0.step.load(Ordering::Acquire))
    }

    /// How many times the service has moved the step: a new request moves it.
    pub fn moves(&self) -> u32 {
        self.0.moves.load(Ordering::Acquire)
    }

    fn move_to(&self, step: Step) {
        self.0.step.store(step as u8, Ordering::Release);
        self.0.moves.fetch_add(1, Ordering::AcqRel);
    }

    /// A request's headers are in.
    pub fn request_started(&self) {
        if self.step() != Step::Upgraded {
            self.move_to(Step::Request);
        }
    }

    /// A request's reply is made; it is being written.
    pub fn replying(&self) {
        if self.step() != Step::Upgraded {
            self.move_to(Step::Replying);
        }
    }

    /// A request's reply is all written: the connection's first message has been answered.
    pub fn replied(&self) {
        if self.step() == Step::Replying {
            self.move_to(Step::Idle);
        }
        self.handshake_done();
    }

    /// The connection is a WebSocket from now on.
    pub fn upgraded(&self) {
        self.move_to(Step::Upgraded);
    }

    /// The step at which the client took too long, if it did.
    pub fn timed_out(&self) -> Option<Step> {
        match self.0.timed_out.load(Ordering::Acquire) {
            NOT_TIMED_OUT => None,
            step => Some(Step::from_u8(step)),
        }
    }

    /// The connection's first message is answered: it no longer counts as a handshake.
    pub fn handshake_done(&self) {
        self.0.handshake.lock().take();
    }
}

/// A TCP stream that fails with `TimedOut` when the client overstays the step its connection
/// is at.
pub struct Timed {
    inner: TcpStream,
    conn: Conn,
    timeouts: Timeouts,
    /// The step the deadline was set for, and the service's moves seen so far.
    step: Step,
    moves: u32,
    /// Made only when a step has a timeout; dropped once the connection is a WebSocket.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes read from the socket that the last HTTP state had not used: read again first.
    unread: bytes::Bytes,
}

impl Timed {
    pub fn new(inner: TcpStream, conn: Conn, timeouts: Timeouts) -> Self {
        let mut timed = Self {
            inner,
            conn,
            timeouts,
            step: Step::Headers,
            moves: 0,
            deadline: None,
            unread: bytes::Bytes::new(),
        };
        timed.start(Step::Headers);
        timed
    }

    /// Gives back bytes read from the socket that were not used, to be read again first
    /// (before any given back earlier and not read yet). They are copied: hyper's come in its
    /// whole read buffer.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut all = bytes::BytesMut::with_capacity(bytes.len() + self.unread.len());
        all.extend_from_slice(bytes);
        all.extend_from_slice(&self.unread);
        self.unread = all.freeze();
        self.conn.0.read_ahead.store(true, Ordering::Release);
    }

    /// Waits, between requests, until the next one starts (or the client closes): true; or
    /// until the keep-alive deadline passes: false.
    pub async fn next_request(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            if !self.unread.is_empty() {
                return Poll::Ready(true);
            }
            if self.follow(cx) {
                let _ = self.timed_out();
                return Poll::Ready(false);
            }
            match self.inner.poll_read_ready(cx) {
                Poll::Ready(_) => Poll::Ready(true),
                Poll::Pending if self.overdue(cx) => {
                    let _ = self.timed_out();
                    Poll::Ready(false)
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    fn start(&mut self, step: Step) {
        self.step = step;
        let written_out = self.conn.0.written_out.load(Ordering::Acquire);
        match self.timeouts.of(step, written_out) {
            Some(limit) => {
                let at = Instant::now() + limit;
                match &mut self.deadline {
                    Some(deadline) => deadline.as_mut().reset(at),
                    None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
                }
            }
            None => self.deadline = None,
        }
    }

    /// Follows the service's moves; true if the new step's deadline has passed already. A
    /// deadline set anew is polled at once, so that it wakes the connection's task even if
    /// nothing polls this socket before it passes: the task may be waiting on the socket's
    /// readiness, registered under an earlier step.
    fn follow(&mut self, cx: &mut Context<'_>) -> bool {
        let moves = self.conn.0.moves.load(Ordering::Acquire);
        if moves == self.moves {
            return false;
        }
        self.moves = moves;
        self.start(self.conn.step());
        self.overdue(cx)
    }

    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready())
    }

    /// A write that moved a reply on puts its deadline back; one that waits may time out.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if matches!(poll, Poll::Ready(Ok(written)) if written > 0) {
            self.conn.0.written_out.store(false, Ordering::Release);
        }
        match poll {
            // The reply moved on (its last bytes, perhaps, after the body's end): its time is
            // put back.
            Poll::Ready(Ok(written))
                if written > 0 && matches!(self.step, Step::Replying | Step::Idle) =>
            {
                self.start(self.step);
                let _ = self.overdue(cx);
                Poll::Ready(Ok(written))
            }
            Poll::Pending if self.overdue(cx) => Poll::Ready(Err(self.timed_out())),
            poll => poll,
        }
    }

    fn timed_out(&self) -> io::Error {
        self.conn
            .0
            .timed_out
            .store(self.step as u8, Ordering::Release);
        io::Error::new(io::ErrorKind::TimedOut, self.step.timeout_reason())
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.follow(cx) {
            return Poll::Ready(Err(this.timed_out()));
        }
        let before = buf.filled().len();
        let read = if this.unread.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            if this.unread.is_empty() {
                this.conn.0.read_ahead.store(false, Ordering::Release);
            }
            Poll::Ready(Ok(()))
        };
        match read {
            Poll::Ready(Ok(())) => {
                // The first byte of the next request: its headers are due.
                if this.step == Step::Idle && buf.filled().len() > before {
                    this.conn
                        .0
                        .step
                        .store(Step::Headers as u8, Ordering::Release);
                    this.start(Step::Headers);
                    let _ = this.overdue(cx);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.overdue(cx) => Poll::Ready(Err(this.timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.follow(cx) {
            return Poll::Ready(Err(this.timed_out()));
        }
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.follow(cx) {
            return Poll::Ready(Err(this.timed_out()));
        }
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// hyper flushes its socket once its own buffer is all written: nothing is held back.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() && !self.conn.0.written_out.swap(true, Ordering::AcqRel) {
            // The keep-alive wait starts when the last reply is all out.
            if self.step == Step::Idle {
                self.start(Step::Idle);
                let _ = self.overdue(cx);
            }
        }
        flushed
    }

    /// Between requests the socket is left as it is: the connection may be parked, and a
    /// socket closed is shut down anyway.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.step() == Step::Idle {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a [`Guarded`] body does once it has been read to its end. Dropping the guard is all
/// most guards do, and they do it also when the body is dropped before its end.
pub trait AtEnd {
    fn at_end(self);
}

/// A body that holds `guard` until its last frame has been taken, then gives it
/// [`AtEnd::at_end`]; a body dropped before its end drops its guard.
pub struct Guarded<G: AtEnd, B = axum::body::Body> {
    body: B,
    guard: Option<G>,
}

impl<G: AtEnd, B> Guarded<G, B> {
    pub fn new(body: B, guard: G) -> Self {
        Self {
            body,
            guard: Some(guard),
        }
    }
}

impl<G, B> http_body::Body for Guarded<G, B>
where
    G: AtEnd + Unpin,
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            _ => false,
        };
        if ended && let Some(guard) = this.guard.take() {
            guard.at_end();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A place under a limit (the package downloads), held by a reply's body while it is written.
impl AtEnd for tokio::sync::OwnedSemaphorePermit {
    fn at_end(self) {}
}

impl AtEnd for Replied {
    fn at_end(self) {}
}

/// Tells its connection that the request's body was read to its end (and so that another
/// request may follow on it); dropped before that, it tells nothing.
struct ReadToEnd(Conn);

impl AtEnd for ReadToEnd {
    fn at_end(self) {
        self.0.0.reusable.store(true, Ordering::Release);
    }
}

/// Tells its connection, when dropped, that the reply is all written.
pub struct Replied(pub Conn);

impl Drop for Replied {
    fn drop(&mut self) {
        self.0.replied();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: with no keep-alive, the idle deadline (zero) started when the reply's body
    /// ended, before its last bytes were written, and cut some replies short.
    #[test]
    fn an_idle_connection_waits_for_its_keep_alive_only_once_its_reply_is_out() {
        let s = Duration::from_secs;
        let mut timeouts = Timeouts {
            headers: s(10),
            request: Some(s(30)),
            stall: s(60),
            keep_alive: s(5),
        };
        assert_eq!(timeouts.of(Step::Idle, false), Some(s(60)), "still writing");
        assert_eq!(timeouts.of(Step::Idle, true), Some(s(5)));
        timeouts.keep_alive = Duration::ZERO;
        assert_eq!(timeouts.of(Step::Idle, false), Some(s(60)));
        assert_eq!(
            timeouts.of(Step::Idle, true),
            None,
            "Connection: close ends it"
        );
        assert_eq!(timeouts.of(Step::Replying, true), Some(s(60)));
        assert_eq!(timeouts.of(Step::Upgraded, true), None);
    }
}
