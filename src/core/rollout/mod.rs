//! Staged rollouts of configuration versions and packages: the rollout model, the pure
//! planner, and the per-agent directive that follows from a configuration and its latest
//! rollout. The controller task that owns them is `crate::tasks::controller`.

pub mod planner;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use planner::{Counts, Params, Phase, Progress, State};

use crate::core::config::{ComponentSet, ConfigVersion, Configuration, Selector, check_compatible};
use crate::core::domain::{AgentRecord, ContentHash, InstanceUid};
use crate::core::packages::Package;

pub const DEFAULT_INITIAL: u32 = 3;
pub const DEFAULT_MULTIPLIER: u32 = 5;
pub const DEFAULT_MAXIMUM: u32 = 100;
pub const DEFAULT_MAX_ERRORS: u32 = 0;
pub const DEFAULT_WAVE_TIMEOUT_SECS: u64 = 300;

/// What a rollout delivers: one scheduler, two kinds of payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Config(ConfigPayload),
    Package(PackagePayload),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigPayload {
    pub configuration: String,
    pub version: u32,
    pub hash: ContentHash,
    /// What agents ran before: where waiting agents stay and where a rollback returns.
    pub previous_version: Option<u32>,
}

/// An agent upgrade: the package `name` at `version`, to the agents matching `selector`.
#[derive(Clone, Debug, PartialEq)]
pub struct PackagePayload {
    pub name: String,
    pub version: String,
    pub selector: Selector,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub id: String,
    pub payload: Payload,
    pub params: Params,
    pub rollback: bool,
    pub progress: Progress<InstanceUid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Rollout {
    pub fn config(&self) -> Option<&ConfigPayload> {
        match &self.payload {
            Payload::Config(c) => Some(c),
            Payload::Package(_) => None,
        }
    }

    pub fn package(&self) -> Option<&PackagePayload> {
        match &self.payload {
            Payload::Package(p) => Some(p),
            Payload::Config(_) => None,
        }
    }

    /// The configuration it rolls out, if it rolls out one.
    pub fn configuration(&self) -> Option<&str> {
        self.config().map(|c| c.configuration.as_str())
    }

    pub fn is_active(&self) -> bool {
        matches!(
            self.progress.state,
            State::Pending | State::Started | State::Paused
        )
    }

    fn is_terminal(&self) -> bool {
        matches!(
            self.progress.state,
            State::Stable | State::Cancelled | State::Replaced
        )
    }
}

/// What one agent should be told, from its configuration and that configuration's latest
/// rollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Directive {
    /// The version the agent should run; `None` leaves it alone.
    pub version: Option<Arc<ConfigVersion>>,
    /// Queued for a later wave of a running rollout.
    pub pending: bool,
    /// The version it is headed to needs components it lacks.
    pub incompatible: Option<String>,
    /// The package (variant for its platform) an upgrade rollout offers it.
    pub package: Option<Arc<Package>>,
}

/// What identifies a directive, to tell an agent only when it changes.
pub type DirectiveKey = (
    Option<ContentHash>,
    bool,
    Option<String>,
    Option<ContentHash>,
);

impl Directive {
    pub fn key(&self) -> DirectiveKey {
        (
            self.version.as_ref().map(|v| v.hash.clone()),
            self.pending,
            self.incompatible.clone(),
            self.package.as_ref().map(|p| p.hash()),
        )
    }
}

/// The directive for `agent`, assigned to `config`, given the configuration's latest rollout.
/// Before any rollout the agent is left alone; after a stable one it runs that version; during
/// or after an unfinished one, agents the rollout reached run its version (the previous one
/// after a rollback) and the others keep the previous version. Once a rollout has stopped
/// (error, cancelled), an agent whose wave had started but that never took the version up
/// (`reported` is not its hash) counts as not reached: nobody new gets a stopped version.
/// A version the agent lacks components for is never sent: it is left alone, and told why.
/// An agent the rollout has not reached that already runs a version of this configuration is
/// left on it (a replaced rollout's agents are not pushed back to an older version).
pub fn directive(
    config: &Configuration,
    latest: Option<&Rollout>,
    agent: &AgentRecord,
    available: Option<&ComponentSet>,
) -> Directive {
    let reported = agent.remote_config.as_ref().map(|rc| &rc.hash);
    let runs_a_version = agent
        .applied_config_hash
        .as_ref()
        .is_some_and(|h| config.versions.iter().any(|v| &v.hash == h));
    let agent = agent.uid;
    let Some((rollout, payload)) = latest.and_then(|r| Some((r, r.config()?))) else {
        return Directive::default();
    };
    let version_of = |n: Option<u32>| n.and_then(|n| config.version(n)).cloned();
    let phase = rollout.progress.agents.get(&agent).copied();
    let stopped = matches!(rollout.progress.state, State::Error | State::Cancelled);
    let reached = match phase {
        Some(Phase::Completed | Phase::Failed | Phase::TimedOut) => true,
        Some(Phase::Sent { .. }) => !stopped || reported == Some(&payload.hash),
        Some(Phase::Waiting) | None => false,
    };
    let (desired, headed) = if rollout.progress.state == State::Stable {
        let v = version_of(Some(payload.version));
        (v.clone(), v)
    } else if reached {
        let v = if rollout.progress.state == State::Error && rollout.rollback {
            version_of(payload.previous_version)
        } else {
            version_of(Some(payload.version))
        };
        (v.clone(), v)
    } else {
        let previous = version_of(payload.previous_version);
        let headed = if rollout.is_terminal() || stopped {
            previous.clone()
        } else {
            version_of(Some(payload.version))
        };
        let stay = runs_a_version && !rollout.is_terminal();
        (if stay { None } else { previous }, headed)
    };
    let mut directive = Directive {
        pending: rollout.is_active() && phase == Some(Phase::Waiting),
        ..Directive::default()
    };
    for version in [&headed, &desired].into_iter().flatten() {
        if let Err(missing) = check_compatible(version, available) {
            directive.incompatible.get_or_insert_with(|| {
                format!(
                    "configuration {} v{} needs components the agent lacks: {}",
                    config.name,
                    version.version,
                    missing.join(", ")
                )
            });
        }
    }
    directive.version = desired.filter(|v| check_compatible(v, available).is_ok());
    directive
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;
    use crate::core::domain::{ConfigFile, ConfigMap};

    fn version(n: u32, yaml: &'static str) -> Arc<ConfigVersion> {
        let files = ConfigMap {
            files: BTreeMap::from([(
                "c.yaml".to_string(),
                ConfigFile {
                    body: Bytes::from_static(yaml.as_bytes()),
                    content_type: "text/yaml".into(),
                },
            )]),
        };
        Arc::new(ConfigVersion::new(n, files, Utc::now()).unwrap())
    }

    fn config() -> Configuration {
        Configuration {
            name: "prod".into(),
            selector: Selector::default(),
            priority: 0,
            versions: vec![
                version(1, "exporters:\n  kafka:\n"),
                version(2, "exporters:\n  kafka:\n  debug:\n"),
            ],
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn agent(uid: InstanceUid, reported: Option<&ContentHash>) -> AgentRecord {
        let mut rec = AgentRecord::new(uid, Utc::now());
        rec.remote_config = reported.map(|h| crate::core::domain::RemoteConfigState {
            hash: h.clone(),
            status: crate::core::domain::RemoteConfigStatus::Applying,
            error: String::new(),
        });
        rec
    }

    fn rollout(config: &Configuration, state: State, agents: &[(InstanceUid, Phase)]) -> Rollout {
        Rollout {
            id: "r".into(),
            payload: Payload::Config(ConfigPayload {
                configuration: config.name.clone(),
                version: 2,
                hash: config.versions[1].hash.clone(),
                previous_version: Some(1),
            }),
            params: Params::default(),
            rollback: false,
            progress: Progress {
                state,
                wave: 1,
                extra_errors: 0,
                agents: agents.iter().copied().collect(),
            },
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn an_incompatible_agent_is_not_given_the_previous_version_either() {
        let config = config();
        let uid = InstanceUid::new_v7();
        let r = rollout(&config, State::Started, &[]);
        let debug_only: ComponentSet = [("exporters", "debug")].into_iter().collect();
        let d = directive(
            &config,
            Some(&r),
            &self::agent(uid, None),
            Some(&debug_only),
        );
        assert_eq!(d.version, None);
        assert!(d.incompatible.unwrap().contains("exporters/kafka"));
    }

    #[test]
    fn a_stopped_rollout_reaches_nobody_who_had_not_taken_it_up() {
        let config = config();
        let (waiting_on_poll, applying) = (InstanceUid::new_v7(), InstanceUid::new_v7());
        let sent = Phase::Sent { wave: 0, at_ms: 0 };
        let r = rollout(
            &config,
            State::Error,
            &[(waiting_on_poll, sent), (applying, sent)],
        );
        let v2 = &config.versions[1].hash;
        let d = directive(&config, Some(&r), &agent(waiting_on_poll, None), None);
        assert_eq!(
            d.version.unwrap().version,
            1,
            "back to the previous version"
        );
        let d = directive(&config, Some(&r), &agent(applying, Some(v2)), None);
        assert_eq!(d.version.unwrap().version, 2, "it has it already");
        let running = rollout(&config, State::Started, &[(waiting_on_poll, sent)]);
        let d = directive(&config, Some(&running), &agent(waiting_on_poll, None), None);
        assert_eq!(
            d.version.unwrap().version,
            2,
            "a running rollout still delivers"
        );
    }

    #[test]
    fn an_agent_on_a_version_waits_for_its_wave_instead_of_going_back() {
        let config = config();
        let uid = InstanceUid::new_v7();
        let mut on_v2 = agent(uid, None);
        on_v2.applied_config_hash = Some(config.versions[1].hash.clone());
        let r = rollout(&config, State::Started, &[(uid, Phase::Waiting)]);
        let d = directive(&config, Some(&r), &on_v2, None);
        assert_eq!(d.version, None, "left on what it runs");
        assert!(d.pending);
    }
}
