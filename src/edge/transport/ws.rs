use std::collections::HashMap;
use std::sync::Arc;

use crate::channel::RecvError;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::time::Sleep;

use super::OpampState;
use super::socket::{self, Socket};
use crate::core::domain::AgentCapabilities;
use crate::core::domain::{InstanceUid, ReplyError, ServerReply};
use crate::core::session::quiet_reply;
use crate::edge::listener::Conn;
use crate::edge::protocol::{
    Inbound, decode_agent_message, encode_ws_frame, reply_to_proto, unframe_ws,
};
use crate::tasks::agent::{AgentHandle, ConnId, OUTBOUND_CAPACITY, Outgoing, Reply, Source};
use crate::tasks::fleet::DispatchError;

/// Close codes of RFC 6455 used here.
const GOING_AWAY: u16 = 1001;
const PROTOCOL_ERROR: u16 = 1002;
const UNSUPPORTED_DATA: u16 = 1003;
const INVALID_PAYLOAD: u16 = 1007;
const POLICY_VIOLATION: u16 = 1008;
const MESSAGE_TOO_BIG: u16 = 1009;
const TRY_AGAIN_LATER: u16 = 1013;
/// How long one write may wait on an agent that does not read.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Per-connection buffers: small, since OpAMP messages are few and mostly tiny (a heartbeat is
/// a few dozen bytes). Larger messages grow the read buffer as needed, up to the message cap,
/// and the socket is refreshed afterwards; replies are written out at once instead of gathered.
const READ_BUFFER: usize = 256;
const WRITE_BUFFER: usize = 0;
/// A message larger than this, in or out, leaves buffers worth giving back.
const REFRESH_ABOVE: usize = 1024;
/// Messages after a large one at which the socket's buffers are tried for a refresh.
const REFRESH_TRIES: u8 = 8;

pub(super) async fn upgrade(State(state): State<OpampState>, mut request: Request) -> Response {
    let (response, on_upgrade) = match socket::accept(&mut request) {
        Ok(accepted) => accepted,
        Err(rejected) => return rejected.into_response(),
    };
    let Some(conn) = request.extensions().get::<Conn>().cloned() else {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "connection state missing",
        )
            .into_response();
    };
    let origin = super::origin(request.headers());
    let max = state.max_message_size;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max.saturating_mul(2))
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let tracker = state.tracker.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                conn.upgraded();
                let socket = socket::open(upgraded, config).await;
                serve_connection(socket, state, (conn, origin)).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    response
}

/// Why a connection ended: a close to send (if any) and the reason the agent is disconnected.
struct Ending {
    close: Option<u16>,
    /// The agent closed: the reply to its close frame, queued by the codec, is still to send.
    answer_close: bool,
    reason: String,
}

impl Ending {
    fn closed(reason: impl Into<String>) -> Self {
        Self {
            close: None,
            answer_close: false,
            reason: reason.into(),
        }
    }

    fn close(code: u16, reason: impl Into<String>) -> Self {
        Self {
            close: Some(code),
            answer_close: false,
            reason: reason.into(),
        }
    }

    fn closed_by_agent() -> Self {
        Self {
            answer_close: true,
            ..Self::closed("websocket closed by agent")
        }
    }
}

/// The agents speaking on one connection (almost always one).
#[derive(Default)]
struct Speakers {
    /// Uids the server assigned on this connection, for agents that keep using the old one.
    aliases: HashMap<InstanceUid, InstanceUid>,
    /// Every agent routed to from this connection, to tell their actors when it ends.
    agents: Vec<InstanceUid>,
    /// The last agent routed to, so its heartbeats need no registry lookup.
    last: Option<(InstanceUid, AgentHandle)>,
}

/// What the connection's one timer waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// The first message, within the first-message timeout.
    FirstMessage,
    /// An agent that does not report heartbeats: a sign of life within every ping interval;
    /// after a quiet interval it is pinged, and after a second one it is given up.
    Life { heard: bool, pinged: bool },
    /// Nothing: the agent reports heartbeats, and the fleet watches for their silence.
    Nothing,
}

/// Waits for `timer`, or for ever without one.
fn ring(timer: &mut Option<Pin<Box<Sleep>>>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match timer {
        Some(timer) => timer.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

/// Moves frames between one WebSocket and the actors of the agents speaking on it.
async fn serve_connection(
    mut socket: Socket,
    state: OpampState,
    (listener_conn, origin): (Conn, Option<Arc<str>>),
) {
    let conn = state.next_conn_id();
    let metrics = state.fleet.metrics();
    let (outbound, replies) = crate::channel::bounded::<Outgoing>(OUTBOUND_CAPACITY);
    let mut speakers = Speakers::default();
    // The least number of bytes the frames received so far took on the wire.
    let mut received: u64 = 0;
    // A large message went through: the socket's buffers should be refreshed. A client whose
    // frames never add up (longer length fields than needed, fragments) is given up on after
    // a few tries, until its next large message.
    let mut refresh_due = false;
    let mut refresh_tries = 0u8;
    // Boxed: after its first message, a connection whose agent reports heartbeats has none.
    let mut timer = Some(Box::pin(tokio::time::sleep(
        state.limits.first_message_timeout,
    )));
    let mut watch = Watch::FirstMessage;

    // Made once: a fresh one per message would join and leave the server token's waiter list,
    // which every connection shares, on every heartbeat.
    let mut shutting_down = std::pin::pin!(state.cancel.cancelled());
    // Kept across messages, and made again only when it yields, so waiting for replies does
    // not join and leave the queue's waiter list on every heartbeat.
    let mut reply = std::pin::pin!(replies.recv());

    let ending = loop {
        tokio::select! {
            biased;
            out = &mut reply => {
                reply.set(replies.recv());
                match out {
                    Ok(Outgoing::Reply(reply)) => match Box::pin(write_reply(&mut socket, *reply)).await {
                        Ok(len) => refresh_due |= len > REFRESH_ABOVE,
                        Err(ending) => break ending,
                    },
                    Ok(Outgoing::Close { code, reason }) => break Ending::close(code, reason),
                    Err(RecvError::Aborted) => {
                        break Ending::close(TRY_AGAIN_LATER, "connection could not keep up with replies");
                    }
                    Err(RecvError::Closed) => break Ending::closed("websocket closed"),
                }
            }
            () = ring(&mut timer) => match watch_rings(&mut watch, &mut timer, &state, &speakers) {
                Rang::Ping => {
                    let ping = socket.send(Message::Ping(Bytes::new()));
                    if Box::pin(tokio::time::timeout(WRITE_TIMEOUT, ping)).await.is_err() {
                        break Ending::closed("agent stopped reading");
                    }
                }
                Rang::GiveUp(reason) => {
                    metrics.cut("opamp", reason);
                    let message = match reason {
                        "first_message_timeout" => "no first message in time",
                        _ => "no answer to ping in time",
                    };
                    break Ending::close(POLICY_VIOLATION, message);
                }
                Rang::Nothing => {}
            },
            frame = socket.next() => match frame {
                None => break Ending::closed("websocket closed"),
                Some(Ok(Message::Binary(bytes))) => {
                    heard(&mut watch);
                    received += socket::min_frame_len(bytes.len());
                    refresh_due |= bytes.len() > REFRESH_ABOVE;
                    let next = match unframe_ws(bytes).and_then(decode_agent_message) {
                        Ok(msg) => answer_here(&state, Inbound::from(msg), conn, &speakers),
                        Err(e) => {
                            metrics.decode_error(e.kind());
                            let code = match e {
                                crate::edge::protocol::DecodeError::Malformed(_)
                                | crate::edge::protocol::DecodeError::OutOfBounds(_) => INVALID_PAYLOAD,
                                _ => PROTOCOL_ERROR,
                            };
                            break Ending::close(code, e.to_string());
                        }
                    };
                    match next {
                        // Answered here; straight out unless replies are waiting, to keep
                        // their order.
                        Next::Answered(raw_uid) if replies.is_empty() => {
                            let reply = Reply { raw_uid, reply: quiet_reply() };
                            if let Err(ending) = Box::pin(write_reply(&mut socket, reply)).await {
                                break ending;
                            }
                        }
                        Next::Answered(raw_uid) => {
                            let reply = Reply { raw_uid, reply: quiet_reply() };
                            let _ = outbound.try_send(Outgoing::Reply(Box::new(reply)));
                        }
                        // Boxed: routing awaits the actor's mailbox and is the largest part of
                        // this future, which every idle connection would otherwise carry.
                        Next::Route(inbound, sent_uid) => {
                            let to = (conn, &outbound, &origin);
                            let routed = Box::pin(route(&state, inbound, sent_uid, to, &mut speakers));
                            if let Err(ending) = routed.await {
                                break ending;
                            }
                            if watch == Watch::FirstMessage {
                                listener_conn.handshake_done();
                            }
                            watch_agent(&mut watch, &mut timer, &state, &speakers);
                        }
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    metrics.decode_error("text_frame");
                    break Ending::close(UNSUPPORTED_DATA, "OpAMP uses binary frames");
                }
                Some(Ok(Message::Close(_))) => break Ending::closed_by_agent(),
                Some(Ok(Message::Ping(payload) | Message::Pong(payload))) => {
                    heard(&mut watch);
                    received += socket::min_frame_len(payload.len());
                }
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(e)) => {
                    if is_too_big(&e) {
                        metrics.rejected("too_large");
                        break Ending::close(
                            MESSAGE_TOO_BIG,
                            format!("message exceeds {} bytes", state.max_message_size),
                        );
                    }
                    break Ending::closed(lost_reason(&e));
                }
            },
            // While an agent's actor is attached here, the actor closes the connection at
            // shutdown: the token's future takes two locks every connection shares on each
            // poll, and this loop polls on every message.
            _ = &mut shutting_down, if !speakers.closed_by_actor(conn) => {
                break Ending::close(GOING_AWAY, "server shutting down");
            }
        }
        if refresh_due {
            let refreshed;
            (socket, refreshed) = Box::pin(socket::refresh(socket, received)).await;
            refresh_tries += 1;
            refresh_due = !refreshed && refresh_tries < REFRESH_TRIES;
            if !refresh_due {
                refresh_tries = 0;
            }
        }
    };

    if let Some(code) = ending.close {
        let frame = CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from(truncate_reason(&ending.reason)),
        };
        let _ = Box::pin(tokio::time::timeout(
            WRITE_TIMEOUT,
            socket.send(Message::Close(Some(frame))),
        ))
        .await;
    }
    if ending.answer_close {
        // Without the reply an agent sees its own clean close end abnormally (the Go client
        // logs "close 1006 (abnormal closure)" on every collector shutdown).
        let _ = Box::pin(tokio::time::timeout(WRITE_TIMEOUT, socket.flush())).await;
    }
    let agents = speakers.agents;
    if !agents.is_empty() {
        tracing::debug!(conn, reason = %ending.reason, "websocket ended");
    }
    Box::pin(state.fleet.connection_closed(&agents, conn, &ending.reason)).await;
}

/// What a ring of the connection's timer asks for.
enum Rang {
    Ping,
    /// Close the connection, counted under this reason.
    GiveUp(&'static str),
    Nothing,
}

/// A frame came: the agent is alive.
fn heard(watch: &mut Watch) {
    if let Watch::Life { heard, pinged } = watch {
        *heard = true;
        *pinged = false;
    }
}

/// After a message to the agent's actor: whether the agent needs pings, now that its
/// capabilities may have changed.
fn watch_agent(
    watch: &mut Watch,
    timer: &mut Option<Pin<Box<Sleep>>>,
    state: &OpampState,
    speakers: &Speakers,
) {
    let reports_heartbeats = speakers.last.as_ref().is_some_and(|(_, agent)| {
        agent
            .link()
            .capabilities()
            .contains(AgentCapabilities::REPORTS_HEARTBEAT)
    });
    match (reports_heartbeats, *watch) {
        (true, _) => {
            *watch = Watch::Nothing;
            *timer = None;
        }
        (false, Watch::Life { .. }) => {}
        (false, Watch::FirstMessage | Watch::Nothing) => {
            *watch = Watch::Life {
                heard: false,
                pinged: false,
            };
            let at = tokio::time::Instant::now() + state.limits.ping_interval;
            match timer {
                Some(timer) => timer.as_mut().reset(at),
                None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }
}

/// The connection's timer rang.
fn watch_rings(
    watch: &mut Watch,
    timer: &mut Option<Pin<Box<Sleep>>>,
    state: &OpampState,
    speakers: &Speakers,
) -> Rang {
    if *watch == Watch::FirstMessage {
        return Rang::GiveUp("first_message_timeout");
    }
    // The agent's capabilities may have come in since its first message was routed.
    watch_agent(watch, timer, state, speakers);
    let Watch::Life { heard, pinged } = *watch else {
        return Rang::Nothing;
    };
    let rang = match (heard, pinged) {
        (true, _) => Rang::Nothing,
        (false, false) => Rang::Ping,
        (false, true) => return Rang::GiveUp("ping_timeout"),
    };
    *watch = Watch::Life {
        heard: false,
        pinged: matches!(rang, Rang::Ping),
    };
    if let Some(timer) = timer.as_mut() {
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + state.limits.ping_interval);
    }
    rang
}

/// Encodes a reply from an actor and writes it; gives its size on the wire.
async fn write_reply(socket: &mut Socket, reply: Reply) -> Result<usize, Ending> {
    let Reply { raw_uid, reply } = reply;
    write(socket, &reply_to_proto(raw_uid, &reply)).await
}

/// Writes one message; gives its size on the wire.
async fn write(
    socket: &mut Socket,
    msg: &crate::edge::protocol::proto::ServerToAgent,
) -> Result<usize, Ending> {
    let bytes = encode_ws_frame(msg);
    let len = bytes.len();
    let mut send = std::pin::pin!(socket.send(Message::Binary(bytes)));
    // Nearly every write completes at once; only one that has to wait gets a timer (making one
    // reads the clock and clones the runtime's handle, on every heartbeat otherwise).
    let sent = match futures_util::poll!(send.as_mut()) {
        std::task::Poll::Ready(sent) => sent,
        std::task::Poll::Pending => match tokio::time::timeout(WRITE_TIMEOUT, send).await {
            Ok(sent) => sent,
            Err(_) => return Err(Ending::closed("agent stopped reading its replies")),
        },
    };
    match sent {
        Ok(()) => Ok(len),
        Err(e) => Err(Ending::closed(format!("websocket write failed: {e}"))),
    }
}

impl Speakers {
    /// Whether the actor of the agent speaking here is attached to this connection, and so
    /// closes it when the server stops.
    fn closed_by_actor(&self, conn: ConnId) -> bool {
        self.last
            .as_ref()
            .is_some_and(|(_, agent)| agent.link().ws_conn() == Some(conn))
    }

    /// Points a message at the uid the server assigned its agent here, if it was given one.
    /// Gives the uid the message carried.
    fn resolve(&self, inbound: &mut Inbound) -> Option<InstanceUid> {
        let sent_uid = inbound.uid.as_ref().ok().copied();
        if let Some(target) = sent_uid.and_then(|uid| self.aliases.get(&uid)) {
            inbound.uid = Ok(*target);
            inbound.report.request_instance_uid = false;
        }
        sent_uid
    }
}

/// What to do with one message from an agent.
enum Next {
    /// A bare heartbeat the connection answers itself, without its agent's actor (see
    /// `Fleet::answer_heartbeat`).
    Answered(Bytes),
    /// For the agent's actor, with the uid the message carried. Boxed, so that the message
    /// is not part of the connection's future.
    Route(Box<Inbound>, Option<InstanceUid>),
}

fn answer_here(
    state: &OpampState,
    mut inbound: Inbound,
    conn: ConnId,
    speakers: &Speakers,
) -> Next {
    let sent_uid = speakers.resolve(&mut inbound);
    if let (Ok(uid), Some((last, handle))) = (&inbound.uid, &speakers.last)
        && uid == last
        && state.fleet.answer_heartbeat(handle, &inbound.report, conn)
    {
        return Next::Answered(inbound.raw_uid);
    }
    Next::Route(Box::new(inbound), sent_uid)
}

/// Hands one message to its agent's actor. An unusable uid gets an error reply and the
/// connection stays open.
async fn route(
    state: &OpampState,
    inbound: Box<Inbound>,
    sent_uid: Option<InstanceUid>,
    (conn, outbound, origin): (ConnId, &crate::channel::Sender<Outgoing>, &Option<Arc<str>>),
    speakers: &mut Speakers,
) -> Result<(), Ending> {
    let raw_uid = inbound.raw_uid.clone();
    let source = Source::WebSocket {
        conn,
        outbound: outbound.clone(),
    };
    match state.fleet.dispatch(*inbound, source, origin.clone()).await {
        Ok(target) => {
            if let Some(sent) = sent_uid
                && sent != target
            {
                speakers.aliases.insert(sent, target);
            }
            if !speakers.agents.contains(&target) {
                speakers.agents.push(target);
            }
            if speakers
                .last
                .as_ref()
                .is_none_or(|(last, _)| *last != target)
            {
                speakers.last = state.fleet.get(&target).map(|handle| (target, handle));
            }
            Ok(())
        }
        Err(DispatchError::BadRequest(message)) => {
            state.fleet.metrics().decode_error("bad_instance_uid");
            let reply = ServerReply {
                error: Some(ReplyError::BadRequest(message)),
                ..ServerReply::default()
            };
            // Best effort: a full queue means the agent is not reading anyway.
            let _ = outbound.try_send(Outgoing::Reply(Box::new(Reply { raw_uid, reply })));
            Ok(())
        }
        Err(DispatchError::Unavailable) => Err(Ending::close(GOING_AWAY, "server shutting down")),
    }
}

fn is_too_big(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Capacity(_))
}

fn lost_reason(error: &tungstenite::Error) -> String {
    match error {
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => "websocket closed without a close frame".into(),
        _ => format!("websocket failed: {error}"),
    }
}

/// A close frame's reason must fit in 123 bytes.
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}
#[cfg(test)]
mod tests {
    /// Every open WebSocket is a task that waits on this future: its size is paid per agent.
    /// It holds the socket itself (about 400 bytes), which is not split behind a shared lock,
    /// and the connection's one timer, boxed.
    #[test]
    fn an_idle_connection_stays_small() {
        fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(super::serve_connection);
        assert!(size <= 1536, "connection future is {size} bytes");
    }
}
