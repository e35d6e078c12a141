//! `corral agents approve|manage|unmanage|ignore|maintenance|resume|register|delete|disconnect`
//! by uid or by `--selector` (a bulk action shows how many agents it takes and asks first),
//! and the ignore rules.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::output::out;
use super::{ServerArg, get_json, send};
use crate::edge::api::dto::{AgentDetailDto, BulkResultDto, IgnoreRuleDto, IgnoreRulesDto};

/// Which agents a command acts on: one by uid, or every match of a selector.
#[derive(Debug, clap::Args)]
pub struct Targets {
    /// The agent's instance uid
    uid: Option<String>,
    /// Every agent matching this selector, e.g. 'env=staging' (asks first; agents in
    /// maintenance are left out)
    #[arg(long, conflicts_with = "uid")]
    selector: Option<String>,
    /// Do not ask before a bulk action
    #[arg(long, short = 'y')]
    yes: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Subcommand)]
pub enum LifecycleCommand {
    /// Admit discovered agents: they become managed.
    Approve(Targets),
    /// Manage agents: rollouts, upgrades and commands reach them.
    Manage(Targets),
    /// Stop managing agents: they stay registered and tracked.
    Unmanage(Targets),
    /// Ignore agents: they are answered minimally, and not rediscovered.
    Ignore(Targets),
    /// Put agents in maintenance: no rollout, upgrade, restart or bulk action reaches them.
    Maintenance(Targets),
    /// Take agents out of maintenance, back to the state they came from.
    Resume(Targets),
    /// Register agents; an unknown uid, or --attr, pre-registers an agent not connected yet.
    Register {
        #[command(flatten)]
        targets: Targets,
        /// Expect an agent by an identifying attribute it will report (key=value; repeat)
        #[arg(long = "attr", conflicts_with_all = ["uid", "selector"])]
        attributes: Vec<String>,
        /// Labels for a pre-registered agent (key=value; repeat)
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Delete agents and everything Corral keeps of them.
    Delete(Targets),
    /// Close agents' connections so that they connect again.
    Disconnect(Targets),
    /// Send agents the Restart command (managed agents that accept it).
    Restart(Targets),
    /// Rules that ignore agents on first contact.
    #[command(subcommand)]
    IgnoreRule(IgnoreRuleCommand),
}

#[derive(Debug, Subcommand)]
pub enum IgnoreRuleCommand {
    /// Ignore agents whose reported attributes match a selector when they first speak.
    Add {
        /// The selector, e.g. 'service.name=scratch'
        selector: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// The ignore rules: id, when added, selector.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete an ignore rule (agents it ignored stay ignored).
    Delete {
        /// The rule's id, as `ignore-rule list` shows it
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

fn pairs(given: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    given
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{what} {p:?} must be key=value"))
        })
        .collect()
}

pub async fn run(cmd: LifecycleCommand, client: reqwest::Client) -> anyhow::Result<()> {
    match cmd {
        LifecycleCommand::Approve(t) | LifecycleCommand::Manage(t) => {
            move_agents(&client, t, "managed").await
        }
        LifecycleCommand::Unmanage(t) => move_agents(&client, t, "registered").await,
        LifecycleCommand::Ignore(t) => move_agents(&client, t, "ignored").await,
        LifecycleCommand::Maintenance(t) => move_agents(&client, t, "maintenance").await,
        LifecycleCommand::Resume(t) => resume(&client, t).await,
        LifecycleCommand::Register {
            targets,
            attributes,
            labels,
        } => register(&client, targets, &attributes, &labels).await,
        LifecycleCommand::Delete(t) => match (&t.uid, &t.selector) {
            (Some(uid), None) => {
                send(client.delete(t.server.at(&["api", "v1", "agents", uid])?)).await?;
                out!("{uid} deleted");
                Ok(())
            }
            _ => bulk(&client, &t, "/api/v1/agents/delete", json!({}), "delete").await,
        },
        LifecycleCommand::Disconnect(t) => match (&t.uid, &t.selector) {
            (Some(uid), None) => {
                let url = t.server.at(&["api", "v1", "agents", uid, "disconnect"])?;
                get_json::<AgentDetailDto>(client.post(url)).await?;
                out!("{uid} disconnected");
                Ok(())
            }
            _ => {
                let path = "/api/v1/agents/disconnect";
                bulk(&client, &t, path, json!({}), "disconnect").await
            }
        },
        LifecycleCommand::Restart(t) => match (&t.uid, &t.selector) {
            (Some(uid), None) => {
                let url = t.server.at(&["api", "v1", "agents", uid, "restart"])?;
                get_json::<AgentDetailDto>(client.post(url)).await?;
                out!("{uid}: restart sent");
                Ok(())
            }
            _ => bulk(&client, &t, "/api/v1/agents/restart", json!({}), "restart").await,
        },
        LifecycleCommand::IgnoreRule(cmd) => ignore_rule(&client, cmd).await,
    }
}

async fn move_agents(client: &reqwest::Client, t: Targets, state: &str) -> anyhow::Result<()> {
    match (&t.uid, &t.selector) {
        (Some(uid), None) => {
            let url = t.server.at(&["api", "v1", "agents", uid, "admin-state"])?;
            let agent: AgentDetailDto =
                get_json(client.post(url).json(&json!({ "state": state }))).await?;
            out!("{uid} is {}", agent.agent.admin_state);
            Ok(())
        }
        _ => {
            let what = format!("move to {state}");
            let extra = json!({ "state": state });
            bulk(client, &t, "/api/v1/agents/admin-state", extra, &what).await
        }
    }
}

/// Maintenance returns each agent to the state it came from: over a selector, those that
/// came from managed, then those that came from registered.
async fn resume(client: &reqwest::Client, t: Targets) -> anyhow::Result<()> {
    match (&t.uid, &t.selector) {
        (Some(uid), None) => {
            let url = t.server.at(&["api", "v1", "agents", uid])?;
            let agent: AgentDetailDto = get_json(client.get(&url)).await?;
            let Some(back) = agent.agent.resumes_to else {
                anyhow::bail!("{uid} is {}, not in maintenance", agent.agent.admin_state);
            };
            move_agents(client, t, &back).await
        }
        _ => {
            for state in ["managed", "registered"] {
                let extra = json!({ "state": state, "admin_state": "maintenance" });
                let what = format!("resume to {state}");
                bulk(client, &t, "/api/v1/agents/admin-state", extra, &what).await?;
            }
            Ok(())
        }
    }
}

async fn register(
    client: &reqwest::Client,
    t: Targets,
    attributes: &[String],
    labels: &[String],
) -> anyhow::Result<()> {
    let labels = pairs(labels, "--label")?;
    if !attributes.is_empty() {
        let body = json!({
            "identifying_attributes": pairs(attributes, "--attr")?,
            "labels": labels,
        });
        let expected: Value =
            get_json(client.post(t.server.url("/api/v1/agents")).json(&body)).await?;
        out!(
            "expecting an agent with {}: id {}",
            expected["identifying_attributes"],
            expected["id"]
        );
        return Ok(());
    }
    if let (Some(uid), None) = (&t.uid, &t.selector) {
        let url = t.server.at(&["api", "v1", "agents", uid])?;
        let known = client.get(url).send().await.map_err(super::unreachable)?;
        if known.status() == reqwest::StatusCode::NOT_FOUND {
            let body = json!({ "instance_uid": uid, "labels": labels });
            let agent: AgentDetailDto =
                get_json(client.post(t.server.url("/api/v1/agents")).json(&body)).await?;
            out!(
                "{uid} pre-registered: {} until it connects",
                agent.agent.admin_state
            );
            return Ok(());
        }
    }
    move_agents(client, t, "registered").await
}

/// A bulk action over a selector: asks the server what it would take, asks the admin, then
/// has it done on exactly that many agents (the server refuses if the count changed).
async fn bulk(
    client: &reqwest::Client,
    t: &Targets,
    path: &str,
    extra: Value,
    what: &str,
) -> anyhow::Result<()> {
    let Some(selector) = &t.selector else {
        anyhow::bail!("give an agent uid or --selector");
    };
    crate::core::config::Selector::parse(selector)
        .map_err(|e| anyhow::anyhow!("--selector {selector:?}: {e}"))?;
    let mut request = extra;
    request["selector"] = json!(selector);
    request["dry_run"] = json!(true);
    let url = t.server.url(path);
    let preview: BulkResultDto = get_json(client.post(&url).json(&request)).await?;
    for (reason, n) in &preview.excluded {
        out!("{n} matching agents left out: {reason}");
    }
    if preview.matched == 0 {
        out!("no agent to {what} matches {selector:?}");
        return Ok(());
    }
    let more = preview.matched.saturating_sub(preview.sample.len());
    out!(
        "{} agents: {}{}",
        preview.matched,
        preview.sample.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
    if !t.yes
        && !super::packages::confirm(&format!(
            "{what}: {} agents matching {selector:?}?",
            preview.matched
        ))?
    {
        out!("nothing done");
        return Ok(());
    }
    request["dry_run"] = json!(false);
    request["expected_count"] = json!(preview.matched);
    let done: BulkResultDto = get_json(client.post(&url).json(&request)).await?;
    out!("{what}: done for {} of {} agents", done.done, done.matched);
    for (uid, why) in &done.failed {
        super::output::note(&format!("{uid}: {why}"));
    }
    if !done.failed.is_empty() {
        anyhow::bail!("{} agents failed", done.failed.len());
    }
    Ok(())
}

async fn ignore_rule(client: &reqwest::Client, cmd: IgnoreRuleCommand) -> anyhow::Result<()> {
    match cmd {
        IgnoreRuleCommand::Add { selector, server } => {
            let body = json!({ "selector": selector });
            let rule: IgnoreRuleDto =
                get_json(client.post(server.url("/api/v1/ignore-rules")).json(&body)).await?;
            out!("ignore rule {}: {}", rule.id, rule.selector);
        }
        IgnoreRuleCommand::List { server } => {
            let rules: IgnoreRulesDto =
                get_json(client.get(server.url("/api/v1/ignore-rules"))).await?;
            for rule in rules.rules {
                out!("{}  {}  {}", rule.id, rule.created_at, rule.selector);
            }
        }
        IgnoreRuleCommand::Delete { id, server } => {
            send(client.delete(server.at(&["api", "v1", "ignore-rules", &id])?)).await?;
            out!("ignore rule {id} deleted");
        }
    }
    Ok(())
}
