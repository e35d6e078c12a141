//! `corral agents list|describe|label|retry-config`, and the lifecycle commands.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Subcommand;
use clap::builder::PossibleValuesParser;
use serde_json::{Value, json};

use super::output::{Format, OutputArg, out};
use super::{ServerArg, get_json};
use crate::core::lifecycle::STATE_NAMES;
use crate::core::status::Status;
use crate::edge::api::dto::{AgentDetailDto, AgentDto, AgentListDto, HealthDto};

/// History entries `describe` shows, newest last.
const RECENT_HISTORY: usize = 10;

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// A table of agents, filtered by status, admin state, labels or a selector.
    List {
        /// Only agents with this runtime status
        #[arg(long, value_parser = PossibleValuesParser::new(Status::ALL.map(Status::as_str)))]
        status: Option<String>,
        /// Only agents with this label or reported attribute (key=value; repeat to require several)
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only agents in this admin state
        #[arg(long, value_parser = PossibleValuesParser::new(STATE_NAMES))]
        admin_state: Option<String>,
        /// Only agents matching this selector, e.g. 'env=prod,os.type!=windows'
        #[arg(long)]
        selector: Option<String>,
        /// Most agents to show (pages of the API are fetched up to this)
        #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
        limit: usize,
        /// Order of the rows (of the agents fetched)
        #[arg(long, value_enum, default_value_t = SortBy::Uid)]
        sort: SortBy,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// One agent: status and why, admin state, labels, health, configuration, recent history.
    Describe {
        /// The agent's instance uid
        uid: String,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// One agent as the API's JSON, with its status history (`describe -o json`; scripts
    /// written for it keep working).
    Show {
        /// The agent's instance uid
        uid: String,
        /// Output format
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Json)]
        output: Format,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Set (key=value) and remove (key-) an agent's admin labels; the others stay.
    Label {
        /// The agent's instance uid
        uid: String,
        /// key=value to set a label, key- to remove one
        #[arg(required = true)]
        changes: Vec<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Send an agent the configuration it reported failed once more.
    RetryConfig {
        /// The agent's instance uid
        uid: String,
        #[command(flatten)]
        server: ServerArg,
    },
    #[command(flatten)]
    Lifecycle(super::lifecycle::LifecycleCommand),
}

/// How `agents list` orders its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// By instance uid (the API's order)
    Uid,
    /// By service.name, then host.name
    Name,
    /// By runtime status
    Status,
    /// By admin state
    AdminState,
    /// Most recently seen first
    LastSeen,
}

pub async fn run(cmd: AgentsCommand, client: reqwest::Client) -> anyhow::Result<()> {
    match cmd {
        AgentsCommand::List {
            status,
            labels,
            admin_state,
            selector,
            limit,
            sort,
            output,
            server,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(s) = status {
                query.push(("status", s));
            }
            if let Some(s) = admin_state {
                query.push(("admin_state", s));
            }
            for l in labels {
                if !l.contains('=') {
                    anyhow::bail!("--label {l:?} must be key=value");
                }
                query.push(("label", l));
            }
            if let Some(s) = selector {
                crate::core::config::Selector::parse(&s)
                    .map_err(|e| anyhow::anyhow!("--selector {s:?}: {e}"))?;
                query.push(("selector", s));
            }
            let (mut agents, total) = list(&client, &server, query, limit).await?;
            sort_agents(&mut agents, sort);
            let shown = agents.len();
            if output.output == Format::Json || output.output == Format::Yaml {
                let all = json!({ "agents": agents, "total": total });
                super::output::structured(output.output, &all)?;
                return Ok(());
            }
            let table = agents_table(&agents, output.output == Format::Wide);
            out!("{table}");
            out!("{shown} of {total} agents");
        }
        AgentsCommand::Describe {
            uid,
            output,
            server,
        } => show(&client, &server, &uid, output.output).await?,
        AgentsCommand::Show {
            uid,
            output,
            server,
        } => show(&client, &server, &uid, output).await?,
        AgentsCommand::Label {
            uid,
            changes,
            server,
        } => label(&client, &server, &uid, &changes).await?,
        AgentsCommand::Lifecycle(cmd) => return super::lifecycle::run(cmd, client).await,
        AgentsCommand::RetryConfig { uid, server } => {
            let url = server.at(&["api", "v1", "agents", &uid, "retry-config"])?;
            let agent: AgentDetailDto = get_json(client.post(&url)).await?;
            out!(
                "{} will be sent its configuration again",
                agent.agent.instance_uid
            );
        }
    }
    Ok(())
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number, at least 1".into()),
    }
}

/// One agent: the readable view, or the API's object as JSON or YAML.
async fn show(
    client: &reqwest::Client,
    server: &ServerArg,
    uid: &str,
    format: Format,
) -> anyhow::Result<()> {
    let raw: Value = get_json(client.get(server.at(&["api", "v1", "agents", uid])?)).await?;
    if super::output::structured(format, &raw)? {
        return Ok(());
    }
    let agent: AgentDetailDto =
        serde_json::from_value(raw).context("unexpected agent from the Corral API")?;
    describe(&agent)
}

/// Up to `limit` agents, a page at a time, and how many match in all.
async fn list(
    client: &reqwest::Client,
    server: &ServerArg,
    query: Vec<(&str, String)>,
    limit: usize,
) -> anyhow::Result<(Vec<AgentDto>, usize)> {
    let url = server.url("/api/v1/agents");
    let mut agents = Vec::new();
    let mut total = 0;
    let mut cursor: Option<String> = None;
    while agents.len() < limit {
        let page_size = (limit - agents.len()).min(crate::edge::api::MAX_PAGE);
        let mut page_query = query.clone();
        page_query.push(("limit", page_size.to_string()));
        if let Some(c) = &cursor {
            page_query.push(("cursor", c.clone()));
        }
        let page: AgentListDto = get_json(client.get(&url).query(&page_query)).await?;
        total = page.total;
        agents.extend(page.agents);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok((agents, total))
}

fn attr(a: &AgentDto, key: &str) -> String {
    a.identifying_attributes
        .get(key)
        .or_else(|| a.non_identifying_attributes.get(key))
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .unwrap_or_default()
}

fn sort_agents(agents: &mut [AgentDto], by: SortBy) {
    match by {
        SortBy::Uid => agents.sort_by(|a, b| a.instance_uid.cmp(&b.instance_uid)),
        SortBy::Name => agents.sort_by_cached_key(|a| {
            (
                attr(a, "service.name"),
                attr(a, "host.name"),
                a.instance_uid.clone(),
            )
        }),
        SortBy::Status => {
            agents.sort_by(|a, b| (&a.status, &a.instance_uid).cmp(&(&b.status, &b.instance_uid)))
        }
        SortBy::AdminState => agents.sort_by(|a, b| {
            (&a.admin_state, &a.instance_uid).cmp(&(&b.admin_state, &b.instance_uid))
        }),
        // RFC 3339 in UTC with a fixed precision: the text sorts as the time does.
        SortBy::LastSeen => agents.sort_by(|a, b| b.last_seen.cmp(&a.last_seen)),
    }
}

fn agents_table(agents: &[AgentDto], wide: bool) -> comfy_table::Table {
    let mut header = vec![
        "INSTANCE UID",
        "SERVICE",
        "HOST",
        "STATUS",
        "ADMIN",
        "LAST SEEN",
        "REASON",
    ];
    if wide {
        header.extend(["VERSION", "TRANSPORT", "CONFIGURATION", "LABELS"]);
    }
    let mut table = super::output::table(header);
    let now = chrono::Utc::now();
    for a in agents {
        let mut row = vec![
            a.instance_uid.clone(),
            attr(a, "service.name"),
            attr(a, "host.name"),
            a.status.clone(),
            a.admin_state.clone(),
            ago(&a.last_seen, now),
            a.status_reason.clone(),
        ];
        if wide {
            row.extend([
                attr(a, "service.version"),
                a.transport.clone().unwrap_or_default(),
                a.configuration
                    .as_ref()
                    .map(config_summary)
                    .unwrap_or_default(),
                pairs(&a.labels),
            ]);
        }
        table.add_row(row);
    }
    // An id cut over lines cannot be copied; status, admin state and last seen are short
    // words that read badly cut (the wide table has too many columns to keep them all whole).
    let whole: &[usize] = if wide { &[0] } else { &[0, 3, 4, 5] };
    super::output::keep_whole(&mut table, whole);
    table
}

/// `5s ago`, `3m ago`, ...; the time as given when it does not parse.
fn ago(at: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let Ok(then) = chrono::DateTime::parse_from_rfc3339(at) else {
        return at.to_string();
    };
    let secs = (now - then.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn pairs(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn config_summary(c: &crate::edge::api::dto::AgentConfigDto) -> String {
    let mut text = c.name.clone();
    if let Some(v) = c.current_version {
        text.push_str(&format!(" v{v}"));
    }
    if let Some(v) = c.pending_version {
        text.push_str(&format!(", v{v} sent"));
    }
    if let Some(v) = c.target_version.filter(|v| Some(*v) != c.current_version) {
        text.push_str(&format!(", headed to v{v}"));
    }
    if c.compatibility != "compatible" {
        text.push_str(&format!(", {}", c.compatibility));
    }
    if let Some(why) = &c.incompatible_reason {
        text.push_str(&format!(": {why}"));
    }
    text
}

/// The first unhealthy place in a health tree, as the server derives it: the path of the
/// first unhealthy component with its error, else the agent's own error.
fn health_problem(h: &HealthDto) -> Option<String> {
    fn own(h: &HealthDto) -> String {
        if h.last_error.is_empty() {
            "agent reports unhealthy".to_string()
        } else {
            h.last_error.clone()
        }
    }
    fn below(h: &HealthDto) -> Option<String> {
        h.components
            .iter()
            .find_map(|(name, child)| match below(child) {
                Some(inner) => Some(format!("{name}/{inner}")),
                None if !child.healthy => Some(format!("{name}: {}", own(child))),
                None => None,
            })
    }
    below(h).or_else(|| (!h.healthy).then(|| own(h)))
}

/// The readable view of one agent.
fn describe(detail: &AgentDetailDto) -> anyhow::Result<()> {
    let a = &detail.agent;
    let now = chrono::Utc::now();
    let none = || "<none>".to_string();
    let field = |name: &str, value: String| format!("{:<18}{value}", format!("{name}:"));
    out!("{}", field("Instance UID", a.instance_uid.clone()));
    let service = [attr(a, "service.name"), attr(a, "service.version")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    out!(
        "{}",
        field("Service", if service.is_empty() { none() } else { service })
    );
    let host = attr(a, "host.name");
    if !host.is_empty() {
        out!("{}", field("Host", host));
    }
    let status = if a.status_reason.is_empty() {
        a.status.clone()
    } else {
        format!("{} ({})", a.status, a.status_reason)
    };
    out!("{}", field("Status", status));
    let mut admin = a.admin_state.clone();
    if let Some(back) = &a.resumes_to {
        admin.push_str(&format!(" (resumes to {back})"));
    }
    if a.pre_registered {
        admin.push_str(", pre-registered");
    }
    out!("{}", field("Admin state", admin));
    let link = match (&a.transport, &a.connected_at) {
        (Some(t), Some(at)) => format!("{t}, since {at} ({})", ago(at, now)),
        (Some(t), None) => t.clone(),
        _ => "not connected".to_string(),
    };
    out!("{}", field("Connection", link));
    out!(
        "{}",
        field(
            "Last seen",
            format!("{} ({})", a.last_seen, ago(&a.last_seen, now))
        )
    );
    let labels = if a.labels.is_empty() {
        none()
    } else {
        pairs(&a.labels)
    };
    out!("{}", field("Labels", labels));
    let health = match &a.health {
        None => "not reported".to_string(),
        Some(h) => match health_problem(h) {
            None => format!("healthy ({})", h.status),
            Some(problem) => format!("unhealthy: {problem}"),
        },
    };
    out!("{}", field("Health", health));
    out!(
        "{}",
        field(
            "Configuration",
            a.configuration
                .as_ref()
                .map(config_summary)
                .unwrap_or_else(none)
        )
    );
    if let Some(rc) = &a.remote_config {
        let mut text = rc.status.clone();
        if !rc.error.is_empty() {
            text.push_str(&format!(": {}", rc.error));
        }
        if !rc.hash.is_empty() {
            text.push_str(&format!(" (hash {})", short(&rc.hash)));
        }
        out!("{}", field("Remote config", text));
    }
    if let Some(hash) = &a.effective_config_hash {
        out!("{}", field("Effective config", short(hash)));
    }
    for p in &a.packages {
        let mut text = format!("{:?} {} {}", p.name, p.version, p.status);
        if !p.offered_version.is_empty() {
            text.push_str(&format!(", offered {}", p.offered_version));
        }
        if let Some(percent) = p.download_percent {
            text.push_str(&format!(" ({percent:.0}%)"));
        }
        if !p.error.is_empty() {
            text.push_str(&format!(": {}", p.error));
        }
        out!("{}", field("Package", text));
    }
    if !a.capabilities.is_empty() {
        out!("{}", field("Capabilities", a.capabilities.join(", ")));
    }
    for (title, attributes) in [
        ("Identifying attributes", &a.identifying_attributes),
        ("Non-identifying attributes", &a.non_identifying_attributes),
    ] {
        if attributes.is_empty() {
            continue;
        }
        out!("{title}:");
        for (k, v) in attributes {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            out!("  {k} = {v}");
        }
    }
    let history = &detail.history;
    if history.is_empty() {
        out!("History:          <none>");
    } else {
        let from = history.len().saturating_sub(RECENT_HISTORY);
        out!(
            "History (last {} of {}):",
            history.len() - from,
            history.len()
        );
        let mut table = super::output::table(["AT", "FROM", "TO", "REASON"]);
        for h in &history[from..] {
            table.add_row([
                h.at.clone(),
                h.from.clone().unwrap_or_default(),
                h.to.clone(),
                h.reason.clone(),
            ]);
        }
        out!("{table}");
    }
    Ok(())
}

/// The first 12 hex digits of a hash: enough to tell hashes apart at a glance.
fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// One `agents label` argument: `key=value` sets, `key-` removes.
#[derive(Debug, PartialEq, Eq)]
enum LabelChange {
    Set(String, String),
    Remove(String),
}

fn parse_change(arg: &str) -> anyhow::Result<LabelChange> {
    if let Some((k, v)) = arg.split_once('=') {
        if k.is_empty() {
            anyhow::bail!("label {arg:?} has no key");
        }
        return Ok(LabelChange::Set(k.to_string(), v.to_string()));
    }
    match arg.strip_suffix('-') {
        Some(k) if !k.is_empty() => Ok(LabelChange::Remove(k.to_string())),
        _ => anyhow::bail!("label {arg:?}: give key=value to set a label or key- to remove one"),
    }
}

/// The API replaces an agent's labels as a whole (`PUT .../labels`): this reads them, applies
/// the changes and sends the result. Two admins labelling the same agent at once: the last
/// write wins.
async fn label(
    client: &reqwest::Client,
    server: &ServerArg,
    uid: &str,
    changes: &[String],
) -> anyhow::Result<()> {
    let changes = changes
        .iter()
        .map(|c| parse_change(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let url = server.at(&["api", "v1", "agents", uid])?;
    let agent: AgentDetailDto = get_json(client.get(&url)).await?;
    let mut labels = agent.agent.labels;
    for change in changes {
        match change {
            LabelChange::Set(k, v) => {
                labels.insert(k, v);
            }
            LabelChange::Remove(k) => {
                if labels.remove(&k).is_none() {
                    super::output::note(&format!("{uid} has no label {k:?}"));
                }
            }
        }
    }
    let body = json!({ "labels": labels });
    let agent: AgentDetailDto = get_json(client.put(format!("{url}/labels")).json(&body)).await?;
    let labels = if agent.agent.labels.is_empty() {
        "no labels".to_string()
    } else {
        pairs(&agent.agent.labels)
    };
    out!("{uid}: {labels}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn label_changes_set_with_equals_and_remove_with_a_trailing_dash() {
        assert_eq!(
            parse_change("env=prod").unwrap(),
            LabelChange::Set("env".into(), "prod".into())
        );
        assert_eq!(
            parse_change("a-=b=c").unwrap(),
            LabelChange::Set("a-".into(), "b=c".into())
        );
        assert_eq!(
            parse_change("empty=").unwrap(),
            LabelChange::Set("empty".into(), String::new())
        );
        assert_eq!(
            parse_change("team-").unwrap(),
            LabelChange::Remove("team".into())
        );
        for bad in ["team", "-", "=v", ""] {
            assert!(parse_change(bad).is_err(), "{bad}");
        }
    }

    fn health(healthy: bool, error: &str, components: &[(&str, HealthDto)]) -> HealthDto {
        HealthDto {
            healthy,
            status: String::new(),
            last_error: error.into(),
            start_time_unix_nano: 0,
            status_time_unix_nano: 0,
            components: components
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            attributes: Default::default(),
        }
    }

    #[test]
    fn the_health_problem_is_the_first_unhealthy_path() {
        assert_eq!(health_problem(&health(true, "", &[])), None);
        assert_eq!(
            health_problem(&health(false, "", &[])).as_deref(),
            Some("agent reports unhealthy")
        );
        let exporter = health(false, "connection refused", &[]);
        let pipeline = health(true, "", &[("exporter:otlp", exporter)]);
        assert_eq!(
            health_problem(&health(false, "top", &[("pipeline:traces", pipeline)])).as_deref(),
            Some("pipeline:traces/exporter:otlp: connection refused")
        );
    }
}
