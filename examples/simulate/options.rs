//! The command line: flags, their parsers and the range checks clap does not make.

use std::time::Duration;

use clap::Parser;
use rand::Rng;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Runs N simulated OpAMP agents (OpenTelemetry collectors) against an OpAMP server"
)]
pub struct Args {
    /// OpAMP endpoint: ws://host:port/v1/opamp (WebSocket) or http://host:port/v1/opamp (plain HTTP).
    #[arg(long, default_value = "ws://127.0.0.1:4320/v1/opamp")]
    pub server: String,
    /// Number of agents.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Agents started per second during ramp-up.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Agents connecting to a loopback server bind to 127.0.0.1 .. 127.0.0.N, so ephemeral
    /// ports never run out [default: 1, or one per 20,000 agents]. Not with
    /// --http-connections.
    #[arg(long)]
    pub source_ips: Option<u8>,
    /// Heartbeat (WebSocket) or polling (HTTP) interval until the server offers one.
    #[arg(long, default_value_t = 30)]
    pub heartbeat_seconds: u64,
    /// Size in bytes of the effective config each agent reports, padded with comments or cut
    /// at a line; 0 gives the natural size of the built-in collector YAML (about 1 KiB).
    #[arg(long, visible_alias = "config-size", default_value_t = 5120)]
    pub config_bytes: usize,
    /// Distinct effective configs in the fleet (1 to 64). Agent i reports variant
    /// min(trailing_ones(i), N-1): half the agents share variant 0, a quarter variant 1, an
    /// eighth variant 2 and so on, the last variant taking the rest, as in real fleets where
    /// most collectors run one or two configs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub config_variants: u8,
    /// Mean time to apply a remote config; see --apply-delay-dist.
    #[arg(long, default_value_t = 500)]
    pub apply_delay_ms: u64,
    /// Distribution of the apply delay around --apply-delay-ms (D): "uniform" draws from
    /// [0.5 D, 1.5 D] (at most 1.5 D); "exp" is exponential with mean D, cut at 5 D.
    #[arg(long, value_enum, default_value_t = DelayDist::Uniform)]
    pub apply_delay_dist: DelayDist,
    /// Churn: this percentage of the agents per minute disconnect and reconnect, each agent
    /// at exponentially distributed times (a Poisson process of rate PCT/100 per minute).
    /// WebSocket agents close their connection without a goodbye (as on a network cut) and
    /// reconnect after about a second with the same uid, state and continuing sequence
    /// numbers, reporting full state; HTTP agents send agent_disconnect, pause about a second
    /// and resume polling with a full report.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub churn: f64,
    /// Probability that applying a remote config fails.
    #[arg(long, default_value_t = 0.0)]
    pub failure_ratio: f64,
    /// Applying a remote config whose body contains this text fails, whatever
    /// --failure-ratio says (repeatable).
    #[arg(long = "fail-on", value_name = "SUBSTRING")]
    pub fail_on: Vec<String>,
    /// Components each agent reports (AvailableComponents), as comma-separated kind/type,
    /// e.g. receivers/otlp,processors/batch,exporters/debug; "none" reports no components
    /// [default: a collector-contrib-like set].
    #[arg(long, value_name = "LIST")]
    pub components: Option<String>,
    /// The component set that a fraction --components-ratio of the agents report instead.
    #[arg(long, value_name = "LIST", requires = "components_ratio")]
    pub alt_components: Option<String>,
    /// Fraction of the agents (every 1/R-th) that report --alt-components.
    #[arg(long, value_name = "R", requires = "alt_components")]
    pub components_ratio: Option<f64>,
    /// Stop after this many seconds [default: run until Ctrl-C or SIGTERM].
    #[arg(long)]
    pub duration_seconds: Option<u64>,
    /// Extra non-identifying attribute key=value on every agent (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Extra non-identifying attribute key=value on every K-th agent only (agents 0, K, 2K,
    /// ...), e.g. 100:team=payments (repeatable).
    #[arg(long = "label-every", value_name = "K:KEY=VALUE", value_parser = parse_label_every)]
    pub labels_every: Vec<(usize, String, String)>,
    /// Plain-HTTP agents share one client with at most this many connections, as agents
    /// behind a proxy or load balancer that pools its connections to the server look to it
    /// [default: each agent its own keep-alive connection, as the collector's OpAMP client
    /// (opamp-go) keeps one, asking for gzip replies like it].
    #[arg(long, value_name = "N")]
    pub http_connections: Option<usize>,
    /// An agent with its own connection closes it after this long unused (Go's
    /// IdleConnTimeout is 90 s); a server may close it sooner.
    #[arg(long, default_value_t = 90)]
    pub http_idle_seconds: u64,
    /// Gzip plain-HTTP request bodies (Content-Encoding: gzip).
    #[arg(long)]
    pub gzip: bool,
    /// service.version the agents report: the version of their top-level package ("").
    #[arg(long, default_value = "v0.115.0")]
    pub service_version: String,
    /// Neither AcceptsPackages nor ReportsPackageStatuses: no package offers, no
    /// package_statuses.
    #[arg(long)]
    pub no_packages: bool,
    /// No AcceptsRestartCommand.
    #[arg(long)]
    pub no_restart: bool,
    /// Time to install a downloaded package, jittered by ±50%.
    #[arg(long, default_value_t = 500)]
    pub install_delay_ms: u64,
    /// Probability that installing a downloaded, verified package fails.
    #[arg(long, default_value_t = 0.0)]
    pub install_failure_ratio: f64,
    /// Stop reading each download once, after half its bytes, and resume it with a
    /// `Range: bytes=N-` request.
    #[arg(long)]
    pub interrupt_downloads: bool,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// At most this many individual errors are printed; all are counted.
    #[arg(long, default_value_t = 20)]
    pub log_errors: u64,
}

impl Args {
    /// The checks clap cannot express; the first failing one is the error.
    pub fn validate(&self) -> Result<(), String> {
        if self.agents == 0 {
            return Err("--agents must be at least 1".into());
        }
        if self.connect_rate.is_nan() || self.connect_rate <= 0.0 {
            return Err("--connect-rate must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.failure_ratio) {
            return Err("--failure-ratio must be between 0 and 1".into());
        }
        if !(0.0..=1.0).contains(&self.install_failure_ratio) {
            return Err("--install-failure-ratio must be between 0 and 1".into());
        }
        if !self.churn.is_finite() || self.churn < 0.0 {
            return Err("--churn must be a percentage per minute, 0 or more".into());
        }
        if self.fail_on.iter().any(String::is_empty) {
            return Err("--fail-on needs a non-empty substring".into());
        }
        Ok(())
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} must be key=value")),
    }
}

fn parse_label_every(s: &str) -> Result<(usize, String, String), String> {
    let (every, label) = s
        .split_once(':')
        .ok_or_else(|| format!("--label-every {s:?} must be K:key=value"))?;
    let every: usize = every
        .parse()
        .ok()
        .filter(|k| *k > 0)
        .ok_or_else(|| format!("--label-every {s:?}: K must be a positive integer"))?;
    let (k, v) = parse_label(label)?;
    Ok((every, k, v))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayDist {
    /// Uniform in [0.5 D, 1.5 D].
    Uniform,
    /// Exponential with mean D, cut at 5 D.
    Exp,
}

/// An exponential delay is cut at this multiple of its mean.
const EXP_DELAY_CAP: f64 = 5.0;

impl DelayDist {
    /// The longest delay drawn for a mean of `mean_ms`.
    pub fn max_ms(self, mean_ms: u64) -> f64 {
        match self {
            DelayDist::Uniform => mean_ms as f64 * 1.5,
            DelayDist::Exp => mean_ms as f64 * EXP_DELAY_CAP,
        }
    }

    pub fn draw(self, mean_ms: u64, rng: &mut impl Rng) -> Duration {
        let base = mean_ms as f64;
        if base <= 0.0 {
            return Duration::ZERO;
        }
        let ms = match self {
            DelayDist::Uniform => rng.random_range(base * 0.5..=base * 1.5),
            DelayDist::Exp => {
                // Inverse CDF; 1 - u is in (0, 1], so the logarithm is finite.
                let u: f64 = rng.random_range(0.0..1.0);
                (-(1.0 - u).ln() * base).min(base * EXP_DELAY_CAP)
            }
        };
        Duration::from_micros((ms * 1000.0) as u64)
    }
}
