//! `corral keys create|list|revoke` (through the API, with an admin key) and
//! `corral admin create-key` (offline, against the data directory).

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::{Value, json};

use super::output::{OutputArg, out};
use super::{ServerArg, get_json, send};
use crate::core::keys::Role;
use crate::edge::api::dto::{KeyCreatedDto, KeysDto};
use crate::settings::DEFAULT_DATA_DIR;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed alone on stdout, this once.
    Create {
        /// What the key is for, e.g. the person or the job holding it
        #[arg(long)]
        name: String,
        /// What the key may do: viewer, operator or admin
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// When the key stops working, RFC 3339 (e.g. 2027-01-01T00:00:00Z) [default: never]
        #[arg(long, value_parser = parse_time)]
        expires_at: Option<DateTime<Utc>>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List keys (never the keys themselves).
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Revoke a key: it lets nobody in from then on.
    Revoke {
        /// The key's id, as `corral keys list` shows it
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an API key directly in the data directory, without the API (e.g. when no admin
    /// key is at hand); it is printed alone on stdout. Works whether or not a server is
    /// running on the directory; a running one takes the key at its first use.
    CreateKey {
        /// What the key is for, e.g. the person or the job holding it
        #[arg(long)]
        name: String,
        /// What the key may do: viewer, operator or admin
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// When the key stops working, RFC 3339 [default: never]
        #[arg(long, value_parser = parse_time)]
        expires_at: Option<DateTime<Utc>>,
        /// The server's data directory [default: ./corral-data]
        #[arg(long, env = "CORRAL_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        format!(
            "unknown role {s:?}; expected one of {}",
            Role::ALL.map(Role::as_str).join(", ")
        )
    })
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; e.g. 2027-01-01T00:00:00Z"))
}

pub async fn run(cmd: KeysCommand, client: reqwest::Client) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            name,
            role,
            expires_at,
            server,
        } => {
            let body = json!({
                "name": name,
                "role": role.as_str(),
                "expires_at": expires_at.map(crate::edge::api::dto::rfc3339),
            });
            let created: KeyCreatedDto =
                get_json(client.post(server.url("/api/v1/keys")).json(&body)).await?;
            out!("{}", created.key);
            eprintln_note(&format!(
                "key {} ({}, {}) created; it cannot be shown again",
                created.id, created.name, created.role
            ));
            Ok(())
        }
        KeysCommand::List { output, server } => {
            let raw: Value = get_json(client.get(server.url("/api/v1/keys"))).await?;
            if super::output::structured(output.output, &raw)? {
                return Ok(());
            }
            let keys: KeysDto = serde_json::from_value(raw)?;
            let mut table =
                super::output::table(["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED"]);
            for k in keys.keys {
                let never = || "-".to_string();
                table.add_row([
                    k.id,
                    k.name,
                    k.role,
                    k.created_at,
                    k.expires_at.unwrap_or_else(never),
                    k.last_used_at.unwrap_or_else(never),
                ]);
            }
            out!("{table}");
            Ok(())
        }
        KeysCommand::Revoke { id, server } => {
            send(client.delete(server.at(&["api", "v1", "keys", &id])?)).await?;
            out!("{id} revoked");
            Ok(())
        }
    }
}

pub async fn admin(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::CreateKey {
            name,
            role,
            expires_at,
            data_dir,
        } => {
            let now = Utc::now();
            crate::core::keys::check_new(&name, expires_at, now)
                .map_err(|e| anyhow::anyhow!("--name or --expires-at: {e}"))?;
            let dir = data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
            if !dir.join("corral.db").exists() {
                eprintln_note(&format!(
                    "no store in {} yet: creating one (is --data-dir the server's?)",
                    dir.display()
                ));
            }
            let (key, secret) = crate::edge::api::auth::new_key(&name, role, expires_at, now)?;
            crate::edge::store::SqliteStore::add_api_key(&dir, &key)
                .await
                .with_context(|| format!("cannot add the key to the store in {}", dir.display()))?;
            out!("{secret}");
            Ok(())
        }
    }
}

/// A note for the person at the terminal, beside what stdout carries; a closed stderr loses
/// it quietly.
fn eprintln_note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}
