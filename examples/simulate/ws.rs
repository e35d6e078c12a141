//! The WebSocket driver: one connection per agent, a binary frame per message, heartbeats on
//! a timer, reconnection with backoff, and a goodbye before a restart or the stop.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use corral::edge::protocol::{proto, unframe_ws};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, tungstenite};

use crate::agent::Agent;
use crate::context::{CONNECT_TIMEOUT, Ctx, Endpoint, Target};
use crate::stats::inc;
use crate::timing::{Backoff, GOODBYE_TIMEOUT, RESTART_PAUSE, far_future, pause};

type Ws = WebSocketStream<TcpStream>;

enum SessionEnd {
    Stopped,
    /// The agent said goodbye to restart (a restart command or a package installed).
    Restart,
    /// The agent closed the connection on purpose (--churn).
    Churn,
    Dropped {
        reason: String,
        got_reply: bool,
    },
}

/// How a connection's conversation ended without an error.
enum Exit {
    Stopped,
    Restart,
    Churn,
}

/// Why a connection could not be opened.
enum ConnectError {
    Failed(String),
    /// The server answered the handshake 503 with a Retry-After: come back then.
    Wait(Duration),
}

impl From<String> for ConnectError {
    fn from(message: String) -> Self {
        ConnectError::Failed(message)
    }
}

async fn connect_ws(index: usize, url: &str, endpoint: &Endpoint) -> Result<Ws, ConnectError> {
    let stream = endpoint.connect(index).await?;
    let request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    match timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await
    {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) if response.status() == 503 => {
            let after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.trim().parse().ok());
            match after {
                Some(secs) => Err(ConnectError::Wait(Duration::from_secs(secs))),
                None => Err("websocket handshake: 503 without Retry-After"
                    .to_string()
                    .into()),
            }
        }
        Ok(Err(e)) => Err(format!("websocket handshake: {e}").into()),
        Err(_) => Err("websocket handshake: timed out".to_string().into()),
    }
}

async fn ws_send(ws: &mut Ws, msg: &proto::AgentToServer, ctx: &Ctx) -> Result<(), String> {
    // The OpAMP WebSocket header, a varint 0, then the message; the library's
    // encode_ws_frame frames only ServerToAgent.
    let mut buf = Vec::with_capacity(1 + msg.encoded_len());
    buf.push(0);
    msg.encode(&mut buf).map_err(|e| format!("encode: {e}"))?;
    let len = buf.len() as u64;
    ws.send(WsMessage::Binary(Bytes::from(buf)))
        .await
        .map_err(|e| format!("send: {e}"))?;
    inc(&ctx.stats.sent);
    ctx.stats.bytes_sent.fetch_add(len, Relaxed);
    Ok(())
}

pub async fn run_agent(mut agent: Agent, ctx: Arc<Ctx>) {
    let Target::WebSocket { url, endpoint } = &ctx.target else {
        return;
    };
    let mut backoff = Backoff::new();
    let mut ever = false;
    let mut attempts = 0u64;
    let mut restarting = false;
    let mut churned = false;
    loop {
        if ctx.stop.is_cancelled() {
            return;
        }
        let connected = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            r = connect_ws(agent.index, url, endpoint) => r,
        };
        // A restarted agent's first connection is not a reconnect.
        if !std::mem::take(&mut restarting) {
            attempts += 1;
        }
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(ConnectError::Wait(after)) => {
                inc(&ctx.stats.told_to_wait);
                if !pause(&ctx, after).await {
                    return;
                }
                continue;
            }
            Err(ConnectError::Failed(e)) => {
                inc(&ctx.stats.connect_errors);
                ctx.log(agent.index, e);
                if !pause(&ctx, backoff.step()).await {
                    return;
                }
                continue;
            }
        };
        if attempts > 1 {
            inc(&ctx.stats.reconnects);
        }
        if std::mem::take(&mut churned) {
            inc(&ctx.stats.churn_reconnects);
        }
        // Like the collector, report everything on each new connection.
        agent.send_full = true;
        match ws_session(&mut agent, &mut ws, &ctx, &mut ever).await {
            SessionEnd::Stopped => return,
            SessionEnd::Restart => {
                drop(ws);
                if !pause(&ctx, RESTART_PAUSE).await {
                    return;
                }
                agent.restarted();
                backoff.reset();
                attempts = 1;
                restarting = true;
            }
            SessionEnd::Churn => {
                inc(&ctx.stats.churn_disconnects);
                drop(ws);
                if !pause(&ctx, ctx.churn_pause()).await {
                    return;
                }
                // Same uid, state and sequence numbers; a full report on the new connection.
                backoff.reset();
                attempts = 1;
                restarting = true;
                churned = true;
            }
            SessionEnd::Dropped { reason, got_reply } => {
                inc(&ctx.stats.connection_drops);
                ctx.log(agent.index, format!("connection dropped: {reason}"));
                if got_reply {
                    backoff.reset();
                }
                if !pause(&ctx, backoff.step()).await {
                    return;
                }
            }
        }
    }
}

async fn ws_session(agent: &mut Agent, ws: &mut Ws, ctx: &Ctx, ever: &mut bool) -> SessionEnd {
    let mut got_reply = false;
    let end = ws_exchange(agent, ws, ctx, ever, &mut got_reply).await;
    if got_reply {
        ctx.mark_disconnected();
    }
    match end {
        Ok(Exit::Stopped) => SessionEnd::Stopped,
        Ok(Exit::Restart) => SessionEnd::Restart,
        Ok(Exit::Churn) => SessionEnd::Churn,
        Err(reason) => SessionEnd::Dropped { reason, got_reply },
    }
}

/// One connection's conversation. Ok when the simulation stopped or the agent restarts
/// (goodbye said), Err with the reason when the connection broke.
async fn ws_exchange(
    agent: &mut Agent,
    ws: &mut Ws,
    ctx: &Ctx,
    ever: &mut bool,
    got_reply: &mut bool,
) -> Result<Exit, String> {
    let msg = agent.next_message(ctx);
    ws_send(ws, &msg, ctx).await?;
    agent.delivered();
    let mut last_send = Instant::now();
    let churn_at = ctx.next_churn();
    loop {
        if agent.restart {
            ws_goodbye(agent, ws, ctx).await;
            return Ok(Exit::Restart);
        }
        let next_heartbeat = agent
            .ws_heartbeat(ctx)
            .map_or_else(far_future, |d| last_send + d);
        let apply_at = agent.apply_at();
        let install_at = agent.install_at();
        let downloading = agent.downloading();
        let mut heartbeat_due = false;
        tokio::select! {
            _ = ctx.stop.cancelled() => {
                ws_goodbye(agent, ws, ctx).await;
                return Ok(Exit::Stopped);
            }
            frame = ws.next() => match frame {
                None => return Err("closed".to_string()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(WsMessage::Binary(bytes))) => {
                    inc(&ctx.stats.received);
                    ctx.stats.bytes_received.fetch_add(bytes.len() as u64, Relaxed);
                    let reply = unframe_ws(bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|b| proto::ServerToAgent::decode(b).map_err(|e| e.to_string()));
                    let reply = match reply {
                        Ok(r) => r,
                        Err(e) => {
                            inc(&ctx.stats.decode_errors);
                            ctx.log(agent.index, format!("undecodable ServerToAgent: {e}"));
                            continue;
                        }
                    };
                    if !*got_reply {
                        *got_reply = true;
                        ctx.mark_connected();
                        if !*ever {
                            *ever = true;
                            ctx.first_connection();
                        }
                    }
                    if !agent.on_reply(reply, ctx) || !agent.may_send_immediately(ctx) {
                        continue;
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                        None => "closed by server".to_string(),
                    });
                }
                Some(Ok(WsMessage::Text(_))) => {
                    inc(&ctx.stats.decode_errors);
                    ctx.log(agent.index, "server sent a text frame");
                    continue;
                }
                Some(Ok(_)) => continue,
            },
            _ = sleep_until(next_heartbeat) => heartbeat_due = true,
            _ = sleep_until(churn_at.unwrap_or_else(far_future)), if churn_at.is_some() => {
                // Close without a goodbye, as when the network drops; wait briefly for the
                // server's close.
                let _ = timeout(Duration::from_secs(1), async {
                    ws.close(None).await.map_err(|e| e.to_string())?;
                    while let Some(Ok(_)) = ws.next().await {}
                    Ok::<(), String>(())
                })
                .await;
                return Ok(Exit::Churn);
            }
            _ = sleep_until(apply_at.unwrap_or_else(far_future)), if apply_at.is_some() => {
                agent.apply_due(ctx);
            }
            _ = sleep_until(install_at.unwrap_or_else(far_future)), if install_at.is_some() => {
                agent.install_due(ctx);
            }
            event = agent.download_event(), if downloading => {
                agent.on_download_event(event, ctx);
                if !agent.wants_to_send() {
                    continue;
                }
            }
        }
        let msg = agent.next_send(heartbeat_due, ctx);
        ws_send(ws, &msg, ctx).await?;
        agent.delivered();
        last_send = Instant::now();
    }
}

async fn ws_goodbye(agent: &mut Agent, ws: &mut Ws, ctx: &Ctx) {
    let msg = agent.goodbye(ctx);
    let said = async {
        ws_send(ws, &msg, ctx).await?;
        inc(&ctx.stats.disconnects_sent);
        ws.close(None).await.map_err(|e| e.to_string())?;
        // Read until the server's close (and the reply to the goodbye) arrive.
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_binary() {
                inc(&ctx.stats.received);
            }
        }
        Ok::<(), String>(())
    };
    match timeout(GOODBYE_TIMEOUT, said).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => ctx.log(agent.index, format!("goodbye: {e}")),
        Err(_) => ctx.log(agent.index, "goodbye: timed out"),
    }
}
