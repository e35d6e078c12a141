//! A real server on port 0 and real clients for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral::edge::api::dto::{AgentDetailDto, FleetDto};
use corral::edge::protocol::proto;
use corral::server::{Listeners, serve};
use corral::settings::{Partial, Settings};
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
pub use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(10);

pub const CAPS: u64 = 0x1 | 0x2 | 0x4 | 0x800 | 0x1000 | 0x2000;
pub const ACCEPTS_SETTINGS: u64 = 0x100;

pub struct TestServer {
    pub opamp: SocketAddr,
    pub api: SocketAddr,
    pub dir: Arc<TempDir>,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
    /// The admin key the server wrote to its data directory, which every request sends.
    pub key: String,
}

/// The server's settings as a test gives them; what is left out takes its default.
pub type Options = Partial;

impl TestServer {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    /// A server with `options` in a fresh data directory.
    pub async fn with(options: Options) -> Self {
        Self::start_with(Arc::new(TempDir::new().expect("tempdir")), options).await
    }

    /// A server whose messages may be at most 64 KiB.
    pub async fn small_messages() -> Self {
        Self::with(Options {
            max_message_size: Some(64 * 1024),
            ..Options::default()
        })
        .await
    }

    /// Starts again on the same data directory and addresses, as after a restart.
    pub async fn restart_at(
        dir: Arc<TempDir>,
        options: Options,
        opamp: SocketAddr,
        api: SocketAddr,
    ) -> Self {
        Self::start_on(dir, options, opamp, api).await
    }

    pub async fn start_with(dir: Arc<TempDir>, options: Options) -> Self {
        let any = "127.0.0.1:0".parse().unwrap();
        Self::start_on(dir, options, any, any).await
    }

    async fn start_on(
        dir: Arc<TempDir>,
        options: Options,
        opamp: SocketAddr,
        api: SocketAddr,
    ) -> Self {
        let opamp = TcpListener::bind(opamp).await.expect("bind");
        let api = TcpListener::bind(api).await.expect("bind");
        let settings: Settings = Partial {
            data_dir: Some(dir.path().to_path_buf()),
            ..options
        }
        .resolve(Partial::default())
        .expect("settings");
        let (opamp_addr, api_addr) = (opamp.local_addr().unwrap(), api.local_addr().unwrap());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(Listeners { opamp, api }, settings, cancel.clone()));
        let key = admin_key(dir.path(), &task).await;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(value) = format!("Bearer {key}").parse() {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Self {
            opamp: opamp_addr,
            api: api_addr,
            dir,
            cancel,
            task,
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("client"),
            key,
        }
    }

    /// A client that sends the admin key with every request.
    pub fn client(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// A client that sends no key.
    pub fn anonymous(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// Stops the server gracefully and hands back its data directory.
    pub async fn stop(self) -> Arc<TempDir> {
        self.cancel.cancel();
        self.task
            .await
            .expect("server task")
            .expect("server result");
        self.dir
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/opamp", self.opamp)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/v1/opamp", self.opamp)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.api_url(path))
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn put(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .put(self.api_url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn agent(&self, uid: &[u8]) -> Option<AgentDetailDto> {
        let (status, body) = self.get(&format!("/api/v1/agents/{}", uuid_str(uid))).await;
        (status == 200).then(|| serde_json::from_value(body).expect("agent json"))
    }

    /// Polls the API until the agent satisfies `pred`; panics with its last state after WAIT.
    pub async fn wait_agent(
        &self,
        uid: &[u8],
        pred: impl Fn(&AgentDetailDto) -> bool,
    ) -> AgentDetailDto {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let agent = self.agent(uid).await;
            if let Some(a) = &agent
                && pred(a)
            {
                return a.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("agent {} never matched; last: {agent:#?}", uuid_str(uid));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_status(&self, uid: &[u8], status: &str) -> AgentDetailDto {
        self.wait_agent(uid, |a| a.agent.status == status).await
    }

    pub async fn fleet(&self) -> FleetDto {
        serde_json::from_value(self.get("/api/v1/fleet").await.1).expect("fleet json")
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.api_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one metric line, e.g. `corral_decode_errors_total{kind="text_frame"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn post(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.http_url())
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("opamp post")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.api_url(path))
            .json(body)
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .delete(self.api_url(path))
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Starts a rollout; panics unless the API accepts it. Returns its id.
    pub async fn start_rollout(&self, request: Value) -> String {
        let (status, body) = self.post_json("/api/v1/rollouts", &request).await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().expect("rollout id").to_string()
    }

    pub async fn rollout(&self, id: &str) -> Value {
        self.get(&format!("/api/v1/rollouts/{id}")).await.1
    }

    /// Polls the rollout until it is in `state`.
    pub async fn wait_rollout(&self, id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.rollout(id).await;
            if r["state"] == state {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rollout never became {state}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` agents are connected.
    pub async fn wait_connected(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.fleet().await.by_status["connected"] < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                self.fleet().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs the `corral` CLI against this server's API, with its admin key.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_corral"));
        command.env("CORRAL_API_KEY", &self.key);
        self.run_cli(command, args).await
    }

    /// Runs `command` (the `corral` CLI, set up by the caller) against this server's API.
    pub async fn run_cli(&self, mut command: std::process::Command, args: &[&str]) -> CliOutput {
        command
            .args(args)
            .arg("--server")
            .arg(format!("http://{}", self.api))
            .stdin(std::process::Stdio::null());
        run(command).await
    }

    /// One plain-HTTP exchange.
    pub async fn poll(&self, msg: &proto::AgentToServer) -> proto::ServerToAgent {
        let response = self
            .post("application/x-protobuf", msg.encode_to_vec(), &[])
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-protobuf");
        proto::ServerToAgent::decode(response.bytes().await.expect("body")).expect("reply")
    }
}

/// Runs a command and takes its output.
pub async fn run(mut command: std::process::Command) -> CliOutput {
    let out = tokio::task::spawn_blocking(move || command.output().expect("run corral"))
        .await
        .expect("cli task");
    CliOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The admin key the server writes to its data directory on first start (read at once after
/// a restart): waited for, unless the server stops first (then there is none).
async fn admin_key(dir: &std::path::Path, task: &JoinHandle<anyhow::Result<()>>) -> String {
    let file = dir.join("admin.key");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(key) = std::fs::read_to_string(&file) {
            return key.trim().to_string();
        }
        if task.is_finished() || tokio::time::Instant::now() > deadline {
            return String::new();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The output of a CLI run that must succeed.
pub fn succeeded(out: CliOutput) -> String {
    assert!(out.ok, "{}", out.stderr);
    out.stdout
}

pub fn uuid_str(uid: &[u8]) -> String {
    uuid::Uuid::from_slice(uid).expect("16 bytes").to_string()
}

pub fn new_uid() -> [u8; 16] {
    *uuid::Uuid::now_v7().as_bytes()
}

fn kv(key: &str, value: &str) -> proto::KeyValue {
    proto::KeyValue {
        key: key.into(),
        value: Some(proto::AnyValue {
            value: Some(proto::any_value::Value::StringValue(value.into())),
        }),
    }
}

pub fn description(service: &str, host: &str) -> proto::AgentDescription {
    proto::AgentDescription {
        identifying_attributes: vec![
            kv("service.name", service),
            kv("service.version", "0.116.0"),
        ],
        non_identifying_attributes: vec![kv("os.type", "linux"), kv("host.name", host)],
    }
}

pub fn healthy() -> proto::ComponentHealth {
    proto::ComponentHealth {
        healthy: true,
        status: "StatusOK".into(),
        ..Default::default()
    }
}

pub fn effective_config(body: &str) -> proto::EffectiveConfig {
    proto::EffectiveConfig {
        config_map: Some(proto::AgentConfigMap {
            config_map: [(
                String::new(),
                proto::AgentConfigFile {
                    body: Bytes::copy_from_slice(body.as_bytes()),
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
        }),
    }
}

pub fn remote_config_status(
    status: proto::RemoteConfigStatuses,
    hash: &[u8],
    error: &str,
) -> proto::RemoteConfigStatus {
    proto::RemoteConfigStatus {
        last_remote_config_hash: Bytes::copy_from_slice(hash),
        status: status as i32,
        error_message: error.into(),
    }
}

/// A collector's first message: everything it has.
pub fn full_report(uid: &[u8; 16], seq: u64, service: &str) -> proto::AgentToServer {
    proto::AgentToServer {
        instance_uid: Bytes::copy_from_slice(uid),
        sequence_num: seq,
        capabilities: CAPS,
        agent_description: Some(description(service, "host-1")),
        health: Some(healthy()),
        effective_config: Some(effective_config("receivers:\n  otlp:\n")),
        remote_config_status: Some(remote_config_status(
            proto::RemoteConfigStatuses::Unset,
            &[],
            "",
        )),
        ..Default::default()
    }
}

pub fn heartbeat(uid: &[u8; 16], seq: u64) -> proto::AgentToServer {
    proto::AgentToServer {
        instance_uid: Bytes::copy_from_slice(uid),
        sequence_num: seq,
        capabilities: CAPS,
        ..Default::default()
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw OpAMP WebSocket client.
pub struct WsAgent {
    pub ws: Ws,
}

impl WsAgent {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Self { ws }
    }

    pub async fn send(&mut self, msg: &proto::AgentToServer) {
        let mut frame = vec![0u8];
        msg.encode(&mut frame).expect("encode");
        self.ws
            .send(WsMessage::Binary(frame.into()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, msg: WsMessage) {
        self.ws.send(msg).await.expect("ws send");
    }

    /// The next ServerToAgent.
    pub async fn recv(&mut self) -> proto::ServerToAgent {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("reply in time")
                .expect("connection open")
                .expect("frame");
            match frame {
                WsMessage::Binary(b) => {
                    let body = corral::edge::protocol::unframe_ws(b).expect("header 0");
                    return proto::ServerToAgent::decode(body).expect("ServerToAgent");
                }
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    pub async fn exchange(&mut self, msg: &proto::AgentToServer) -> proto::ServerToAgent {
        self.send(msg).await;
        self.recv().await
    }

    /// Waits for the server's close frame; returns its code.
    pub async fn closed_with(&mut self) -> u16 {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time");
            match frame {
                Some(Ok(WsMessage::Close(Some(cf)))) => return cf.code.into(),
                Some(Ok(WsMessage::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}
