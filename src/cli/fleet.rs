//! `corral fleet`: how many agents there are, by runtime status and by admin state.

use serde_json::Value;

use super::output::{OutputArg, out};
use super::{ServerArg, get_json};
use crate::edge::api::dto::FleetDto;

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    #[command(flatten)]
    output: OutputArg,
    #[command(flatten)]
    server: ServerArg,
}

pub async fn run(args: FleetArgs, client: reqwest::Client) -> anyhow::Result<()> {
    let raw: Value = get_json(client.get(args.server.url("/api/v1/fleet"))).await?;
    if super::output::structured(args.output.output, &raw)? {
        return Ok(());
    }
    let fleet: FleetDto = serde_json::from_value(raw)?;
    // The API lists every name, zero or not, in the core's order.
    let statuses = crate::core::status::Status::ALL.map(|s| s.as_str());
    let admin_states = crate::core::lifecycle::STATE_NAMES;
    let mut table = super::output::table(["STATUS", "AGENTS", "ADMIN STATE", "AGENTS"]);
    for i in 0..statuses.len().max(admin_states.len()) {
        let cell = |names: &[&str], counts: &std::collections::BTreeMap<String, i64>| {
            names.get(i).map_or([String::new(), String::new()], |name| {
                let n = counts.get(*name).copied().unwrap_or_default();
                [name.to_string(), n.to_string()]
            })
        };
        let [status, n] = cell(&statuses, &fleet.by_status);
        let [admin, m] = cell(&admin_states, &fleet.by_admin_state);
        table.add_row([status, n, admin, m]);
    }
    out!("{table}");
    out!("{} agents", fleet.total);
    Ok(())
}
