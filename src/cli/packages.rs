use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::output::out;
use super::{ServerArg, get_json};
use crate::edge::api::dto::{PackageDto, PackagesDto};

#[derive(Debug, Subcommand)]
pub enum PackageCommand {
    /// Upload an agent build (stored once per content, by SHA-256).
    Upload {
        /// The build's file (an archive as the agent's supervisor installs it)
        file: PathBuf,
        /// Its version, e.g. v0.116.0; a version never changes once uploaded
        #[arg(long)]
        version: String,
        /// Package name; the collector itself is the top-level package ''
        #[arg(long, default_value = "")]
        name: String,
        /// Only for agents with this os.type (e.g. linux)
        #[arg(long, default_value = "")]
        platform: String,
        /// Only for agents with this host.arch (e.g. amd64)
        #[arg(long, default_value = "")]
        arch: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// All uploaded packages.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a package version (every platform's build) and its bytes.
    ///
    /// Refused while a rollout delivers or offers it, or an agent reports running it.
    Delete {
        /// The version to delete
        #[arg(long)]
        version: String,
        /// Package name; the collector itself is the top-level package ''
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

pub async fn run(cmd: PackageCommand, client: reqwest::Client) -> anyhow::Result<()> {
    match cmd {
        PackageCommand::Delete {
            version,
            name,
            server,
        } => {
            let request = client
                .delete(server.url("/api/v1/packages"))
                .query(&[("name", &name), ("version", &version)]);
            super::send(request).await?;
            println!("package {name:?} {version} deleted");
        }
        PackageCommand::Upload {
            file,
            version,
            name,
            platform,
            arch,
            server,
        } => {
            let body = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("cannot read {}", file.display()))?;
            let url = server.url("/api/v1/packages");
            let query = [
                ("name", name),
                ("version", version),
                ("platform", platform),
                ("arch", arch),
            ];
            let request = client
                .post(url)
                .query(&query)
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(
                    tokio_util::io::ReaderStream::new(body),
                ));
            let p: PackageDto = get_json(request).await?;
            out!(
                "uploaded {:?} {} ({} bytes, sha256 {})",
                p.name,
                p.version,
                p.size,
                p.sha256
            );
        }
        PackageCommand::List { server } => {
            let list: PackagesDto = get_json(client.get(server.url("/api/v1/packages"))).await?;
            let mut table = super::output::table([
                "NAME", "VERSION", "PLATFORM", "ARCH", "SIZE", "SHA256", "UPLOADED",
            ]);
            for p in list.packages {
                table.add_row([
                    format!("{:?}", p.name),
                    p.version,
                    p.platform,
                    p.arch,
                    p.size.to_string(),
                    p.sha256,
                    p.created_at,
                ]);
            }
            out!("{table}");
        }
    }
    Ok(())
}

/// Asks on the terminal; anything but y/yes is no.
pub fn confirm(question: &str) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{question} [y/N] ")?;
    stdout.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
