use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::output::{OutputArg, keep_whole, out, structured, table, write_bytes};
use super::{ServerArg, get_json};
use crate::edge::api::dto::{
    ConfigDiffDto, ConfigurationDto, ConfigurationPutDto, ConfigurationPutResultDto,
    ConfigurationsDto, FileDto, PackageRefDto, RolloutDto, RolloutStartDto, RolloutsDto,
    VersionDto, VersionsDto,
};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Create or change a configuration: its files (a new version), selector or priority.
    ///
    /// What you leave out stays as it is. It shows what would change (the diff, the selector,
    /// the priority) and which agents would move to another configuration, and asks before
    /// moving any.
    Apply {
        /// The configuration's name
        name: String,
        /// Collector config files; repeat for several. The file name is the key. Left out,
        /// the latest version's files stay.
        #[arg(short = 'f', long = "file")]
        files: Vec<PathBuf>,
        /// Which agents it is for, e.g. 'env=prod,region in (eu,us),!canary' ('' for all).
        /// Left out, it stays as it is.
        #[arg(long)]
        selector: Option<String>,
        /// Wins over lower priorities when several configurations match an agent. Left out,
        /// it stays as it is.
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
        /// Apply without asking, even when agents would move.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// All configurations.
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// One configuration: selector, priority, versions, rollout and agents.
    #[command(alias = "describe")]
    Show {
        /// The configuration's name
        name: String,
        /// Show this version's files instead.
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// A configuration's versions.
    Versions {
        /// The configuration's name
        name: String,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// What changed between two versions, as a unified diff.
    Diff {
        /// The configuration's name
        name: String,
        /// The older version
        from: u32,
        /// The newer version
        to: u32,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a configuration with its versions and rollouts.
    ///
    /// Refused while agents are assigned to it or a rollout of it is unfinished, unless
    /// --force.
    Delete {
        /// The configuration's name
        name: String,
        /// Delete even with agents assigned or a rollout unfinished
        #[arg(long)]
        force: bool,
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
        /// Agents in the first wave
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_INITIAL)]
        initial: u32,
        /// Each wave is this many times the one before
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_MULTIPLIER)]
        multiplier: u32,
        /// Most agents in one wave
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_MAXIMUM)]
        maximum: u32,
        /// Errors (failed or timed out) it tolerates before it stops
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_MAX_ERRORS)]
        max_errors: u32,
        /// Return agents that took the version to the previous one when the rollout fails
        #[arg(long)]
        rollback: bool,
        /// Seconds an agent has to apply it before it counts as an error
        #[arg(long, default_value_t = crate::core::rollout::DEFAULT_WAVE_TIMEOUT_SECS)]
        wave_timeout: u64,
        #[command(flatten)]
        server: ServerArg,
    },
    /// A rollout's progress, waves, skipped agents and errors; with --watch, live until it
    /// ends.
    #[command(alias = "describe")]
    Status {
        /// The rollout's id
        id: String,
        /// Follow it live until it ends
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Hold the next wave; agents already sent the version keep counting.
    Pause {
        /// The rollout's id
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Resume a paused rollout, or one stopped by errors: that one goes on with one agent (a
    /// canary) and allows one more error.
    Resume {
        /// The rollout's id
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Stop a rollout for good: no agent it has not reached gets its version.
    Cancel {
        /// The rollout's id
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// All rollouts, newest first.
    List {
        #[command(flatten)]
        output: OutputArg,
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

pub async fn config(cmd: ConfigCommand, client: reqwest::Client) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Apply {
            name,
            files,
            selector,
            priority,
            dry_run,
            yes,
            server,
        } => {
            let body = ConfigurationPutDto {
                selector,
                priority,
                files: read_files(&files)?,
            };
            let url = server.at(&["api", "v1", "configurations", &name])?;
            let preview: ConfigurationPutResultDto =
                get_json(client.put(&url).query(&[("dry_run", "true")]).json(&body)).await?;
            if preview.changed.is_empty() {
                out!(
                    "{} unchanged at version {} ({})",
                    preview.name,
                    preview.version,
                    preview.hash
                );
                return Ok(());
            }
            print_change(&preview)?;
            if dry_run {
                out!("dry run: nothing stored");
                return Ok(());
            }
            let moved = moved_away(&preview);
            if moved > 0
                && !yes
                && !super::packages::confirm(&format!(
                    "{moved} agents move away from the configuration they have. Apply?"
                ))?
            {
                anyhow::bail!("nothing changed");
            }
            let confirmed = [("expected_reassigned", preview.reassigned_count)];
            let done: ConfigurationPutResultDto =
                get_json(client.put(url).query(&confirmed).json(&body)).await?;
            out!("{}", applied(&done));
        }
        ConfigCommand::List { output, server } => {
            let list: ConfigurationsDto =
                get_json(client.get(server.url("/api/v1/configurations"))).await?;
            if structured(output.output, &serde_json::to_value(&list)?)? {
                return Ok(());
            }
            let mut table = table([
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
            out!("{table}");
        }
        ConfigCommand::Show {
            name,
            version: Some(n),
            output,
            server,
        } => {
            let url = server.at(&[
                "api",
                "v1",
                "configurations",
                &name,
                "versions",
                &n.to_string(),
            ])?;
            let v: VersionDto = get_json(client.get(url)).await?;
            if structured(output.output, &serde_json::to_value(&v)?)? {
                return Ok(());
            }
            out!(
                "{} v{} ({}), created {}",
                v.name,
                v.version,
                v.hash,
                v.created_at
            );
            out!("components: {}", v.components.join(", "));
            for (file, f) in v.files.unwrap_or_default() {
                out!("--- {file} ({})", f.content_type);
                write_bytes(f.body.as_bytes())?;
                if !f.body.ends_with('\n') {
                    out!("");
                }
            }
        }
        ConfigCommand::Show {
            name,
            version: None,
            output,
            server,
        } => {
            let c: ConfigurationDto =
                get_json(client.get(server.at(&["api", "v1", "configurations", &name])?)).await?;
            if structured(output.output, &serde_json::to_value(&c)?)? {
                return Ok(());
            }
            print_configuration(&c)?;
        }
        ConfigCommand::Versions {
            name,
            output,
            server,
        } => {
            let url = server.at(&["api", "v1", "configurations", &name, "versions"])?;
            let list: VersionsDto = get_json(client.get(url)).await?;
            if structured(output.output, &serde_json::to_value(&list)?)? {
                return Ok(());
            }
            let mut table = table(["VERSION", "CREATED", "HASH", "COMPONENTS"]);
            for v in list.versions {
                table.add_row([
                    v.version.to_string(),
                    v.created_at,
                    v.hash.chars().take(12).collect(),
                    v.components.len().to_string(),
                ]);
            }
            out!("{table}");
        }
        ConfigCommand::Diff {
            name,
            from,
            to,
            server,
        } => {
            let url = server.at(&["api", "v1", "configurations", &name, "diff"])?;
            let query = [("from", from), ("to", to)];
            let d: ConfigDiffDto = get_json(client.get(url).query(&query)).await?;
            if d.diff.is_empty() {
                out!("{name} v{from} and v{to} have the same files");
            } else {
                write_bytes(d.diff.as_bytes())?;
            }
        }
        ConfigCommand::Delete {
            name,
            force,
            server,
        } => {
            let mut url = server.at(&["api", "v1", "configurations", &name])?;
            if force {
                url.push_str("?force=true");
            }
            super::send(client.delete(url)).await?;
            out!("configuration {name} deleted");
        }
    }
    Ok(())
}

/// The files given with -f, keyed by file name; none given: `None` (the latest stay).
fn read_files(paths: &[PathBuf]) -> anyhow::Result<Option<BTreeMap<String, FileDto>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut files = BTreeMap::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let key = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = FileDto {
            body: text,
            content_type: content_type(path).to_string(),
        };
        if files.insert(key.clone(), file).is_some() {
            anyhow::bail!("two files named {key}: each -f file name is a key");
        }
    }
    Ok(Some(files))
}

/// What a change would do: the diff, selector, priority and the agents it moves.
fn print_change(c: &ConfigurationPutResultDto) -> anyhow::Result<()> {
    match c.previous_version {
        None if c.previous_selector.is_none() => {
            out!("{}: new configuration, version {}", c.name, c.version)
        }
        _ => out!("{}: changes {}", c.name, c.changed.join(", ")),
    }
    if c.previous_selector.as_ref() != Some(&c.selector) {
        out!(
            "  selector: {} -> {}",
            shown(c.previous_selector.as_deref()),
            shown(Some(&c.selector))
        );
    }
    if c.previous_priority != Some(c.priority) {
        match c.previous_priority {
            Some(p) => out!("  priority: {p} -> {}", c.priority),
            None => out!("  priority: {}", c.priority),
        }
    }
    if !c.diff.is_empty() {
        write_bytes(c.diff.as_bytes())?;
    }
    if c.reassigned_count == 0 {
        out!("no agent moves to another configuration");
        return Ok(());
    }
    out!("{} agents change configuration:", c.reassigned_count);
    for m in &c.reassigned {
        out!(
            "  {} from {} to {}: {}{}",
            m.count,
            m.from.as_deref().unwrap_or("(none)"),
            m.to.as_deref().unwrap_or("(none)"),
            m.sample.join(", "),
            if m.count > m.sample.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    out!(
        "agents that run another configuration are sent nothing until a rollout of their new one reaches them"
    );
    Ok(())
}

/// How many agents a change takes from the configuration they have (those it only gives a
/// configuration, or takes one from, are not asked about).
fn moved_away(c: &ConfigurationPutResultDto) -> usize {
    c.reassigned
        .iter()
        .filter(|m| m.from.is_some() && m.to.is_some())
        .map(|m| m.count)
        .sum()
}

/// A selector as an admin reads it: the empty one matches every agent.
fn shown(selector: Option<&str>) -> String {
    match selector {
        None => "(none)".into(),
        Some("") => "'' (every agent)".into(),
        Some(s) => format!("'{s}'"),
    }
}

/// One line on what an applied change did.
fn applied(c: &ConfigurationPutResultDto) -> String {
    let content = if c.created {
        format!("version {} created", c.version)
    } else {
        format!("version {} kept", c.version)
    };
    let others: Vec<&str> = c
        .changed
        .iter()
        .map(String::as_str)
        .filter(|&w| w != "content")
        .collect();
    if others.is_empty() {
        format!("{}: {content} ({})", c.name, c.hash)
    } else {
        format!(
            "{}: {content}, {} changed ({})",
            c.name,
            others.join(" and "),
            c.hash
        )
    }
}

fn print_configuration(c: &ConfigurationDto) -> anyhow::Result<()> {
    out!("name:      {}", c.name);
    out!("selector:  {}", shown(Some(&c.selector)));
    out!("priority:  {}", c.priority);
    out!(
        "latest:    {}",
        c.latest_version
            .map(|v| format!("v{v}"))
            .unwrap_or_else(|| "none".into())
    );
    match &c.rollout {
        Some(r) => out!("rollout:   {} v{} {}", r.id, r.version, r.state),
        None => out!("rollout:   none yet (agents are left alone until one starts)"),
    }
    out!("agents:    {}", c.agent_count);
    for uid in c.agents.iter().flatten().take(20) {
        out!("  {uid}");
    }
    if c.agent_count > 20 {
        out!("  ... ({} more)", c.agent_count - 20);
    }
    let versions = c.versions.as_deref().unwrap_or_default();
    out!("versions:  {}", versions.len());
    for v in versions.iter().rev().take(10) {
        out!(
            "  v{}  {}  {}",
            v.version,
            v.created_at,
            &v.hash[..v.hash.len().min(12)]
        );
    }
    Ok(())
}

pub async fn rollout(cmd: RolloutCommand, client: reqwest::Client) -> anyhow::Result<()> {
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
            let params = crate::core::rollout::Params {
                initial,
                multiplier,
                maximum,
                max_errors,
                wave_timeout_ms: wave_timeout.saturating_mul(1000),
            };
            // The API's field names become the flags typed.
            params.validate().map_err(|m| {
                let named: Vec<String> = m
                    .split(' ')
                    .map(|word| match word {
                        "initial" | "multiplier" | "maximum" => format!("--{word}"),
                        "wave_timeout_seconds" => "--wave-timeout".to_string(),
                        other => other.to_string(),
                    })
                    .collect();
                anyhow::anyhow!("{}", named.join(" "))
            })?;
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
            out!("rollout {} of {} started", r.id, target(&r));
            out!("{}", r.summary);
            if r.eligible == 0 {
                super::output::note(&format!(
                    "warning: no agent is eligible; rollout {} reaches nobody (see `corral rollout status {}`)",
                    r.id, r.id
                ));
            }
        }
        RolloutCommand::Status {
            id,
            watch,
            output,
            server,
        } => {
            let url = server.at(&["api", "v1", "rollouts", &id])?;
            if watch {
                watch_rollout(&client, &url).await?;
            } else {
                let r: RolloutDto = get_json(client.get(&url)).await?;
                if !structured(output.output, &serde_json::to_value(&r)?)? {
                    print_rollout(&r)?;
                }
            }
        }
        RolloutCommand::Pause { id, server } => act(&client, &server, &id, "pause").await?,
        RolloutCommand::Resume { id, server } => act(&client, &server, &id, "resume").await?,
        RolloutCommand::Cancel { id, server } => act(&client, &server, &id, "cancel").await?,
        RolloutCommand::List { output, server } => {
            let list: RolloutsDto = get_json(client.get(server.url("/api/v1/rollouts"))).await?;
            if structured(output.output, &serde_json::to_value(&list)?)? {
                return Ok(());
            }
            let mut table = table([
                "ID", "TARGET", "VERSION", "STATE", "WAVE", "DONE", "ERRORS", "UPDATED",
            ]);
            keep_whole(&mut table, &[0]);
            for r in list.rollouts {
                let (what, version) = match (&r.configuration, r.version, &r.package) {
                    (Some(c), Some(v), _) => (c.clone(), format!("v{v}")),
                    (_, _, Some(p)) => (format!("package {:?}", p.name), p.version.clone()),
                    _ => Default::default(),
                };
                table.add_row([
                    r.id.clone(),
                    what,
                    version,
                    r.state,
                    r.wave.to_string(),
                    format!("{}/{}", r.counts.completed, r.counts.total),
                    r.counts.errors.to_string(),
                    r.updated_at,
                ]);
            }
            out!("{table}");
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
    let url = server.at(&["api", "v1", "rollouts", id, action])?;
    let r: RolloutDto = get_json(client.post(url)).await?;
    out!("rollout {} is {}", r.id, r.state);
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
            print_rollout(&r)?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The rollout, whom it reaches, a table of its waves, and the agents in error.
fn print_rollout(r: &RolloutDto) -> anyhow::Result<()> {
    out!("{}  {}", r.id, summary(r));
    out!("{}", r.summary);
    out!(
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
    if r.counts.left_out > 0 {
        out!(
            "{} agents were sent it or waiting when it ended: it will not reach them",
            r.counts.left_out
        );
    }
    if !r.wave_sizes.is_empty() {
        let mut table = table(["WAVE", "SIZE", "STATE"]);
        for (k, size) in r.wave_sizes.iter().enumerate() {
            let wave = k as u32 + 1;
            let state = if wave > r.wave {
                "next"
            } else if wave == r.wave && r.counts.configuring > 0 {
                "running"
            } else {
                "done"
            };
            table.add_row([wave.to_string(), size.to_string(), state.to_string()]);
        }
        out!("{table}");
    }
    if !r.skipped.is_empty() {
        out!("skipped:");
        for s in &r.skipped {
            out!("  {}  {}", s.instance_uid, s.reason);
        }
    }
    if !r.errors.is_empty() {
        out!("errors:");
        for e in &r.errors {
            out!("  {}  {}: {}", e.instance_uid, e.phase, e.message);
        }
    }
    Ok(())
}
