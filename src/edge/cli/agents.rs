use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use super::{ServerArg, get_json};
use crate::edge::api::dto::{AgentDetailDto, AgentListDto};

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// A table of agents, filtered by status and labels.
    List {
        /// connected, error, configuring, pending, incompatible, upgrading or disconnected
        #[arg(long)]
        status: Option<String>,
        /// key=value; repeat to require several
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Most agents to show (all pages are fetched up to this)
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        server: ServerArg,
    },
    /// One agent in full, with its status history.
    Show {
        uid: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Restart one agent, or every agent matching a selector (after confirmation).
    Restart {
        uid: Option<String>,
        /// e.g. 'env=staging'; asks before restarting them
        #[arg(long, conflicts_with = "uid")]
        selector: Option<String>,
        /// Do not ask
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Send an agent the configuration it reported failed once more.
    RetryConfig {
        uid: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

pub async fn run(cmd: AgentsCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match cmd {
        AgentsCommand::List {
            status,
            labels,
            limit,
            server,
        } => {
            let mut agents = Vec::new();
            let mut total = 0;
            let mut cursor: Option<String> = None;
            while agents.len() < limit {
                let mut query: Vec<(&str, String)> = vec![(
                    "limit",
                    (limit - agents.len())
                        .min(crate::edge::api::MAX_PAGE)
                        .to_string(),
                )];
                if let Some(s) = &status {
                    query.push(("status", s.clone()));
                }
                for l in &labels {
                    query.push(("label", l.clone()));
                }
                if let Some(c) = &cursor {
                    query.push(("cursor", c.clone()));
                }
                let url = format!("{}/api/v1/agents", server.server.trim_end_matches('/'));
                let page: AgentListDto = get_json(client.get(&url).query(&query)).await?;
                total = page.total;
                agents.extend(page.agents);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED).set_header([
                "INSTANCE UID",
                "STATUS",
                "TRANSPORT",
                "SERVICE",
                "VERSION",
                "HOST",
                "LAST SEEN",
                "REASON",
            ]);
            for a in &agents {
                let attr = |k: &str| {
                    a.identifying_attributes
                        .get(k)
                        .or_else(|| a.non_identifying_attributes.get(k))
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .unwrap_or_default()
                };
                table.add_row([
                    a.instance_uid.clone(),
                    a.status.clone(),
                    a.transport.clone().unwrap_or_default(),
                    attr("service.name"),
                    attr("service.version"),
                    attr("host.name"),
                    a.last_seen.clone(),
                    a.status_reason.clone(),
                ]);
            }
            println!("{table}");
            println!("{} of {} agents", agents.len(), total);
        }
        AgentsCommand::Show { uid, server } => {
            let url = format!(
                "{}/api/v1/agents/{uid}",
                server.server.trim_end_matches('/')
            );
            let agent: AgentDetailDto = get_json(client.get(&url)).await?;
            println!("{}", serde_json::to_string_pretty(&agent)?);
        }
        AgentsCommand::Restart {
            uid,
            selector,
            yes,
            server,
        } => {
            let uids = match (uid, selector) {
                (Some(uid), None) => vec![uid],
                (None, Some(selector)) => {
                    let mut uids = Vec::new();
                    let mut cursor: Option<String> = None;
                    loop {
                        let mut query = vec![
                            ("selector", selector.clone()),
                            ("limit", crate::edge::api::MAX_PAGE.to_string()),
                        ];
                        if let Some(c) = &cursor {
                            query.push(("cursor", c.clone()));
                        }
                        let page: AgentListDto =
                            get_json(client.get(server.url("/api/v1/agents")).query(&query))
                                .await?;
                        uids.extend(
                            page.agents
                                .into_iter()
                                .filter(|a| a.status != "disconnected")
                                .map(|a| a.instance_uid),
                        );
                        match page.next_cursor {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                    }
                    if uids.is_empty() {
                        println!("no connected agent matches {selector:?}");
                        return Ok(());
                    }
                    if !yes
                        && !super::packages::confirm(&format!(
                            "restart {} agents matching {selector:?}?",
                            uids.len()
                        ))?
                    {
                        println!("nothing restarted");
                        return Ok(());
                    }
                    uids
                }
                _ => anyhow::bail!("give an agent uid or --selector"),
            };
            let mut failed = 0;
            for uid in &uids {
                let url = server.url(&format!("/api/v1/agents/{uid}/restart"));
                match get_json::<AgentDetailDto>(client.post(&url)).await {
                    Ok(_) => println!("{uid}: restart sent"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{uid}: {e}");
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} agents could not be restarted", uids.len());
            }
        }
        AgentsCommand::RetryConfig { uid, server } => {
            let url = server.url(&format!("/api/v1/agents/{uid}/retry-config"));
            let agent: AgentDetailDto = get_json(client.post(&url)).await?;
            println!(
                "{} will be sent its configuration again",
                agent.agent.instance_uid
            );
        }
    }
    Ok(())
}
