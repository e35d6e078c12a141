//! The plain-HTTP driver: one POST per message, over the agent's own keep-alive connection
//! (`own_conn`) or a shared, bounded pool (`--http-connections`); polls on a timer, backoff
//! after errors, and a last poll carrying the goodbye.

use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use corral::edge::protocol::proto;
use hyper::HeaderMap;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use prost::Message as _;
use tokio::time::{Instant, sleep_until, timeout};

use crate::agent::{Agent, uid_string};
use crate::context::{Ctx, HttpMode, Target};
use crate::own_conn::{Answer, OwnConnection, Route};
use crate::stats::inc;
use crate::timing::{Backoff, GOODBYE_TIMEOUT, RESTART_PAUSE, far_future, pause};

const PROTOBUF: &str = "application/x-protobuf";

enum PollError {
    Transport(String),
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    Decode(String),
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Transport(e) => write!(f, "poll failed: {e}"),
            PollError::Status { status, .. } => write!(f, "poll answered HTTP {status}"),
            PollError::Decode(e) => write!(f, "undecodable poll reply: {e}"),
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

async fn http_poll(
    ctx: &Ctx,
    agent: &Agent,
    conn: &mut OwnConnection,
    msg: &proto::AgentToServer,
) -> Result<proto::ServerToAgent, PollError> {
    let Target::Http { url, mode } = &ctx.target else {
        return Err(PollError::Transport("not an HTTP target".into()));
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    if let Ok(uid) = HeaderValue::from_str(&uid_string(&agent.uid)) {
        headers.insert("OpAMP-Instance-UID", uid);
    }
    let mut body = msg.encode_to_vec();
    if ctx.args.gzip {
        body = gzip(&body);
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let len = body.len() as u64;
    let body = Bytes::from(body);
    let answer = match mode {
        HttpMode::PerAgent {
            endpoint,
            uri,
            idle,
        } => {
            let route = Route {
                endpoint,
                uri,
                idle: *idle,
            };
            conn.post(ctx, agent.index, &route, &headers, body)
                .await
                .map_err(PollError::Transport)?
        }
        HttpMode::Pooled { client, slots } => {
            let _slot = slots
                .acquire()
                .await
                .map_err(|_| PollError::Transport("client closed".into()))?;
            let response = client
                .post(url)
                .headers(headers)
                .body(body)
                .send()
                .await
                .map_err(|e| PollError::Transport(error_chain(&e)))?;
            let (status, headers) = (response.status(), response.headers().clone());
            let body = response
                .bytes()
                .await
                .map_err(|e| PollError::Transport(error_chain(&e)))?;
            Answer {
                status,
                headers,
                body,
            }
        }
    };
    inc(&ctx.stats.sent);
    ctx.stats.bytes_sent.fetch_add(len, Relaxed);
    let Answer {
        status,
        headers,
        body,
    } = answer;
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let content_type_ok = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == PROTOBUF);
    ctx.stats
        .bytes_received
        .fetch_add(body.len() as u64, Relaxed);
    if !status.is_success() {
        return Err(PollError::Status {
            status: status.as_u16(),
            retry_after,
        });
    }
    if !content_type_ok {
        return Err(PollError::Decode(format!(
            "Content-Type is not exactly {PROTOBUF}"
        )));
    }
    inc(&ctx.stats.received);
    proto::ServerToAgent::decode(body).map_err(|e| PollError::Decode(e.to_string()))
}

/// An error with its sources: reqwest's own message names the request, its sources the cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

pub async fn run_agent(mut agent: Agent, ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new();
    let mut conn = OwnConnection::default();
    let mut connected = false;
    let mut ever = false;
    let mut failed = false;
    let mut next_poll = Instant::now();
    let mut churn_at = ctx.next_churn();
    let mut churned = false;
    loop {
        if agent.restart {
            // Goodbye with one last poll, then a new process polls with a full report.
            let msg = agent.goodbye(&ctx);
            match timeout(GOODBYE_TIMEOUT, http_poll(&ctx, &agent, &mut conn, &msg)).await {
                Ok(Ok(_)) => inc(&ctx.stats.disconnects_sent),
                Ok(Err(e)) => ctx.log(agent.index, format!("goodbye before restart: {e}")),
                Err(_) => ctx.log(agent.index, "goodbye before restart: timed out"),
            }
            if connected {
                connected = false;
                ctx.mark_disconnected();
            }
            if !pause(&ctx, RESTART_PAUSE).await {
                return;
            }
            agent.restarted();
            backoff.reset();
            next_poll = Instant::now();
        }
        let apply_at = agent.apply_at();
        let install_at = agent.install_at();
        let downloading = agent.downloading();
        let mut timer = false;
        let mut churn_now = false;
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            _ = sleep_until(next_poll) => timer = true,
            _ = sleep_until(churn_at.unwrap_or_else(far_future)), if churn_at.is_some() => {
                churn_now = true;
            }
            _ = sleep_until(apply_at.unwrap_or_else(far_future)), if apply_at.is_some() => {
                agent.apply_due(&ctx);
            }
            _ = sleep_until(install_at.unwrap_or_else(far_future)), if install_at.is_some() => {
                agent.install_due(&ctx);
            }
            event = agent.download_event(), if downloading => {
                agent.on_download_event(event, &ctx);
                if !agent.wants_to_send() {
                    continue;
                }
            }
        }
        if churn_now {
            // Goodbye with one poll, a pause, then polling again with a full report; the
            // uid, state and sequence numbers carry on.
            let msg = agent.goodbye(&ctx);
            match timeout(GOODBYE_TIMEOUT, http_poll(&ctx, &agent, &mut conn, &msg)).await {
                Ok(Ok(_)) => inc(&ctx.stats.disconnects_sent),
                Ok(Err(e)) => ctx.log(agent.index, format!("goodbye before churn pause: {e}")),
                Err(_) => ctx.log(agent.index, "goodbye before churn pause: timed out"),
            }
            inc(&ctx.stats.churn_disconnects);
            if connected {
                connected = false;
                ctx.mark_disconnected();
            }
            if !pause(&ctx, ctx.churn_pause()).await {
                return;
            }
            agent.send_full = true;
            churned = true;
            churn_at = ctx.next_churn();
        }
        let msg = agent.next_send(timer, &ctx);
        let outcome = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            r = http_poll(&ctx, &agent, &mut conn, &msg) => r,
        };
        let now = Instant::now();
        match outcome {
            Ok(reply) => {
                agent.delivered();
                backoff.reset();
                if !connected {
                    connected = true;
                    ctx.mark_connected();
                    if std::mem::take(&mut failed) {
                        inc(&ctx.stats.reconnects);
                    }
                    if std::mem::take(&mut churned) {
                        inc(&ctx.stats.churn_reconnects);
                    }
                    if !ever {
                        ever = true;
                        ctx.first_connection();
                    }
                }
                agent.retry_after = None;
                let again = agent.on_reply(reply, &ctx) && agent.may_send_immediately(&ctx);
                next_poll = match agent.retry_after {
                    Some(wait) => now + wait.max(agent.poll_interval(&ctx)),
                    None if again => now,
                    None => now + agent.poll_interval(&ctx),
                };
            }
            Err(e) => {
                match &e {
                    PollError::Decode(_) => inc(&ctx.stats.decode_errors),
                    PollError::Status {
                        status: 503,
                        retry_after: Some(_),
                    } => inc(&ctx.stats.told_to_wait),
                    _ => inc(&ctx.stats.poll_errors),
                }
                ctx.log(agent.index, &e);
                if connected {
                    connected = false;
                    ctx.mark_disconnected();
                }
                failed = true;
                let mut wait = backoff.step();
                if let PollError::Status {
                    retry_after: Some(ra),
                    ..
                } = e
                {
                    wait = wait.max(ra);
                }
                next_poll = now + wait;
            }
        }
    }
    // Stopped: say goodbye with one last poll.
    let msg = agent.goodbye(&ctx);
    match timeout(GOODBYE_TIMEOUT, http_poll(&ctx, &agent, &mut conn, &msg)).await {
        Ok(Ok(_)) => inc(&ctx.stats.disconnects_sent),
        Ok(Err(e)) => ctx.log(agent.index, format!("goodbye: {e}")),
        Err(_) => ctx.log(agent.index, "goodbye: timed out"),
    }
    if connected {
        ctx.mark_disconnected();
    }
}
