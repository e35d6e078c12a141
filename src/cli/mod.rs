//! The `corral` command: `serve`, and admin commands that talk to the REST API.

mod agents;
mod control;
mod fleet;
mod keys;
mod lifecycle;
pub mod output;
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
    /// API key for the admin commands [default: the server's admin.key in
    /// $CORRAL_DATA_DIR or ./corral-data, when it is there]
    #[arg(long, global = true, env = "CORRAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
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
    /// How many agents there are, by status and by admin state.
    Fleet(fleet::FleetArgs),
    /// Create, list and revoke API keys (needs an admin key).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Commands run on the server's machine against its data directory, without the API.
    #[command(subcommand)]
    Admin(keys::AdminCommand),
    /// Print a shell completion script, e.g. `corral completions bash > /etc/bash_completion.d/corral`.
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
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
    /// Base URL of the Corral admin API (`host:port` means `http://host:port`)
    #[arg(long, env = "CORRAL_SERVER", default_value_t = format!("http://{DEFAULT_API_LISTEN}"))]
    pub server: String,
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        output::quiet_when_the_reader_leaves();
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let key = cli.api_key;
    let result = runtime.block_on(async move {
        let client = || api_client(key);
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Agents(cmd) => agents::run(cmd, client()?).await,
            Command::Config(cmd) => control::config(cmd, client()?).await,
            Command::Rollout(cmd) => control::rollout(cmd, client()?).await,
            Command::Package(cmd) => packages::run(cmd, client()?).await,
            Command::Fleet(args) => fleet::run(args, client()?).await,
            Command::Keys(cmd) => keys::run(cmd, client()?).await,
            Command::Admin(cmd) => keys::admin(cmd).await,
            Command::Completions { shell } => completions(shell),
        }
    });
    match result {
        // `corral agents list | head -1`: the reader has all it wanted.
        Err(e) if output::is_closed_pipe(&e) => Ok(()),
        other => other,
    }
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    // Written to a buffer first: clap_complete panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "corral", &mut script);
    output::write_bytes(&script)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    crate::telemetry::init_logging();
    let file = match &args.config {
        Some(path) => Partial::from_file(path)?,
        None => Partial::default(),
    };
    let settings = args.given.resolve(file)?;
    // Caught from here on: once the server says it is serving, a signal stops it gracefully.
    let signals = Signals::catch()?;
    let listeners = crate::server::Listeners::bind(&settings).await?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        signals.recv().await;
        // Cancel first: nothing that goes wrong with logging (a closed stderr) may keep the
        // server from stopping.
        on_signal.cancel();
        tracing::info!("shutting down");
    });
    crate::server::serve(listeners, settings, shutdown).await
}

/// SIGINT and SIGTERM.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn catch() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Ctrl-C.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn catch() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn recv(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The key admin commands send: `--api-key` or `CORRAL_API_KEY`, else the key the server
/// wrote when it first started on its data directory (`$CORRAL_DATA_DIR`, or the default one
/// under the current directory), so that the CLI works on the server's machine without
/// setting anything up.
fn find_key(given: Option<String>) -> Option<String> {
    if let Some(key) = given.filter(|k| !k.trim().is_empty()) {
        return Some(key.trim().to_string());
    }
    let dir = std::env::var_os("CORRAL_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::settings::DEFAULT_DATA_DIR));
    let key = std::fs::read_to_string(dir.join(crate::edge::api::auth::ADMIN_KEY_FILE)).ok()?;
    Some(key.trim().to_string()).filter(|k| !k.is_empty())
}

/// The HTTP client of admin commands: every request carries the key, when there is one.
fn api_client(given: Option<String>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = find_key(given) {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| anyhow::anyhow!("the API key holds characters no key has"))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

impl ServerArg {
    /// The API's base URL: `http://` is assumed when no scheme is given.
    pub fn base(&self) -> String {
        let server = self.server.trim().trim_end_matches('/');
        if server.contains("://") {
            server.to_string()
        } else {
            format!("http://{server}")
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// The URL of the API path made of `segments`, each percent-encoded: a name with `/`,
    /// `?` or `#` in it stays one segment and cannot reach another route or add a query.
    pub fn at(&self, segments: &[&str]) -> anyhow::Result<String> {
        if let Some(bad) = segments
            .iter()
            .find(|s| s.is_empty() || **s == "." || **s == "..")
        {
            anyhow::bail!("{bad:?} is not a name");
        }
        let base = self.base();
        let mut url = reqwest::Url::parse(&base)
            .map_err(|e| anyhow::anyhow!("--server {base:?} is not a URL: {e}"))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--server {base:?} is not an http URL"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url.into())
    }
}

/// The header the OpAMP listener marks its own refusals with, so that a `--server` pointing
/// at it can be told apart from the API.
pub use crate::edge::transport::LISTENER_HEADER;

/// Sends a request to the API. A failure says which URL was tried; an answer that is not a
/// success becomes the API's message (or says what answered instead of the API).
pub async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    let response = req.send().await.map_err(unreachable)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let origin = origin(response.url());
    if response
        .headers()
        .get(LISTENER_HEADER)
        .is_some_and(|v| v == "opamp")
    {
        anyhow::bail!(
            "{origin} is Corral's OpAMP listener, not its admin API (default \
             {DEFAULT_API_LISTEN}); give the API's address with --server or CORRAL_SERVER"
        );
    }
    let body = response.bytes().await.unwrap_or_default();
    if status == reqwest::StatusCode::UNAUTHORIZED
        && let Ok(e) = serde_json::from_slice::<crate::edge::api::dto::ErrorDto>(&body)
    {
        anyhow::bail!(
            "{status}: {}; give a key with --api-key or CORRAL_API_KEY (the server writes an \
             admin key to admin.key in its data directory when it first starts)",
            e.error
        );
    }
    match serde_json::from_slice::<crate::edge::api::dto::ErrorDto>(&body) {
        Ok(e) => match e.allowed {
            Some(allowed) if !allowed.is_empty() => {
                anyhow::bail!("{status}: {} (allowed: {})", e.error, allowed.join(", "))
            }
            _ => anyhow::bail!("{status}: {}", e.error),
        },
        Err(_) => anyhow::bail!(
            "{status} from {origin}, which does not answer like Corral's admin API; check --server"
        ),
    }
}

/// Why a request got no answer, naming the URL it was sent to.
fn unreachable(e: reqwest::Error) -> anyhow::Error {
    let url = e.url().map(origin).unwrap_or_default();
    let mut cause: &dyn std::error::Error = &e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if e.is_builder() {
        anyhow::anyhow!("cannot send a request to {url:?}: {cause}; check --server")
    } else if e.is_connect() {
        anyhow::anyhow!(
            "cannot reach the Corral API at {url}: {cause}; is `corral serve` running there? \
             (--server or CORRAL_SERVER; default http://{DEFAULT_API_LISTEN})"
        )
    } else {
        anyhow::anyhow!("request to the Corral API at {url} failed: {cause}")
    }
}

/// `scheme://host:port` of a URL, without its path and query.
fn origin(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    url.set_path("");
    url.set_query(None);
    url.as_str().trim_end_matches('/').to_string()
}

/// Sends a request to the API and reads its JSON answer; API errors become their message.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
) -> anyhow::Result<T> {
    use anyhow::Context;
    send(req)
        .await?
        .json()
        .await
        .context("unexpected response from the Corral API")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and argument says what it is in `--help`.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && !arg.is_hide_set() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = sub.get_name();
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {name}"));
                }
                walk(sub, &format!("{path} {name}"), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "corral", &mut missing);
        assert!(missing.is_empty(), "no help: {missing:#?}");
    }
}
