//! What the session offers an agent: the configuration and package its directive wants, and
//! where to send its own telemetry; and how far it is with a package it was offered.

use std::sync::Arc;

use super::AgentSession;
use crate::core::config::ConfigVersion;
use crate::core::domain::{
    AgentCapabilities as Caps, AgentRecord, OwnTelemetry, PackageOffer, PackageState,
    RemoteConfigOffer, RemoteConfigStatus,
};
use crate::core::packages::{DOWNLOAD_PATH, Package};
use crate::core::status::UpgradeProgress;

impl AgentSession {
    /// The configuration to send now, if the directive wants one the agent has not reported;
    /// records it as offered. Sent once per connection: a reconnecting agent that never
    /// reported it gets it again, since it may have missed it.
    pub(super) fn take_offer(&mut self, rec: &mut AgentRecord) -> Option<RemoteConfigOffer> {
        let version = self.config_due(rec)?;
        self.retry_failed = false;
        rec.offered_config_hash = Some(version.hash.clone());
        self.conn.offered_config = true;
        Some(RemoteConfigOffer {
            hash: version.hash.clone(),
            files: version.files.clone(),
        })
    }

    /// The configuration version to send `rec` now, if one is due.
    pub(super) fn config_due(&self, rec: &AgentRecord) -> Option<Arc<ConfigVersion>> {
        let version = self.directive.version.as_ref()?;
        if self.via.is_none()
            || !rec.admin_state.is_managed()
            || !rec.capabilities.contains(Caps::ACCEPTS_REMOTE_CONFIG)
        {
            return None;
        }
        let retry = self.retry_failed
            && rec.remote_config.as_ref().is_some_and(|rc| {
                rc.hash == version.hash && rc.status == RemoteConfigStatus::Failed
            });
        if !retry {
            // Never again a hash the agent has reported, nor twice on one connection.
            if rec.remote_config.as_ref().map(|rc| &rc.hash) == Some(&version.hash) {
                return None;
            }
            if rec.offered_config_hash.as_ref() == Some(&version.hash) && self.conn.offered_config {
                return None;
            }
        }
        Some(version.clone())
    }

    /// The package to offer now, if the directive wants one the agent neither has nor is
    /// working on; records it as offered. Once per connection, like configurations.
    pub(super) fn take_package_offer(&mut self, rec: &mut AgentRecord) -> Option<PackageOffer> {
        let (package, base) = self.package_due(rec)?;
        let hash = package.hash();
        rec.offered_package_hash = Some(hash.clone());
        self.conn.offered_package = true;
        Some(PackageOffer {
            name: package.name.clone(),
            version: package.version.clone(),
            hash,
            content_hash: package.sha256.clone(),
            download_url: format!("{base}{DOWNLOAD_PATH}{}", package.sha256.to_hex()),
        })
    }

    /// The package to offer `rec` now, with the base URL to offer it from, if one is due.
    pub(super) fn package_due(&self, rec: &AgentRecord) -> Option<(Arc<Package>, String)> {
        let package = self.directive.package.as_ref()?;
        if self.via.is_none()
            || !rec.admin_state.is_managed()
            || !rec.capabilities.contains(Caps::ACCEPTS_PACKAGES)
        {
            return None;
        }
        let hash = package.hash();
        if let Some(report) = rec
            .packages
            .as_ref()
            .and_then(|p| p.packages.get(package.name.as_str()))
        {
            let has_it = report.state == PackageState::Installed && report.agent_has_hash == hash;
            let on_it = report.server_offered_hash == hash
                && (report.state.in_progress() || report.state == PackageState::InstallFailed);
            if has_it || on_it {
                return None;
            }
        }
        if rec.offered_package_hash.as_ref() == Some(&hash) && self.conn.offered_package {
            return None;
        }
        let base = self
            .config
            .public_url
            .as_deref()
            .or(self.origin.as_deref())?
            .to_string();
        Some((package.clone(), base))
    }

    /// Where the agent is with the package it was offered.
    pub(super) fn upgrade_progress(&self, rec: &AgentRecord) -> UpgradeProgress {
        let Some(offered) = &rec.offered_package_hash else {
            return UpgradeProgress::Idle;
        };
        let report = rec.packages.as_ref().and_then(|p| {
            p.packages
                .values()
                .find(|r| &r.server_offered_hash == offered || &r.agent_has_hash == offered)
        });
        let wanted = self
            .directive
            .package
            .as_ref()
            .is_some_and(|p| &p.hash() == offered);
        match report {
            Some(r) if r.state == PackageState::Installed && &r.agent_has_hash == offered => {
                UpgradeProgress::Idle
            }
            Some(r) if r.state == PackageState::InstallFailed => UpgradeProgress::Failed(format!(
                "upgrade to {} failed: {}",
                r.server_offered_version, r.error
            )),
            Some(r) if r.state.in_progress() => {
                UpgradeProgress::InProgress(match r.download_percent {
                    Some(pct) if r.state == PackageState::Downloading => {
                        format!("downloading {} ({pct:.0}%)", r.server_offered_version)
                    }
                    _ => format!(
                        "{} {}",
                        r.state.as_str().replace('_', " "),
                        r.server_offered_version
                    ),
                })
            }
            // Offered on this connection and not reported yet: on its way.
            _ if wanted && self.conn.offered_package && self.via.is_some() => {
                UpgradeProgress::InProgress("package offered".into())
            }
            _ => UpgradeProgress::Idle,
        }
    }

    /// The own-telemetry destinations for the kinds the agent says it can send, if any.
    pub(super) fn own_telemetry_offer(&self) -> Option<OwnTelemetry> {
        let caps = self.record.capabilities;
        let own = &self.config.own_telemetry;
        let pick =
            |cap: Caps, endpoint: &Option<String>| endpoint.clone().filter(|_| caps.contains(cap));
        let offer = OwnTelemetry {
            metrics: pick(Caps::REPORTS_OWN_METRICS, &own.metrics),
            logs: pick(Caps::REPORTS_OWN_LOGS, &own.logs),
            traces: pick(Caps::REPORTS_OWN_TRACES, &own.traces),
        };
        (offer != OwnTelemetry::default()).then_some(offer)
    }
}
