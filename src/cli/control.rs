use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};

use super::{ServerArg, get_json};
use crate::edge::api::dto::{
    ConfigurationDto, ConfigurationPutDto, ConfigurationPutResultDto, ConfigurationsDto, FileDto,
    PackageRefDto, RolloutDto, RolloutStartDto, RolloutsDto,
};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Store a new version of a configuration (nothing changes if the content is the same).
    Apply {
        name: String,
        /// Collector config files; repeat for several. The file name is the key.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// Which agents it is for, e.g. 'env=prod,region in (eu,us),!canary'
        #[arg(long, default_value = "")]
        selector: String,
        /// Wins over lower priorities when several configurations match an agent
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[command(flatten)]
        server: ServerArg,
    },
    /// All configurations.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
    /// One configuration with its versions and agents.
    Show {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Roll a configuration version (or, with --package, an agent package) out in waves.
    Start {
        /// The configuration to roll out (omit with --package)
        configuration: Option<String>,
        /// The package to roll out instead, by name ('' is the collector itself)
        #[arg(long)]
        package: Option<String>,
        /// Configuration version (default: the latest), or the package version (required)
        #[arg(long)]
        version: Option<String>,
        /// Which agents an upgrade goes to (default: all that match nothing narrower)
        #[arg(long)]
        selector: Option<String>,
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_INITIAL)]
        initial: u32,
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_MULTIPLIER)]
        multiplier: u32,
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_MAXIMUM)]
        maximum: u32,
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_MAX_ERRORS)]
        max_errors: u32,
        /// Return agents that took the version to the previous one when the rollout fails
        #[arg(long)]
        rollback: bool,
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_WAVE_TIMEOUT_SECS)]
        wave_timeout: u64,
        #[command(flatten)]
        server: ServerArg,
    },
    /// A rollout's progress; with --watch, live until it ends.
    Status {
        id: String,
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    Pause {
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Resume a paused rollout, or one stopped by errors (allowing one more error).
    Resume {
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    Cancel {
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    List {
        #[command(flatten)]
        server: ServerArg,
    },
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => "text/yaml",
        Some("json") => "application/json",
        _ => "text/plain",
    }
}

pub async fn config(cmd: ConfigCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match cmd {
        ConfigCommand::Apply {
            name,
            files,
            selector,
            priority,
            server,
        } => {
            let mut body = ConfigurationPutDto {
                selector,
                priority,
                files: Default::default(),
            };
            for path in &files {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let key = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                body.files.insert(
                    key,
                    FileDto {
                        body: text,
                        content_type: content_type(path).to_string(),
                    },
                );
            }
            let url = server.url(&format!("/api/v1/configurations/{name}"));
            let result: ConfigurationPutResultDto = get_json(client.put(url).json(&body)).await?;
            let what = if result.created {
                "created"
            } else {
                "unchanged at"
            };
            println!(
                "{} {what} version {} ({})",
                result.name, result.version, result.hash
            );
        }
        ConfigCommand::List { server } => {
            let list: ConfigurationsDto =
                get_json(client.get(server.url("/api/v1/configurations"))).await?;
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED).set_header([
                "NAME", "SELECTOR", "PRIORITY", "VERSION", "AGENTS", "ROLLOUT",
            ]);
            for c in list.configurations {
                table.add_row([
                    c.name,
                    c.selector,
                    c.priority.to_string(),
                    c.latest_version.map(|v| v.to_string()).unwrap_or_default(),
                    c.agent_count.to_string(),
                    c.rollout
                        .map(|r| format!("v{} {} {}", r.version, r.state, r.id))
                        .unwrap_or_default(),
                ]);
            }
            println!("{table}");
        }
        ConfigCommand::Show { name, server } => {
            let c: ConfigurationDto =
                get_json(client.get(server.url(&format!("/api/v1/configurations/{name}")))).await?;
            println!("{}", serde_json::to_string_pretty(&c)?);
        }
    }
    Ok(())
}

pub async fn rollout(cmd: RolloutCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match cmd {
        RolloutCommand::Start {
            configuration,
            package,
            version,
            selector,
            initial,
            multiplier,
            maximum,
            max_errors,
            rollback,
            wave_timeout,
            server,
        } => {
            let (config_version, package) = match (&configuration, package) {
                (Some(_), None) => {
                    let v = version
                        .map(|v| v.trim_start_matches('v').parse::<u32>())
                        .transpose()
                        .context("a configuration version is a number")?;
                    (v, None)
                }
                (None, Some(name)) => {
                    let version = version.context("--version is required with --package")?;
                    (None, Some(PackageRefDto { name, version }))
                }
                _ => anyhow::bail!("give a configuration name or --package"),
            };
            let body = RolloutStartDto {
                configuration,
                version: config_version,
                package,
                selector,
                initial: Some(initial),
                multiplier: Some(multiplier),
                maximum: Some(maximum),
                max_errors: Some(max_errors),
                rollback_on_failure: Some(rollback),
                wave_timeout_seconds: Some(wave_timeout),
            };
            let r: RolloutDto =
                get_json(client.post(server.url("/api/v1/rollouts")).json(&body)).await?;
            println!("rollout {} of {} started", r.id, target(&r));
        }
        RolloutCommand::Status { id, watch, server } => {
            let url = server.url(&format!("/api/v1/rollouts/{id}"));
            if watch {
                watch_rollout(&client, &url).await?;
            } else {
                let r: RolloutDto = get_json(client.get(&url)).await?;
                print_rollout(&r);
            }
        }
        RolloutCommand::Pause { id, server } => act(&client, &server, &id, "pause").await?,
        RolloutCommand::Resume { id, server } => act(&client, &server, &id, "resume").await?,
        RolloutCommand::Cancel { id, server } => act(&client, &server, &id, "cancel").await?,
        RolloutCommand::List { server } => {
            let list: RolloutsDto = get_json(client.get(server.url("/api/v1/rollouts"))).await?;
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED).set_header([
                "ID",
                "CONFIGURATION",
                "VERSION",
                "STATE",
                "WAVE",
                "DONE",
                "ERRORS",
                "UPDATED",
            ]);
            for r in list.rollouts {
                table.add_row([
                    r.id.clone(),
                    target(&r),
                    r.state,
                    r.wave.to_string(),
                    format!("{}/{}", r.counts.completed, r.counts.total),
                    r.counts.errors.to_string(),
                    r.updated_at,
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

async fn act(
    client: &reqwest::Client,
    server: &ServerArg,
    id: &str,
    action: &str,
) -> anyhow::Result<()> {
    let url = server.url(&format!("/api/v1/rollouts/{id}/{action}"));
    let r: RolloutDto = get_json(client.post(url)).await?;
    println!("rollout {} is {}", r.id, r.state);
    Ok(())
}

fn is_over(state: &str) -> bool {
    matches!(state, "stable" | "error" | "cancelled" | "replaced")
}

/// What a rollout delivers, e.g. `prod v3` or `package "" v0.116.0`.
fn target(r: &RolloutDto) -> String {
    match (&r.configuration, r.version, &r.package) {
        (Some(c), Some(v), _) => format!("{c} v{v}"),
        (_, _, Some(p)) => format!("package {:?} {}", p.name, p.version),
        _ => String::new(),
    }
}

fn summary(r: &RolloutDto) -> String {
    format!(
        "{} {} · wave {} · {} in progress · {} pending · {} errors",
        target(r),
        r.state,
        r.wave,
        r.counts.configuring,
        r.counts.pending,
        r.counts.errors
    )
}

async fn watch_rollout(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} {msg}")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    loop {
        let r: RolloutDto = get_json(client.get(url)).await?;
        bar.set_length(u64::from(r.counts.total));
        bar.set_position(u64::from(r.counts.completed));
        bar.set_message(summary(&r));
        if is_over(&r.state) {
            bar.finish();
            print_rollout(&r);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The rollout and a table of its waves: planned size, and which are done, running, next.
fn print_rollout(r: &RolloutDto) {
    println!("{}  {}", r.id, summary(r));
    println!(
        "{} of {} completed; initial {} × {} up to {}, at most {} errors{}",
        r.counts.completed,
        r.counts.total,
        r.initial,
        r.multiplier,
        r.maximum,
        r.max_errors,
        if r.rollback_on_failure {
            ", rollback on failure"
        } else {
            ""
        }
    );
    if !r.counts.skipped.is_empty() {
        let by_reason: Vec<String> = r
            .counts
            .skipped
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        println!("skipped: {}", by_reason.join(", "));
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["WAVE", "SIZE", "STATE"]);
    for (k, size) in r.wave_sizes.iter().enumerate() {
        let wave = k as u32 + 1;
        let state = if wave < r.wave || (wave == r.wave && r.counts.configuring == 0) {
            "done"
        } else if wave == r.wave {
            "running"
        } else {
            "next"
        };
        table.add_row([wave.to_string(), size.to_string(), state.to_string()]);
    }
    println!("{table}");
}
