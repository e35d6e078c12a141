//! The `corral` command: `serve`, and admin commands that talk to the REST API.

mod agents;
mod control;
mod lifecycle;
mod packages;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::settings::{DEFAULT_API_LISTEN, Partial};

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "OpAMP fleet management for OpenTelemetry collectors"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// List and inspect agents.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Store and inspect configurations.
    #[command(subcommand)]
    Config(control::ConfigCommand),
    /// Roll configuration versions out in waves.
    #[command(subcommand)]
    Rollout(control::RolloutCommand),
    /// Upload and list agent packages.
    #[command(subcommand)]
    Package(packages::PackageCommand),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML file with any of the settings below, by their flag's name with `_` for `-`
    /// (e.g. heartbeat_interval). Flags and environment variables win over it.
    #[arg(long, env = "CORRAL_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the OpAMP endpoint (WebSocket and HTTP) [default: 0.0.0.0:4320]
    #[arg(long, env = "CORRAL_OPAMP_LISTEN")]
    opamp_listen: Option<SocketAddr>,
    /// Address of the admin API [default: 127.0.0.1:4321]
    #[arg(long, env = "CORRAL_API_LISTEN")]
    api_listen: Option<SocketAddr>,
    /// Where the embedded store keeps its data [default: ./corral-data]
    #[arg(long, env = "CORRAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Heartbeat interval offered to agents, in seconds [default: 30]
    #[arg(long, env = "CORRAL_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<u64>,
    /// Largest inbound OpAMP message, in bytes, after decompression [default: 4194304]
    #[arg(long, env = "CORRAL_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Base URL agents download packages from, e.g. https://corral.example.com:4320
    /// [default: the address each agent reached the OpAMP endpoint at]
    #[arg(long, env = "CORRAL_PUBLIC_URL")]
    public_url: Option<String>,
    /// Largest package upload, in bytes [default: 1073741824]
    #[arg(long, env = "CORRAL_MAX_PACKAGE_SIZE")]
    max_package_size: Option<u64>,
    /// OTLP endpoint offered to agents that report their own metrics
    #[arg(long, env = "CORRAL_OWN_METRICS_ENDPOINT")]
    own_metrics_endpoint: Option<String>,
    /// OTLP endpoint offered to agents that report their own logs
    #[arg(long, env = "CORRAL_OWN_LOGS_ENDPOINT")]
    own_logs_endpoint: Option<String>,
    /// OTLP endpoint offered to agents that report their own traces
    #[arg(long, env = "CORRAL_OWN_TRACES_ENDPOINT")]
    own_traces_endpoint: Option<String>,
    /// Host names (besides IP addresses and localhost) the admin API may be reached by,
    /// comma-separated, e.g. corral.example.com; requests naming another host get 421
    #[arg(long, env = "CORRAL_API_ALLOWED_HOSTS", value_delimiter = ',')]
    api_allowed_hosts: Option<Vec<String>>,
    /// Most agents this server keeps; a new agent beyond it is told to come back later
    /// (HTTP 503 with Retry-After, or an Unavailable error response) [default: 200000]
    #[arg(long, env = "CORRAL_MAX_AGENTS")]
    max_agents: Option<usize>,
    /// How new agents are admitted: auto (managed at once), register (registered, until an
    /// admin manages them) or manual (discovered, until an admin approves them) [default: auto]
    #[arg(long, env = "CORRAL_ADMISSION")]
    admission: Option<String>,
    /// What ignored agents get: answer (a minimal reply) or refuse (an error; WebSocket
    /// closed with 1008, HTTP 403) [default: answer]
    #[arg(long, env = "CORRAL_IGNORED_AGENTS")]
    ignored_agents: Option<String>,
    /// Seconds after which a disconnected agent is deleted (back to not_found if it was
    /// pre-registered); 0 keeps agents for ever [default: 0]
    #[arg(long, env = "CORRAL_FORGET_DISCONNECTED_AFTER")]
    forget_disconnected_after: Option<u64>,
}

/// Where admin commands find the API.
#[derive(Debug, clap::Args)]
pub struct ServerArg {
    /// Base URL of the Corral API.
    #[arg(long, env = "CORRAL_SERVER", default_value_t = format!("http://{DEFAULT_API_LISTEN}"))]
    pub server: String,
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Agents(cmd) => agents::run(cmd).await,
            Command::Config(cmd) => control::config(cmd).await,
            Command::Rollout(cmd) => control::rollout(cmd).await,
            Command::Package(cmd) => packages::run(cmd).await,
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    crate::telemetry::init_logging();
    let file = match &args.config {
        Some(path) => Partial::from_file(path)?,
        None => Partial::default(),
    };
    let given = Partial {
        opamp_listen: args.opamp_listen,
        api_listen: args.api_listen,
        data_dir: args.data_dir,
        heartbeat_interval: args.heartbeat_interval,
        max_message_size: args.max_message_size,
        public_url: args.public_url,
        max_package_size: args.max_package_size,
        own_metrics_endpoint: args.own_metrics_endpoint,
        own_logs_endpoint: args.own_logs_endpoint,
        own_traces_endpoint: args.own_traces_endpoint,
        api_allowed_hosts: args.api_allowed_hosts,
        max_agents: args.max_agents,
        admission: args.admission,
        ignored_agents: args.ignored_agents,
        forget_disconnected_after: args.forget_disconnected_after,
    };
    let settings = given.resolve(file)?;
    let listeners = crate::server::Listeners::bind(&settings).await?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    crate::server::serve(listeners, settings, shutdown).await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = ctrl_c => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

impl ServerArg {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }
}

/// Sends a request to the API and reads its JSON answer; API errors become their message.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let response = req.send().await.context("cannot reach the Corral API")?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body["error"].as_str().unwrap_or("no details").to_string();
        anyhow::bail!("{status}: {message}");
    }
    response
        .json()
        .await
        .context("unexpected response from the Corral API")
}
