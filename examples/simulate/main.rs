//! Simulates a fleet of OpAMP agents (OpenTelemetry collectors) in one process, for load
//! tests and benchmarks of Corral.
//!
//! ```text
//! cargo run --release --example simulate -- --server ws://127.0.0.1:4320/v1/opamp --agents 1000
//! cargo run --release --example simulate -- --server http://127.0.0.1:4320/v1/opamp --agents 1000
//! ```
//!
//! Each agent has its own UUIDv7 instance uid and sequence numbers, sends its full state
//! first, then compressed reports and heartbeats; it honours ReportFullState, a new instance
//! uid, an offered heartbeat interval and remote configs (APPLYING, then APPLIED or FAILED;
//! the hash it last applied or failed is not applied again), reports its available components
//! (the hash in full reports, the full map when the server sets ReportAvailableComponents),
//! upgrades its top-level package "" when offered one (downloads it over HTTP, resuming with
//! range requests, verifies the SHA-256, installs it and restarts with the new
//! service.version), restarts on the Restart command, reconnects with backoff and says
//! goodbye (agent_disconnect) when stopped. Progress goes to stderr; the summary to stdout
//! (one JSON object with `--json`).
//!
//! The fleet looks like a real one: each agent reports one of `--config-variants` effective
//! configs of `--config-size` bytes (5 KiB by default), most agents sharing the first one or
//! two; remote configs take `--apply-delay-ms` to apply, drawn uniformly from ±50% or
//! exponentially (`--apply-delay-dist`), and fail with `--failure-ratio`; `--churn PCT`
//! disconnects and reconnects PCT% of the agents per minute. The summary counts configs
//! applied, failed and re-sent (`configs_resent`: an offer of the config the agent had
//! already applied). Per-agent memory is bounded: config bodies are shared between agents
//! (applied remote configs through a cache of at most 64 configs), and remembered package
//! hashes are capped at 16 per agent.
//!
//! ```text
//! # 100,000 HTTP agents polling every 30 s, each on its own connection, 1 in 100 labelled
//! cargo run --release --example simulate -- --server http://127.0.0.1:4320/v1/opamp \
//!     --agents 100000 --connect-rate 5000 --source-ips 8 --label-every 100:team=payments
//! # the same agents sharing 256 pooled connections, as behind a pooling proxy
//! cargo run --release --example simulate -- --server http://127.0.0.1:4320/v1/opamp \
//!     --agents 100000 --connect-rate 5000 --http-connections 256
//! # 19,000 WebSocket agents over 127.0.0.1..127.0.0.4, 2% reconnecting per minute
//! cargo run --release --example simulate -- --agents 19000 --source-ips 4 --churn 2
//! ```
//!
//! ```text
//! # 1 agent in 4 lacks exporters/kafka; configs containing "BROKEN" fail
//! cargo run --release --example simulate -- --agents 100 --fail-on BROKEN \
//!     --components-ratio 0.25 --alt-components receivers/otlp,processors/batch,exporters/debug
//! ```
//!
//! The modules: `options` (the flags), `context` (what all agents share), `agent` (one
//! agent's state and reactions, with its remote configs and packages), `ws` and `http` (the
//! two drivers that move an agent's messages; `own_conn`, an HTTP agent's own connection), `download` (package transfers), `configs` and
//! `components` (what the agents report), `stats`, `report` (progress and summary) and
//! `timing` (backoff and pauses).

mod agent;
mod components;
mod configs;
mod context;
mod download;
mod http;
mod options;
mod own_conn;
mod report;
mod stats;
mod timing;
mod ws;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use clap::Parser;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

use agent::Agent;
use context::{Ctx, Target};
use options::Args;
use stats::inc;
use timing::GOODBYE_TIMEOUT;

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("simulate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(s) => {
            if json {
                println!("{s}");
            } else {
                report::print_summary(&s);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    args.validate()?;
    let ctx = Arc::new(Ctx::build(args).await?);
    report::announce(&ctx);
    let stopper = tokio::spawn(wait_for_stop(ctx.clone()));
    let progress = tokio::spawn(report::report_progress(ctx.clone()));
    let mut tasks = ramp_up(&ctx).await;
    // The stopper records the connected count before it cancels.
    let _ = stopper.await;
    let connected_at_stop = ctx.stats.connected_at_stop.load(Relaxed);
    eprintln!("{}", report::progress_line(&ctx));
    eprintln!("saying goodbye...");
    let drained = timeout(GOODBYE_TIMEOUT + Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "{} agents did not finish in time; aborting them",
            tasks.len()
        );
        tasks.abort_all();
    }
    progress.abort();
    Ok(report::summary(&ctx, connected_at_stop))
}

/// Starts the agents at --connect-rate, until all run or the simulation stops.
async fn ramp_up(ctx: &Arc<Ctx>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let is_ws = matches!(ctx.target, Target::WebSocket { .. });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ramp_start = Instant::now();
    let mut started = 0usize;
    while started < ctx.args.agents {
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let due = ((ramp_start.elapsed().as_secs_f64() * ctx.args.connect_rate).floor() as usize
            + 1)
        .min(ctx.args.agents);
        while started < due {
            let agent = Agent::new(started, ctx);
            if is_ws {
                tasks.spawn(ws::run_agent(agent, ctx.clone()));
            } else {
                tasks.spawn(http::run_agent(agent, ctx.clone()));
            }
            started += 1;
            inc(&ctx.stats.spawned);
        }
    }
    tasks
}

async fn wait_for_stop(ctx: Arc<Ctx>) {
    let stop = ctx.stop.clone();
    let duration = ctx.args.duration_seconds;
    let limit = async {
        match duration {
            Some(s) => sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = limit => eprintln!("duration reached; stopping"),
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted; stopping"),
        _ = term => eprintln!("terminated; stopping"),
    }
    let connected = ctx.stats.connected.load(Relaxed);
    ctx.stats.connected_at_stop.store(connected, Relaxed);
    stop.cancel();
}
