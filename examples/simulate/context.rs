//! What every agent task shares: the parsed flags, the server it talks to, the counters, the
//! stop signal and the fleet-wide caches.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use corral::edge::protocol::proto;
use rand::Rng;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::components::{self, Reported};
use crate::configs::config_body;
use crate::options::Args;
use crate::stats::Stats;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Distinct applied remote configs kept once for all agents.
const MAX_SHARED_CONFIGS: usize = 64;
/// The pause between a churn disconnection and the reconnection, jittered by ±50%.
const CHURN_PAUSE: Duration = Duration::from_secs(1);

pub enum Target {
    WebSocket { url: String, endpoint: Endpoint },
    Http { url: String, mode: HttpMode },
}

/// How plain-HTTP agents reach the server.
pub enum HttpMode {
    /// Each agent holds its own keep-alive connection, as opamp-go's client does (the
    /// collector's opamp extension and the supervisor), and asks for gzip replies as Go's
    /// transport does.
    PerAgent {
        endpoint: Endpoint,
        uri: hyper::Uri,
        /// How long an agent keeps its connection unused before closing it (Go: 90 s).
        idle: Duration,
    },
    /// All agents share one client with a bounded pool of connections: what agents behind
    /// a forward proxy or a load balancer that pools its backend connections look like to the
    /// server.
    Pooled {
        client: reqwest::Client,
        slots: Semaphore,
    },
}

pub struct Ctx {
    pub args: Args,
    pub target: Target,
    pub stats: Stats,
    pub stop: CancellationToken,
    /// The distinct effective configs agents start with (--config-variants).
    pub config_bodies: Vec<Bytes>,
    /// Remote configs applied, by hash, shared by every agent that applied them (at most
    /// MAX_SHARED_CONFIGS; agents keep their own copy of any beyond).
    applied_configs: parking_lot::Mutex<HashMap<Bytes, proto::AgentConfigMap>>,
    /// What most agents report (None: no components).
    pub components: Reported,
    /// What every 1/ratio-th agent reports instead.
    pub alt_components: Option<(f64, Reported)>,
    /// Downloads packages (no overall timeout: files may be big).
    pub download_client: reqwest::Client,
    pub start: Instant,
}

impl Ctx {
    /// Everything the agents share, built from checked flags; fails on a bad component list
    /// or an unusable --server.
    pub async fn build(args: Args) -> Result<Self, String> {
        let (components, alt_components) = components::from_args(&args)?;
        let target = build_target(&args).await?;
        let download_client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("download client: {e}"))?;
        let endpoint = match &target {
            Target::WebSocket { endpoint, .. }
            | Target::Http {
                mode: HttpMode::PerAgent { endpoint, .. },
                ..
            } => Some(endpoint),
            Target::Http { .. } => None,
        };
        if let Some(endpoint) = endpoint
            && endpoint.sources.len() > 1
        {
            eprintln!(
                "spreading connections over source addresses 127.0.0.1..127.0.0.{}",
                endpoint.sources.len()
            );
        }
        Ok(Self {
            config_bodies: (0..usize::from(args.config_variants))
                .map(|v| config_body(args.config_bytes, v))
                .collect(),
            applied_configs: parking_lot::Mutex::new(HashMap::new()),
            components,
            alt_components,
            target,
            download_client,
            stats: Stats::default(),
            stop: CancellationToken::new(),
            start: Instant::now(),
            args,
        })
    }

    pub fn log(&self, agent: usize, what: impl std::fmt::Display) {
        let n = self.stats.logged.fetch_add(1, Relaxed);
        if n < self.args.log_errors {
            eprintln!(
                "[{:>7.1}s] agent {agent}: {what}",
                self.start.elapsed().as_secs_f64()
            );
        } else if n == self.args.log_errors {
            eprintln!("(further errors are counted, not printed; see --log-errors)");
        }
    }

    /// The shared copy of an applied remote config (the agent's own beyond the cap).
    pub fn shared_config(
        &self,
        hash: &Bytes,
        config: proto::AgentConfigMap,
    ) -> proto::AgentConfigMap {
        let mut shared = self.applied_configs.lock();
        if let Some(c) = shared.get(hash) {
            return c.clone();
        }
        if shared.len() < MAX_SHARED_CONFIGS {
            // Copy the bodies out of the received frame so it can be freed.
            let own = proto::AgentConfigMap {
                config_map: config
                    .config_map
                    .into_iter()
                    .map(|(k, f)| {
                        let file = proto::AgentConfigFile {
                            body: Bytes::copy_from_slice(&f.body),
                            content_type: f.content_type,
                        };
                        (k, file)
                    })
                    .collect(),
            };
            shared.insert(hash.clone(), own.clone());
            return own;
        }
        config
    }

    /// When this agent next disconnects on purpose (None: no --churn).
    pub fn next_churn(&self) -> Option<Instant> {
        let per_minute = self.args.churn / 100.0;
        if per_minute <= 0.0 {
            return None;
        }
        let u: f64 = rand::rng().random_range(0.0..1.0);
        let minutes = -(1.0 - u).ln() / per_minute;
        Some(Instant::now() + Duration::from_secs_f64((minutes * 60.0).min(365.0 * 86400.0)))
    }

    pub fn churn_pause(&self) -> Duration {
        CHURN_PAUSE.mul_f64(rand::rng().random_range(0.5..1.5))
    }

    pub fn default_interval(&self) -> Duration {
        Duration::from_secs(self.args.heartbeat_seconds.max(1))
    }

    pub fn mark_connected(&self) {
        self.stats.connected.fetch_add(1, Relaxed);
    }

    pub fn mark_disconnected(&self) {
        self.stats.connected.fetch_sub(1, Relaxed);
    }

    pub fn first_connection(&self) {
        let n = self.stats.ever_connected.fetch_add(1, Relaxed) + 1;
        if n as usize == self.args.agents {
            let ms = self.start.elapsed().as_millis() as u64;
            self.stats.all_connected_ms.store(ms.max(1), Relaxed);
        }
    }
}

async fn build_target(args: &Args) -> Result<Target, String> {
    let (scheme, _) = args.server.split_once("://").ok_or_else(|| {
        format!(
            "--server {:?} must start with ws:// or http://",
            args.server
        )
    })?;
    match scheme {
        "ws" => Ok(Target::WebSocket {
            url: args.server.clone(),
            endpoint: Endpoint::resolve(args).await?,
        }),
        "http" => match args.http_connections {
            Some(slots) => {
                let slots = slots.max(1);
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(slots)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(HTTP_TIMEOUT)
                    .tcp_nodelay(true)
                    .build()
                    .map_err(|e| format!("http client: {e}"))?;
                Ok(Target::Http {
                    url: args.server.clone(),
                    mode: HttpMode::Pooled {
                        client,
                        slots: Semaphore::new(slots),
                    },
                })
            }
            None => Ok(Target::Http {
                url: args.server.clone(),
                mode: HttpMode::PerAgent {
                    endpoint: Endpoint::resolve(args).await?,
                    uri: args
                        .server
                        .parse()
                        .map_err(|e| format!("--server {:?}: {e}", args.server))?,
                    idle: Duration::from_secs(args.http_idle_seconds),
                },
            }),
        },
        "wss" | "https" => {
            Err("TLS is not supported by the simulator (no TLS crate); use ws:// or http://".into())
        }
        other => Err(format!(
            "unsupported scheme {other:?}; use ws:// or http://"
        )),
    }
}

/// Where agents connect, and the source addresses they spread their connections over.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Empty: let the kernel choose.
    pub sources: Vec<IpAddr>,
}

impl Endpoint {
    async fn resolve(args: &Args) -> Result<Self, String> {
        let uri: hyper::Uri = args
            .server
            .parse()
            .map_err(|e| format!("--server {:?}: {e}", args.server))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("--server {:?} has no host", args.server))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let host_port = format!("{host}:{port}");
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host_port} resolves to nothing"))?;
        let default_ips = args.agents.div_ceil(20_000).max(1);
        let count = args
            .source_ips
            .map_or(default_ips, usize::from)
            .clamp(1, 254);
        let sources = if addr.ip().is_loopback() && addr.is_ipv4() {
            (1..=count)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
                .collect()
        } else {
            if args.source_ips.is_some_and(|n| n > 1) {
                eprintln!("--source-ips applies only to a loopback IPv4 server; ignored");
            }
            Vec::new()
        };
        Ok(Self { addr, sources })
    }

    /// A new TCP connection for agent `index`, from its source address, with Nagle off.
    pub async fn connect(&self, index: usize) -> Result<TcpStream, String> {
        let addr = self.addr;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        if !self.sources.is_empty() {
            let source = self.sources[index % self.sources.len()];
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|e| format!("bind {source}: {e}"))?;
        }
        let stream = match timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect {addr}: {e}")),
            Err(_) => return Err(format!("connect {addr}: timed out")),
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
