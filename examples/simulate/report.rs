//! What the simulator prints: the plan at the start, progress lines on stderr, and the final
//! summary on stdout (text, or one JSON object with --json, which the benchmark scripts read).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;

use crate::components::{describe_components, is_alt};
use crate::configs::config_variant;
use crate::context::{Ctx, Target};
use crate::stats::get;

/// The plan on stderr: fleet size, server, configs and component sets.
pub fn announce(ctx: &Ctx) {
    eprintln!(
        "starting {} agents against {} at {} per second",
        ctx.args.agents, ctx.args.server, ctx.args.connect_rate
    );
    let n = ctx.config_bodies.len();
    let mut counts = vec![0usize; n];
    for i in 0..ctx.args.agents {
        counts[config_variant(i, n)] += 1;
    }
    eprintln!(
        "effective configs: {n} variants of {} bytes, agents per variant {counts:?}; apply delay {} ms {:?} (at most {:.0} ms); churn {}%/min",
        ctx.config_bodies.first().map_or(0, Bytes::len),
        ctx.args.apply_delay_ms,
        ctx.args.apply_delay_dist,
        ctx.args.apply_delay_dist.max_ms(ctx.args.apply_delay_ms),
        ctx.args.churn,
    );
    match &ctx.alt_components {
        None => eprintln!(
            "components: {}",
            describe_components(ctx.components.as_ref())
        ),
        Some((ratio, alt)) => {
            let alts = (0..ctx.args.agents).filter(|&i| is_alt(i, *ratio)).count();
            eprintln!(
                "components: {} agents {}; {alts} agents (label sim.components=alt) {}",
                ctx.args.agents - alts,
                describe_components(ctx.components.as_ref()),
                describe_components(alt.as_ref()),
            );
        }
    }
}

/// Every counter, with the flags that shaped the run; `--json` prints it as it is.
pub fn summary(ctx: &Ctx, connected_at_stop: i64) -> serde_json::Value {
    let s = &ctx.stats;
    let all_ms = get(&s.all_connected_ms);
    let (user, system) = own_cpu_seconds().unwrap_or((f64::NAN, f64::NAN));
    let transport = match ctx.target {
        Target::WebSocket { .. } => "websocket",
        Target::Http { .. } => "http",
    };
    let errors = get(&s.connect_errors)
        + get(&s.connection_drops)
        + get(&s.poll_errors)
        + get(&s.decode_errors)
        + get(&s.error_responses);
    let mut summary = serde_json::json!({
        "server": ctx.args.server,
        "transport": transport,
        "agents": ctx.args.agents,
        "spawned": get(&s.spawned),
        "connected": connected_at_stop,
        "ever_connected": get(&s.ever_connected),
        "all_connected_after_s": (all_ms > 0).then(|| all_ms as f64 / 1000.0),
        "elapsed_s": ctx.start.elapsed().as_secs_f64(),
        "messages_sent": get(&s.sent),
        "messages_received": get(&s.received),
        "bytes_sent": get(&s.bytes_sent),
        "bytes_received": get(&s.bytes_received),
        "full_reports_sent": get(&s.full_reports),
        "heartbeats_sent": get(&s.heartbeats),
        "configs_received": get(&s.configs_received),
        "configs_applied": get(&s.configs_applied),
        "configs_failed": get(&s.configs_failed),
        "configs_ignored": get(&s.configs_ignored),
        "configs_superseded": get(&s.configs_superseded),
        "component_map_requests": get(&s.component_map_requests),
        "component_maps_sent": get(&s.component_maps_sent),
        "errors": errors,
        "error_responses": get(&s.error_responses),
        "connect_errors": get(&s.connect_errors),
        "told_to_wait": get(&s.told_to_wait),
        "connection_drops": get(&s.connection_drops),
        "poll_errors": get(&s.poll_errors),
        "decode_errors": get(&s.decode_errors),
        "reconnects": get(&s.reconnects),
        "http_connections_opened": get(&s.http_connections_opened),
        "full_state_requests": get(&s.full_state_requests),
        "uid_reassignments": get(&s.uid_reassignments),
        "replies_with_other_uid": get(&s.foreign_uid_replies),
        "heartbeat_offers": get(&s.heartbeat_offers),
        "immediate_send_limit_hits": get(&s.immediate_send_limit_hits),
        "disconnects_sent": get(&s.disconnects_sent),
        "cpu_user_s": user,
        "cpu_system_s": system,
    });
    // A second object: one json! of everything exceeds the macro recursion limit.
    let packages = serde_json::json!({
        "packages_offered": get(&s.packages_offered),
        "packages_ignored": get(&s.packages_ignored),
        "downloads": get(&s.downloads),
        "downloads_completed": get(&s.downloads_completed),
        "download_bytes": get(&s.download_bytes),
        "download_resumes": get(&s.download_resumes),
        "installs": get(&s.installs),
        "install_failures": get(&s.install_failures),
        "restarts": get(&s.restarts),
        "configs_resent": get(&s.configs_resent),
        "churn_percent_per_minute": ctx.args.churn,
        "churn_disconnects": get(&s.churn_disconnects),
        "churn_reconnects": get(&s.churn_reconnects),
        "config_bytes": ctx.config_bodies.first().map_or(0, Bytes::len),
        "config_variants": ctx.config_bodies.len(),
        "apply_delay_ms": ctx.args.apply_delay_ms,
        "apply_delay_dist": format!("{:?}", ctx.args.apply_delay_dist).to_lowercase(),
        "apply_delay_max_ms": ctx.args.apply_delay_dist.max_ms(ctx.args.apply_delay_ms),
    });
    if let (Some(all), serde_json::Value::Object(more)) = (summary.as_object_mut(), packages) {
        all.extend(more);
    }
    summary
}

/// This process's user and system CPU seconds (Linux; clock ticks assumed 100 Hz).
fn own_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / 100.0, stime / 100.0))
}

pub fn progress_line(ctx: &Ctx) -> String {
    let s = &ctx.stats;
    format!(
        "[{:>7.1}s] spawned {} connected {} sent {} received {} configs {} applied {} failed {} re-sent {} errors {} reconnects {} churned {} downloads {} installs {} install-failures {} restarts {}",
        ctx.start.elapsed().as_secs_f64(),
        get(&s.spawned),
        s.connected.load(Relaxed),
        get(&s.sent),
        get(&s.received),
        get(&s.configs_received),
        get(&s.configs_applied),
        get(&s.configs_failed),
        get(&s.configs_resent),
        get(&s.connect_errors)
            + get(&s.connection_drops)
            + get(&s.poll_errors)
            + get(&s.decode_errors)
            + get(&s.error_responses),
        get(&s.reconnects),
        get(&s.churn_disconnects),
        get(&s.downloads),
        get(&s.installs),
        get(&s.install_failures),
        get(&s.restarts),
    )
}

/// A progress line every second while agents are missing, every ten seconds after.
pub async fn report_progress(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut announced = false;
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        seconds += 1;
        let ramping = get(&ctx.stats.all_connected_ms) == 0;
        let short = ctx.stats.connected.load(Relaxed) < ctx.args.agents as i64;
        if ramping || short || seconds.is_multiple_of(10) {
            eprintln!("{}", progress_line(&ctx));
        }
        if !ramping && !announced {
            announced = true;
            let ms = get(&ctx.stats.all_connected_ms);
            eprintln!(
                "all {} agents connected after {:.2}s",
                ctx.args.agents,
                ms as f64 / 1000.0
            );
        }
    }
}

/// The summary for people, on stdout.
pub fn print_summary(s: &serde_json::Value) {
    let n = |k: &str| s.get(k).map_or_else(String::new, |v| v.to_string());
    println!(
        "simulation summary ({} agents over {}):",
        n("agents"),
        n("transport")
    );
    println!(
        "  connected at stop     {} (ever connected {})",
        n("connected"),
        n("ever_connected")
    );
    println!("  all connected after   {} s", n("all_connected_after_s"));
    println!("  elapsed               {} s", n("elapsed_s"));
    println!(
        "  messages sent         {} ({} bytes; {} full reports, {} heartbeats)",
        n("messages_sent"),
        n("bytes_sent"),
        n("full_reports_sent"),
        n("heartbeats_sent")
    );
    println!(
        "  messages received     {} ({} bytes)",
        n("messages_received"),
        n("bytes_received")
    );
    println!(
        "  configs received      {} (applied {}, failed {}, ignored as known {} of which re-sent after APPLIED {}, superseded {})",
        n("configs_received"),
        n("configs_applied"),
        n("configs_failed"),
        n("configs_ignored"),
        n("configs_resent"),
        n("configs_superseded")
    );
    println!(
        "  effective configs     {} variants of {} bytes; apply delay {} ms ({}, at most {} ms)",
        n("config_variants"),
        n("config_bytes"),
        n("apply_delay_ms"),
        n("apply_delay_dist"),
        n("apply_delay_max_ms")
    );
    println!(
        "  component maps        {} requested, {} sent",
        n("component_map_requests"),
        n("component_maps_sent")
    );
    println!(
        "  errors                {} (connect {}, drops {}, polls {}, decode {}, error_response {})",
        n("errors"),
        n("connect_errors"),
        n("connection_drops"),
        n("poll_errors"),
        n("decode_errors"),
        n("error_responses")
    );
    println!("  told to wait (503)    {}", n("told_to_wait"));
    println!("  reconnects            {}", n("reconnects"));
    println!("  HTTP connections      {}", n("http_connections_opened"));
    println!(
        "  churn                 {} %/min: {} disconnects, {} reconnects",
        n("churn_percent_per_minute"),
        n("churn_disconnects"),
        n("churn_reconnects")
    );
    println!("  full-state requests   {}", n("full_state_requests"));
    println!("  uid reassignments     {}", n("uid_reassignments"));
    println!("  heartbeat offers      {}", n("heartbeat_offers"));
    println!("  disconnects sent      {}", n("disconnects_sent"));
    println!(
        "  packages offered      {} (ignored as known {}); downloads {} (completed {}, {} bytes, resumed {})",
        n("packages_offered"),
        n("packages_ignored"),
        n("downloads"),
        n("downloads_completed"),
        n("download_bytes"),
        n("download_resumes")
    );
    println!(
        "  installs              {} (failed {}); restart commands {}",
        n("installs"),
        n("install_failures"),
        n("restarts")
    );
    println!(
        "  simulator CPU         user {} s, system {} s",
        n("cpu_user_s"),
        n("cpu_system_s")
    );
}
