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
        /// discovered, registered, managed, ignored, maintenance or not_found
        #[arg(long)]
        admin_state: Option<String>,
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
    /// Send an agent the configuration it reported failed once more.
    RetryConfig {
        uid: String,
        #[command(flatten)]
        server: ServerArg,
    },
    #[command(flatten)]
    Lifecycle(super::lifecycle::LifecycleCommand),
}

pub async fn run(cmd: AgentsCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match cmd {
        AgentsCommand::List {
            status,
            labels,
            admin_state,
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
                if let Some(s) = &admin_state {
                    query.push(("admin_state", s.clone()));
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
                "ADMIN",
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
                    a.admin_state.clone(),
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
        AgentsCommand::Lifecycle(cmd) => return super::lifecycle::run(cmd).await,
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
