//! Simulated collectors for rollout tests: they report like a collector, apply any remote
//! config after a short delay (failing it when its body contains `FAIL`), and reconnect when
//! the server goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral::protocol::proto::{self, RemoteConfigStatuses};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use prost::Message;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::common::*;

pub const FAIL_MARKER: &str = "FAIL";
const APPLY_DELAY: Duration = Duration::from_millis(50);
const HTTP_POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    WebSocket,
    Http,
}

#[derive(Default)]
pub struct Seen {
    /// How many times each config hash was received.
    pub received: HashMap<Vec<u8>, u32>,
    /// The hash last applied.
    pub applied: Option<Vec<u8>>,
}

pub struct SimAgent {
    pub uid: [u8; 16],
    pub seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Spec {
    uid: [u8; 16],
    service: String,
    labels: Vec<(String, String)>,
    components: Option<Vec<(&'static str, &'static str)>>,
}

impl Spec {
    fn report(&self, seq: u64, status: Option<proto::RemoteConfigStatus>) -> proto::AgentToServer {
        let mut msg = full_report(&self.uid, seq, &self.service);
        if let Some(d) = msg.agent_description.as_mut() {
            for (k, v) in &self.labels {
                d.non_identifying_attributes.push(proto::KeyValue {
                    key: k.clone(),
                    value: Some(proto::AnyValue {
                        value: Some(proto::any_value::Value::StringValue(v.clone())),
                    }),
                });
            }
        }
        msg.capabilities |= 0x4000;
        msg.available_components = self.components.as_ref().map(|list| {
            let mut components =
                std::collections::BTreeMap::<String, proto::ComponentDetails>::new();
            for (kind, type_) in list {
                components
                    .entry(kind.to_string())
                    .or_default()
                    .sub_component_map
                    .insert(type_.to_string(), proto::ComponentDetails::default());
            }
            use sha2::Digest;
            let hash = sha2::Sha256::digest(format!("{list:?}").as_bytes());
            proto::AvailableComponents {
                components,
                hash: Bytes::copy_from_slice(&hash),
            }
        });
        if let Some(status) = status {
            msg.remote_config_status = Some(status);
        }
        msg
    }
}

/// Turns a received config into the statuses to report: APPLYING now, then APPLIED or FAILED.
fn verdict(config: &proto::AgentRemoteConfig) -> proto::RemoteConfigStatus {
    let fails = config.config.as_ref().is_some_and(|m| {
        m.config_map
            .values()
            .any(|f| String::from_utf8_lossy(&f.body).contains(FAIL_MARKER))
    });
    if fails {
        remote_config_status(
            RemoteConfigStatuses::Failed,
            &config.config_hash,
            "invalid configuration",
        )
    } else {
        remote_config_status(RemoteConfigStatuses::Applied, &config.config_hash, "")
    }
}

impl SimAgent {
    pub fn spawn(
        server: &TestServer,
        via: Via,
        service: &str,
        labels: &[(&str, &str)],
        components: Option<Vec<(&'static str, &'static str)>>,
    ) -> Self {
        let spec = Spec {
            uid: new_uid(),
            service: service.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            components,
        };
        let uid = spec.uid;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let url = match via {
            Via::WebSocket => server.ws_url(),
            Via::Http => server.http_url(),
        };
        tokio::spawn(run(spec, via, url, seen.clone(), stop.clone()));
        Self { uid, seen, stop }
    }

    pub fn times_received(&self, hash: &[u8]) -> u32 {
        self.seen.lock().received.get(hash).copied().unwrap_or(0)
    }
}

/// The agent's life: (re)connect, report, apply what arrives, until stopped.
async fn run(spec: Spec, via: Via, url: String, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    let mut seq = 0u64;
    let mut status: Option<proto::RemoteConfigStatus> = None;
    while !stop.is_cancelled() {
        let result = match via {
            Via::WebSocket => ws_session(&spec, &url, &mut seq, &mut status, &seen, &stop).await,
            Via::Http => http_session(&spec, &url, &mut seq, &mut status, &seen, &stop).await,
        };
        if result.is_err() {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

fn note_received(seen: &Mutex<Seen>, config: &proto::AgentRemoteConfig) {
    *seen
        .lock()
        .received
        .entry(config.config_hash.to_vec())
        .or_default() += 1;
}

async fn ws_session(
    spec: &Spec,
    url: &str,
    seq: &mut u64,
    status: &mut Option<proto::RemoteConfigStatus>,
    seen: &Mutex<Seen>,
    stop: &CancellationToken,
) -> Result<(), ()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|_| ())?;
    let encode = |msg: &proto::AgentToServer| {
        let mut frame = vec![0u8];
        msg.encode(&mut frame).expect("encode");
        WsMessage::Binary(frame.into())
    };
    *seq += 1;
    ws.send(encode(&spec.report(*seq, status.clone())))
        .await
        .map_err(|_| ())?;
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            frame = ws.next() => frame,
        };
        let Some(Ok(WsMessage::Binary(bytes))) = frame else {
            return Err(());
        };
        let body = corral::protocol::unframe_ws(bytes).map_err(|_| ())?;
        let reply = proto::ServerToAgent::decode(body).map_err(|_| ())?;
        let mut outgoing = Vec::new();
        if reply.flags & 1 != 0 {
            outgoing.push(None);
        }
        if let Some(config) = &reply.remote_config {
            note_received(seen, config);
            outgoing.push(Some(remote_config_status(
                RemoteConfigStatuses::Applying,
                &config.config_hash,
                "",
            )));
            outgoing.push(Some(verdict(config)));
        }
        for (i, next) in outgoing.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(APPLY_DELAY).await;
            }
            if let Some(s) = next {
                if s.status == RemoteConfigStatuses::Applied as i32 {
                    seen.lock().applied = Some(s.last_remote_config_hash.to_vec());
                }
                *status = Some(s);
            }
            *seq += 1;
            ws.send(encode(&spec.report(*seq, status.clone())))
                .await
                .map_err(|_| ())?;
        }
    }
}

async fn http_session(
    spec: &Spec,
    url: &str,
    seq: &mut u64,
    status: &mut Option<proto::RemoteConfigStatus>,
    seen: &Mutex<Seen>,
    stop: &CancellationToken,
) -> Result<(), ()> {
    let client = reqwest::Client::new();
    let mut next = Some(spec.report(*seq + 1, status.clone()));
    let mut queued: Vec<proto::RemoteConfigStatus> = Vec::new();
    loop {
        *seq += 1;
        let msg = next.take().unwrap_or_else(|| heartbeat(&spec.uid, *seq));
        let response = client
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(msg.encode_to_vec())
            .send()
            .await
            .map_err(|_| ())?;
        if response.status() != 200 {
            return Err(());
        }
        let reply = proto::ServerToAgent::decode(response.bytes().await.map_err(|_| ())?)
            .map_err(|_| ())?;
        if let Some(config) = &reply.remote_config {
            note_received(seen, config);
            queued.push(remote_config_status(
                RemoteConfigStatuses::Applying,
                &config.config_hash,
                "",
            ));
            queued.push(verdict(config));
        }
        if !queued.is_empty() {
            let s = queued.remove(0);
            if s.status == RemoteConfigStatuses::Applied as i32 {
                seen.lock().applied = Some(s.last_remote_config_hash.to_vec());
            }
            *status = Some(s);
            next = Some(spec.report(*seq + 1, status.clone()));
        } else if reply.flags & 1 != 0 {
            next = Some(spec.report(*seq + 1, status.clone()));
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(HTTP_POLL) => {}
        }
    }
}
