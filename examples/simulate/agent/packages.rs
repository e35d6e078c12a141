//! The agent's own package: offers of the top-level package are downloaded (in a task of
//! their own), verified, installed and followed by a restart; offers of other packages are
//! refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use corral::edge::protocol::proto::{self, PackageStatusEnum};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Agent;
use crate::context::Ctx;
use crate::download::{DownloadEvent, download};
use crate::stats::inc;

/// The collector itself: the top-level package has an empty name.
const TOP_LEVEL: &str = "";
/// Per-agent cap on remembered package hashes (installed or failed) and refused packages.
const MAX_REMEMBERED_PACKAGES: usize = 16;

/// The agent's top-level package ("", the collector itself) and what it does with offers.
pub(super) struct Packages {
    /// AcceptsPackages and ReportsPackageStatuses.
    pub(super) enabled: bool,
    /// The version it runs (service.version).
    pub(super) version: String,
    /// The package hash it was last installed from (empty: as shipped).
    hash: Bytes,
    /// What it reports for "".
    status: proto::PackageStatus,
    /// Offers of other packages, refused.
    others: BTreeMap<String, proto::PackageStatus>,
    /// all_packages_hash of the last offer.
    all_hash: Bytes,
    /// Package hashes installed before, with their versions: installed again from the local
    /// copy, never downloaded again.
    installed: HashMap<Bytes, String>,
    /// Package hashes whose download or install failed, with the error: never tried again.
    failed: HashMap<Bytes, String>,
    job: Option<PackageJob>,
}

/// The offered package being downloaded or installed.
struct PackageJob {
    hash: Bytes,
    version: String,
    phase: Phase,
}

enum Phase {
    Downloading(DownloadTask),
    /// InstallPending is reported; Installing follows once that is sent.
    Pending,
    Installing {
        at: Instant,
        /// Why installing fails (None: it succeeds).
        fail: Option<String>,
    },
}

/// A download running in its own task; dropping this aborts it.
struct DownloadTask {
    events: mpsc::UnboundedReceiver<DownloadEvent>,
    task: tokio::task::AbortHandle,
}

impl Drop for DownloadTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Packages {
    pub(super) fn new(version: &str, enabled: bool) -> Self {
        Self {
            enabled,
            version: version.to_string(),
            hash: Bytes::new(),
            status: proto::PackageStatus {
                name: TOP_LEVEL.to_string(),
                agent_has_version: version.to_string(),
                status: PackageStatusEnum::Installed.into(),
                ..Default::default()
            },
            others: BTreeMap::new(),
            all_hash: Bytes::new(),
            installed: HashMap::new(),
            failed: HashMap::new(),
            job: None,
        }
    }

    /// The status of the package it has, with nothing offered or in progress.
    fn idle_status(&self) -> proto::PackageStatus {
        proto::PackageStatus {
            name: TOP_LEVEL.to_string(),
            agent_has_version: self.version.clone(),
            agent_has_hash: self.hash.clone(),
            status: PackageStatusEnum::Installed.into(),
            ..Default::default()
        }
    }

    /// A status about an offered package.
    fn offered_status(
        &self,
        hash: &Bytes,
        version: &str,
        status: PackageStatusEnum,
    ) -> proto::PackageStatus {
        proto::PackageStatus {
            server_offered_version: version.to_string(),
            server_offered_hash: hash.clone(),
            status: status.into(),
            ..self.idle_status()
        }
    }

    pub(super) fn report(&self) -> proto::PackageStatuses {
        let mut packages = self.others.clone();
        packages.insert(TOP_LEVEL.to_string(), self.status.clone());
        proto::PackageStatuses {
            packages,
            server_provided_all_packages_hash: self.all_hash.clone(),
            error_message: String::new(),
        }
    }

    /// Drops a download or install under way; the server may offer it again.
    pub(super) fn abandon(&mut self) {
        if self.job.take().is_some() {
            self.status = self.idle_status();
        }
    }

    fn downloading(&self) -> bool {
        matches!(
            self.job,
            Some(PackageJob {
                phase: Phase::Downloading(_),
                ..
            })
        )
    }
}

/// The next event of the running download (pending forever if there is none).
async fn download_event(job: &mut Option<PackageJob>) -> DownloadEvent {
    match job {
        Some(PackageJob {
            phase: Phase::Downloading(d),
            ..
        }) => match d.events.recv().await {
            Some(e) => e,
            None => DownloadEvent::Failed("the download task ended without a result".into()),
        },
        _ => std::future::pending().await,
    }
}

/// Inserts into a per-agent map of at most MAX_REMEMBERED_PACKAGES entries, forgetting an
/// arbitrary one when full.
fn remember(map: &mut HashMap<Bytes, String>, key: Bytes, value: String) {
    if map.len() >= MAX_REMEMBERED_PACKAGES
        && !map.contains_key(&key)
        && let Some(old) = map.keys().next().cloned()
    {
        map.remove(&old);
    }
    map.insert(key, value);
}

impl Agent {
    pub(super) fn on_packages_available(&mut self, offer: proto::PackagesAvailable, ctx: &Ctx) {
        if !self.packages.enabled {
            ctx.log(
                self.index,
                "packages_available ignored: the agent did not set AcceptsPackages",
            );
            return;
        }
        if offer.all_packages_hash != self.packages.all_hash {
            self.packages.all_hash = offer.all_packages_hash;
            self.dirty.packages = true;
        }
        for (name, package) in offer.packages {
            inc(&ctx.stats.packages_offered);
            if name == TOP_LEVEL {
                self.offer_top_level(package, ctx);
                continue;
            }
            inc(&ctx.stats.install_failures);
            ctx.log(
                self.index,
                format!("package {name:?} refused: not top-level"),
            );
            if self.packages.others.len() >= MAX_REMEMBERED_PACKAGES
                && !self.packages.others.contains_key(&name)
            {
                self.packages.others.pop_first();
            }
            self.packages.others.insert(
                name.clone(),
                proto::PackageStatus {
                    name,
                    server_offered_version: package.version,
                    server_offered_hash: package.hash,
                    status: PackageStatusEnum::InstallFailed.into(),
                    error_message: "the simulated agent installs only the top-level package \"\""
                        .to_string(),
                    ..Default::default()
                },
            );
            self.dirty.packages = true;
            self.must_send = true;
        }
    }

    /// Acts on an offer of the top-level package: downloads it unless it is the one
    /// installed, the one under way, or one that failed; installs a hash installed before
    /// from the local copy.
    fn offer_top_level(&mut self, offer: proto::PackageAvailable, ctx: &Ctx) {
        let st = &ctx.stats;
        let pkg = &mut self.packages;
        let hash = offer.hash;
        let version = offer.version;
        self.dirty.packages = true;
        self.must_send = true;
        if hash == pkg.hash && !hash.is_empty() {
            inc(&st.packages_ignored);
            if pkg.job.take().is_some() || pkg.status.server_offered_hash != hash {
                pkg.status = pkg.offered_status(&hash, &version, PackageStatusEnum::Installed);
            }
            return;
        }
        if pkg.job.as_ref().is_some_and(|j| j.hash == hash) {
            inc(&st.packages_ignored);
            return;
        }
        // A different package replaces one under way.
        pkg.job = None;
        if let Some(error) = pkg.failed.get(&hash) {
            inc(&st.packages_ignored);
            pkg.status = proto::PackageStatus {
                error_message: error.clone(),
                ..pkg.offered_status(&hash, &version, PackageStatusEnum::InstallFailed)
            };
            return;
        }
        let file = offer.file.unwrap_or_default();
        let problem = if hash.is_empty() {
            Some("the offer has no hash")
        } else if file.download_url.is_empty() {
            Some("the offer has no file.download_url")
        } else if file.content_hash.len() != 32 {
            Some("the offer's file.content_hash is not a SHA-256")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.fail_package(hash, version, problem.to_string(), ctx);
            return;
        }
        if pkg.installed.contains_key(&hash) {
            // Installed before: the local copy is installed again, no download.
            pkg.status = pkg.offered_status(&hash, &version, PackageStatusEnum::InstallPending);
            pkg.job = Some(PackageJob {
                hash,
                version,
                phase: Phase::Pending,
            });
            return;
        }
        inc(&st.downloads);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(download(
            ctx.download_client.clone(),
            file.download_url,
            file.content_hash,
            ctx.args.interrupt_downloads,
            tx,
        ))
        .abort_handle();
        pkg.status = proto::PackageStatus {
            download_details: Some(proto::PackageDownloadDetails::default()),
            ..pkg.offered_status(&hash, &version, PackageStatusEnum::Downloading)
        };
        pkg.job = Some(PackageJob {
            hash,
            version,
            phase: Phase::Downloading(DownloadTask { events, task }),
        });
    }

    /// Reports InstallFailed for an offered package and never tries it again.
    fn fail_package(&mut self, hash: Bytes, version: String, error: String, ctx: &Ctx) {
        inc(&ctx.stats.install_failures);
        ctx.log(self.index, format!("package {version} failed: {error}"));
        let pkg = &mut self.packages;
        pkg.job = None;
        pkg.status = proto::PackageStatus {
            error_message: error.clone(),
            ..pkg.offered_status(&hash, &version, PackageStatusEnum::InstallFailed)
        };
        remember(&mut pkg.failed, hash, error);
        self.dirty.packages = true;
        self.must_send = true;
    }

    pub fn on_download_event(&mut self, event: DownloadEvent, ctx: &Ctx) {
        let Some((hash, version)) = self
            .packages
            .job
            .as_ref()
            .map(|j| (j.hash.clone(), j.version.clone()))
        else {
            return;
        };
        match event {
            DownloadEvent::Progress {
                percent,
                bytes_per_second,
            } => {
                self.packages.status.download_details = Some(proto::PackageDownloadDetails {
                    download_percent: percent,
                    download_bytes_per_second: bytes_per_second,
                });
                self.dirty.packages = true;
                self.must_send = true;
            }
            DownloadEvent::Resumed => inc(&ctx.stats.download_resumes),
            DownloadEvent::Note(text) => ctx.log(self.index, text),
            DownloadEvent::Done { bytes, verified } => {
                inc(&ctx.stats.downloads_completed);
                ctx.stats.download_bytes.fetch_add(bytes, Relaxed);
                match verified {
                    Ok(()) => {
                        self.packages.status = self.packages.offered_status(
                            &hash,
                            &version,
                            PackageStatusEnum::InstallPending,
                        );
                        self.packages.job = Some(PackageJob {
                            hash,
                            version,
                            phase: Phase::Pending,
                        });
                        self.dirty.packages = true;
                        self.must_send = true;
                    }
                    Err(e) => self.fail_package(hash, version, e, ctx),
                }
            }
            DownloadEvent::Failed(e) => self.fail_package(hash, version, e, ctx),
        }
    }

    /// When the next install step is due: at once after InstallPending is sent, at the end
    /// of the install delay after Installing is sent.
    pub fn install_at(&self) -> Option<Instant> {
        if self.dirty.packages {
            return None;
        }
        match self.packages.job.as_ref()?.phase {
            Phase::Pending => Some(Instant::now()),
            Phase::Installing { at, .. } => Some(at),
            Phase::Downloading(_) => None,
        }
    }

    /// InstallPending → Installing, or Installing → Installed (then a restart) or
    /// InstallFailed.
    pub fn install_due(&mut self, ctx: &Ctx) {
        let Some(mut job) = self.packages.job.take() else {
            return;
        };
        match job.phase {
            Phase::Pending => {
                let (delay, fail) = {
                    let mut rng = rand::rng();
                    let base = ctx.args.install_delay_ms as f64;
                    let ms = if base > 0.0 {
                        rng.random_range(base * 0.5..=base * 1.5)
                    } else {
                        0.0
                    };
                    let fail = rng.random_bool(ctx.args.install_failure_ratio).then(|| {
                        format!(
                            "simulated failure installing {}: the new collector did not start (--install-failure-ratio)",
                            job.version
                        )
                    });
                    (Duration::from_micros((ms * 1000.0) as u64), fail)
                };
                self.packages.status = self.packages.offered_status(
                    &job.hash,
                    &job.version,
                    PackageStatusEnum::Installing,
                );
                job.phase = Phase::Installing {
                    at: Instant::now() + delay,
                    fail,
                };
                self.packages.job = Some(job);
            }
            Phase::Installing { fail: Some(e), .. } => {
                self.fail_package(job.hash, job.version, e, ctx);
                return;
            }
            Phase::Installing { fail: None, .. } => {
                inc(&ctx.stats.installs);
                let pkg = &mut self.packages;
                remember(&mut pkg.installed, job.hash.clone(), job.version.clone());
                pkg.version = job.version;
                pkg.hash = job.hash;
                pkg.status =
                    pkg.offered_status(&pkg.hash, &pkg.version, PackageStatusEnum::Installed);
                self.restart = true;
            }
            Phase::Downloading(_) => {
                self.packages.job = Some(job);
                return;
            }
        }
        self.dirty.packages = true;
        self.must_send = true;
    }

    /// Whether a download is running, whose events the driver should wait for.
    pub fn downloading(&self) -> bool {
        self.packages.downloading()
    }

    /// The next event of the running download (pending forever if there is none).
    pub async fn download_event(&mut self) -> DownloadEvent {
        download_event(&mut self.packages.job).await
    }
}
