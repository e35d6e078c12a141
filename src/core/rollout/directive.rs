//! What one agent should be told: the configuration version it should run, the package an
//! upgrade offers it, whether it waits for a wave and whether it is incompatible. Pure: a
//! function of the configuration, the rollouts and the agent's record.

use std::borrow::Cow;
use std::sync::Arc;

use super::{Phase, Rollout, State};
use crate::core::config::{ComponentSet, ConfigVersion, Configuration, check_compatible};
use crate::core::domain::{AgentRecord, ContentHash};
use crate::core::packages::{Package, choose};

/// What one agent should be told, from its configuration and that configuration's latest
/// rollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Directive {
    /// The version the agent should run; `None` leaves it alone.
    pub version: Option<Arc<ConfigVersion>>,
    /// Why the agent waits for a rollout: queued for a later wave, or assigned to this
    /// configuration while it runs another's and no rollout of this one has reached it yet.
    pub pending: Option<Cow<'static, str>>,
    /// The version it is headed to needs components it lacks.
    pub incompatible: Option<String>,
    /// The package (variant for its platform) an upgrade rollout offers it.
    pub package: Option<Arc<Package>>,
}

/// What identifies a directive, to tell an agent only when it changes.
pub type DirectiveKey = (
    Option<ContentHash>,
    Option<Cow<'static, str>>,
    Option<String>,
    Option<ContentHash>,
);

impl Directive {
    pub fn key(&self) -> DirectiveKey {
        (
            self.version.as_ref().map(|v| v.hash.clone()),
            self.pending.clone(),
            self.incompatible.clone(),
            self.package.as_ref().map(|p| p.hash()),
        )
    }
}

/// Why `version` of `config` cannot run on an agent with the `available` components, if it
/// cannot.
pub fn incompatibility(
    config: &Configuration,
    version: &ConfigVersion,
    available: Option<&ComponentSet>,
) -> Option<String> {
    let missing = check_compatible(version, available).err()?;
    Some(format!(
        "configuration {} v{} needs components the agent lacks: {}",
        config.name,
        version.version,
        missing.join(", ")
    ))
}

/// The directive for `agent`, assigned to `config`, given the configuration's latest rollout.
/// Before any rollout the agent is left alone; after a stable one it runs that version; during
/// or after an unfinished one, agents the rollout reached run its version (the previous one
/// after a rollback) and the others keep the previous version. Once a rollout has stopped
/// (error, cancelled), an agent whose wave had started (or that timed out) but that never took
/// the version up (`reported` is not its hash) counts as not reached: nobody new gets a
/// stopped version.
/// A version the agent lacks components for is never sent: it is left alone, and told why.
/// An agent the rollout has not reached that already runs a version of this configuration is
/// left on it (a replaced rollout's agents are not pushed back to an older version). One that
/// runs a configuration Corral sent that is not a version of this one (it was assigned here by
/// a selector, priority or pin change, or its configuration was deleted) is sent nothing until
/// a rollout of this configuration reaches it: it is pending, and says why.
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
    let runs_another = agent.applied_config_hash.is_some();
    let agent = agent.uid;
    let Some((rollout, payload)) = latest.and_then(|r| Some((r, r.config()?))) else {
        return Directive::default();
    };
    let version_of = |n: Option<u32>| n.and_then(|n| config.version(n)).cloned();
    let phase = rollout.progress.agents.get(&agent).copied();
    let stopped = matches!(rollout.progress.state, State::Error | State::Cancelled);
    let reached = match phase {
        Some(Phase::Completed | Phase::Failed) => true,
        Some(Phase::Sent { .. } | Phase::TimedOut) => !stopped || reported == Some(&payload.hash),
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
        pending: (rollout.is_active() && phase == Some(Phase::Waiting))
            .then_some(Cow::Borrowed(WAVE_PENDING)),
        ..Directive::default()
    };
    for version in [&headed, &desired].into_iter().flatten() {
        if directive.incompatible.is_none() {
            directive.incompatible = incompatibility(config, version, available);
        }
    }
    directive.version = desired.filter(|v| check_compatible(v, available).is_ok());
    let moved_in = runs_another && !reached && !runs_a_version;
    if moved_in && directive.version.is_some() {
        directive.version = None;
        directive.pending.get_or_insert_with(|| {
            Cow::Owned(format!(
                "assigned to configuration {} while running another; waits for a rollout of {}",
                config.name, config.name
            ))
        });
    }
    directive
}

/// Why an agent queued for a later wave is pending.
pub const WAVE_PENDING: &str = "queued for a later rollout wave";

/// The package an agent should get from an upgrade rollout, and whether it waits for a wave.
pub fn package_directive(
    rollout: &Rollout,
    agent: &AgentRecord,
    packages: &[Arc<Package>],
) -> (Option<Arc<Package>>, Option<Cow<'static, str>>) {
    let Some(payload) = rollout.package() else {
        return (None, None);
    };
    let phase = rollout.progress.agents.get(&agent.uid).copied();
    let reached = matches!(
        phase,
        Some(Phase::Sent { .. } | Phase::Completed | Phase::Failed | Phase::TimedOut)
    );
    let offered = rollout.progress.state == State::Stable || reached;
    // An agent already running that version needs nothing, whatever hash it reports.
    let package = (offered && !runs_version(agent, &payload.version))
        .then(|| choose(packages, &payload.name, &payload.version, agent).cloned())
        .flatten();
    (
        package,
        (rollout.is_active() && phase == Some(Phase::Waiting))
            .then_some(Cow::Borrowed(WAVE_PENDING)),
    )
}

/// Whether the agent reports running package `name` at `version`: the collector itself (`""`)
/// by its `service.version`, any other by its package statuses.
pub fn runs_package(agent: &AgentRecord, name: &str, version: &str) -> bool {
    if name.is_empty() {
        return runs_version(agent, version);
    }
    agent.packages.as_ref().is_some_and(|p| {
        p.packages.get(name).is_some_and(|r| {
            r.agent_has_version.trim_start_matches('v') == version.trim_start_matches('v')
        })
    })
}

/// Whether the agent reports running `version` (`service.version`; a leading `v` is ignored).
pub fn runs_version(agent: &AgentRecord, version: &str) -> bool {
    agent
        .label("service.version")
        .is_some_and(|v| v.trim_start_matches('v') == version.trim_start_matches('v'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::core::config::Selector;
    use crate::core::domain::{ConfigFile, ConfigMap, InstanceUid};
    use crate::core::rollout::{ConfigPayload, Params, Payload, Progress};

    /// Tests pass their times too: nothing in the core reads the clock.
    fn epoch() -> DateTime<Utc> {
        DateTime::UNIX_EPOCH
    }

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
        Arc::new(ConfigVersion::new(n, files, epoch()).unwrap())
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
            created_at: epoch(),
            updated_at: epoch(),
        }
    }

    fn agent(uid: InstanceUid, reported: Option<&ContentHash>) -> AgentRecord {
        let mut rec = AgentRecord::new(uid, epoch());
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
                canary: false,
                agents: agents.iter().copied().collect(),
            },
            created_at: epoch(),
            updated_at: epoch(),
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
        assert_eq!(d.pending.as_deref(), Some(WAVE_PENDING));
    }

    #[test]
    fn an_agent_moved_in_from_another_configuration_waits_for_a_rollout_of_this_one() {
        let config = config();
        let (moved, fresh, reached) = (
            InstanceUid::new_v7(),
            InstanceUid::new_v7(),
            InstanceUid::new_v7(),
        );
        let mut from_staging = agent(moved, None);
        from_staging.applied_config_hash = Some(ContentHash(vec![7; 32]));
        let stable = rollout(&config, State::Stable, &[(reached, Phase::Completed)]);
        let d = directive(&config, Some(&stable), &from_staging, None);
        assert_eq!(d.version, None, "no push outside a rollout");
        assert!(d.pending.unwrap().contains("waits for a rollout of prod"));
        let d = directive(&config, Some(&stable), &agent(fresh, None), None);
        assert_eq!(
            d.version.unwrap().version,
            2,
            "an agent that runs no configuration of ours takes the stable version"
        );
        assert_eq!(d.pending, None);
        let mut reached_from_staging = agent(reached, None);
        reached_from_staging.applied_config_hash = Some(ContentHash(vec![7; 32]));
        let d = directive(&config, Some(&stable), &reached_from_staging, None);
        assert_eq!(d.version.unwrap().version, 2, "a rollout reached it");
        let next = rollout(
            &config,
            State::Started,
            &[(moved, Phase::Sent { wave: 0, at_ms: 0 })],
        );
        let d = directive(&config, Some(&next), &from_staging, None);
        assert_eq!(d.version.unwrap().version, 2, "its wave came");
        let cancelled = rollout(&config, State::Cancelled, &[]);
        let d = directive(&config, Some(&cancelled), &from_staging, None);
        assert_eq!(
            d.version, None,
            "nor the previous version of a cancelled one"
        );
        assert!(d.pending.is_some());
    }
}
