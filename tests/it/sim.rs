//! Simulated collectors for rollout tests. They report like a collector, apply a remote config
//! after a short delay (failing it when its body contains `FAIL`), download, verify and install
//! offered packages (then come back with the new `service.version`), obey the restart command,
//! and reconnect when the server goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral::edge::protocol::proto::{self, PackageStatusEnum, RemoteConfigStatuses};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use prost::Message;
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::common::*;

pub const FAIL_MARKER: &str = "FAIL";
pub const START_VERSION: &str = "v0.115.0";
const STEP_DELAY: Duration = Duration::from_millis(50);
const HTTP_POLL: Duration = Duration::from_millis(100);
const ACCEPTS_PACKAGES: u64 = 0x8 | 0x10 | 0x400;

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
    /// How many times each package hash was offered.
    pub packages_offered: HashMap<Vec<u8>, u32>,
    pub installs: u32,
    pub restarts: u32,
}

#[derive(Clone, Default)]
pub struct SimOptions {
    pub labels: Vec<(String, String)>,
    pub components: Option<Vec<(&'static str, &'static str)>>,
    /// Accepts packages and the restart command.
    pub packages: bool,
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
    options: SimOptions,
}

/// What the agent carries across connections.
struct Life {
    seq: u64,
    config: Option<proto::RemoteConfigStatus>,
    version: String,
    package_hash: Vec<u8>,
    package: Option<proto::PackageStatus>,
}

fn kv(key: &str, value: &str) -> proto::KeyValue {
    proto::KeyValue {
        key: key.into(),
        value: Some(proto::AnyValue {
            value: Some(proto::any_value::Value::StringValue(value.into())),
        }),
    }
}

impl Spec {
    fn capabilities(&self) -> u64 {
        let mut caps = CAPS | 0x4000;
        if self.options.packages {
            caps |= ACCEPTS_PACKAGES;
        }
        caps
    }

    /// A message with nothing but what every message carries.
    fn bare(&self, life: &mut Life) -> proto::AgentToServer {
        life.seq += 1;
        let mut msg = heartbeat(&self.uid, life.seq);
        msg.capabilities = self.capabilities();
        msg
    }

    fn full(&self, life: &mut Life) -> proto::AgentToServer {
        life.seq += 1;
        let mut msg = full_report(&self.uid, life.seq, &self.service);
        if let Some(d) = msg.agent_description.as_mut() {
            d.identifying_attributes
                .retain(|a| a.key != "service.version");
            d.identifying_attributes
                .push(kv("service.version", &life.version));
            for (k, v) in &self.options.labels {
                d.non_identifying_attributes.push(kv(k, v));
            }
        }
        msg.capabilities = self.capabilities();
        if self.options.packages {
            let has = life.package.clone().unwrap_or(proto::PackageStatus {
                agent_has_version: life.version.clone(),
                agent_has_hash: Bytes::from(life.package_hash.clone()),
                status: PackageStatusEnum::Installed as i32,
                ..Default::default()
            });
            msg.package_statuses = Some(proto::PackageStatuses {
                packages: [(String::new(), has)].into(),
                ..Default::default()
            });
        }
        msg.available_components = self.options.components.as_ref().map(|list| {
            let mut components =
                std::collections::BTreeMap::<String, proto::ComponentDetails>::new();
            for (kind, type_) in list {
                components
                    .entry(kind.to_string())
                    .or_default()
                    .sub_component_map
                    .insert(type_.to_string(), proto::ComponentDetails::default());
            }
            let hash = sha2::Sha256::digest(format!("{list:?}").as_bytes());
            proto::AvailableComponents {
                components,
                hash: Bytes::copy_from_slice(&hash),
            }
        });
        msg.remote_config_status = life.config.clone();
        msg
    }
}

/// What a reply makes the agent do: messages to send, in order, then maybe reconnect.
#[derive(Default)]
struct Reaction {
    send: Vec<proto::AgentToServer>,
    reconnect: bool,
}

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

fn package_update(
    spec: &Spec,
    life: &mut Life,
    status: proto::PackageStatus,
) -> proto::AgentToServer {
    life.package = Some(status.clone());
    let mut msg = spec.bare(life);
    msg.package_statuses = Some(proto::PackageStatuses {
        packages: [(String::new(), status)].into(),
        ..Default::default()
    });
    msg
}

async fn react(
    spec: &Spec,
    life: &mut Life,
    seen: &Mutex<Seen>,
    reply: &proto::ServerToAgent,
) -> Reaction {
    let mut reaction = Reaction::default();
    if reply.command.is_some() {
        seen.lock().restarts += 1;
        reaction.reconnect = true;
        return reaction;
    }
    if reply.flags & 1 != 0 {
        let full = spec.full(life);
        reaction.send.push(full);
    }
    if let Some(config) = &reply.remote_config {
        *seen
            .lock()
            .received
            .entry(config.config_hash.to_vec())
            .or_default() += 1;
        life.config = Some(remote_config_status(
            RemoteConfigStatuses::Applying,
            &config.config_hash,
            "",
        ));
        let mut applying = spec.bare(life);
        applying.remote_config_status = life.config.clone();
        reaction.send.push(applying);
        let done = verdict(config);
        if done.status == RemoteConfigStatuses::Applied as i32 {
            seen.lock().applied = Some(done.last_remote_config_hash.to_vec());
        }
        life.config = Some(done);
        let mut verdict_msg = spec.bare(life);
        verdict_msg.remote_config_status = life.config.clone();
        reaction.send.push(verdict_msg);
    }
    if let Some(available) = &reply.packages_available
        && let Some(offer) = available.packages.get("")
        && offer.hash.as_ref() != life.package_hash.as_slice()
    {
        *seen
            .lock()
            .packages_offered
            .entry(offer.hash.to_vec())
            .or_default() += 1;
        let base = proto::PackageStatus {
            agent_has_version: life.version.clone(),
            agent_has_hash: Bytes::from(life.package_hash.clone()),
            server_offered_version: offer.version.clone(),
            server_offered_hash: offer.hash.clone(),
            ..Default::default()
        };
        let downloading = proto::PackageStatus {
            status: PackageStatusEnum::Downloading as i32,
            download_details: Some(proto::PackageDownloadDetails {
                download_percent: 0.0,
                download_bytes_per_second: 0.0,
            }),
            ..base.clone()
        };
        reaction.send.push(package_update(spec, life, downloading));
        let file = offer.file.clone().unwrap_or_default();
        let bytes = match reqwest::get(&file.download_url).await {
            Ok(r) if r.status().is_success() => r.bytes().await.ok(),
            _ => None,
        };
        let verified = bytes
            .as_ref()
            .is_some_and(|b| sha2::Sha256::digest(b).as_slice() == file.content_hash.as_ref());
        if !verified {
            let failed = proto::PackageStatus {
                status: PackageStatusEnum::InstallFailed as i32,
                error_message: "downloaded file does not match its content hash".into(),
                ..base
            };
            reaction.send.push(package_update(spec, life, failed));
            return reaction;
        }
        let installing = proto::PackageStatus {
            status: PackageStatusEnum::Installing as i32,
            ..base.clone()
        };
        reaction.send.push(package_update(spec, life, installing));
        let installed = proto::PackageStatus {
            agent_has_version: offer.version.clone(),
            agent_has_hash: offer.hash.clone(),
            status: PackageStatusEnum::Installed as i32,
            ..base
        };
        reaction.send.push(package_update(spec, life, installed));
        seen.lock().installs += 1;
        life.version = offer.version.clone();
        life.package_hash = offer.hash.to_vec();
        life.package = None;
        // The collector restarts into the new build.
        reaction.reconnect = true;
    }
    reaction
}

impl SimAgent {
    pub fn spawn(
        server: &TestServer,
        via: Via,
        service: &str,
        labels: &[(&str, &str)],
        components: Option<Vec<(&'static str, &'static str)>>,
    ) -> Self {
        let options = SimOptions {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            components,
            packages: false,
        };
        Self::spawn_with(server, via, service, options)
    }

    pub fn spawn_with(server: &TestServer, via: Via, service: &str, options: SimOptions) -> Self {
        let spec = Spec {
            uid: new_uid(),
            service: service.to_string(),
            options,
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

/// The agent's life: (re)connect, report, react to what arrives, until stopped.
async fn run(spec: Spec, via: Via, url: String, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    let mut life = Life {
        seq: 0,
        config: None,
        version: START_VERSION.to_string(),
        package_hash: Vec::new(),
        package: None,
    };
    while !stop.is_cancelled() {
        let _ = match via {
            Via::WebSocket => ws_session(&spec, &url, &mut life, &seen, &stop).await,
            Via::Http => http_session(&spec, &url, &mut life, &seen, &stop).await,
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

fn ws_frame(msg: &proto::AgentToServer) -> WsMessage {
    let mut frame = vec![0u8];
    msg.encode(&mut frame).expect("encode");
    WsMessage::Binary(frame.into())
}

/// One WebSocket connection; returns when it ends (or the agent restarts).
async fn ws_session(
    spec: &Spec,
    url: &str,
    life: &mut Life,
    seen: &Mutex<Seen>,
    stop: &CancellationToken,
) -> Result<(), ()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|_| ())?;
    let full = spec.full(life);
    ws.send(ws_frame(&full)).await.map_err(|_| ())?;
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
        let body = corral::edge::protocol::unframe_ws(bytes).map_err(|_| ())?;
        let reply = proto::ServerToAgent::decode(body).map_err(|_| ())?;
        let reaction = react(spec, life, seen, &reply).await;
        for msg in reaction.send {
            tokio::time::sleep(STEP_DELAY).await;
            ws.send(ws_frame(&msg)).await.map_err(|_| ())?;
        }
        if reaction.reconnect {
            let _ = ws.close(None).await;
            return Ok(());
        }
    }
}

/// Polls until the connection fails or the agent restarts.
async fn http_session(
    spec: &Spec,
    url: &str,
    life: &mut Life,
    seen: &Mutex<Seen>,
    stop: &CancellationToken,
) -> Result<(), ()> {
    let client = reqwest::Client::new();
    let mut queue = vec![spec.full(life)];
    let mut reconnect = false;
    loop {
        let msg = if queue.is_empty() {
            if reconnect {
                return Ok(());
            }
            spec.bare(life)
        } else {
            queue.remove(0)
        };
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
        let reaction = react(spec, life, seen, &reply).await;
        queue.extend(reaction.send);
        reconnect |= reaction.reconnect;
        if reconnect && queue.is_empty() {
            return Ok(());
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(HTTP_POLL) => {}
        }
    }
}
