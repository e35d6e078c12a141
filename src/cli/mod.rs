//! The `corral` command: `serve`, and admin commands that talk to the REST API.

mod agents;
mod control;
mod lifecycle;
mod packages;

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
    #[command(flatten)]
    given: Partial,
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
    let settings = args.given.resolve(file)?;
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
