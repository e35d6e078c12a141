//! Configurations: named, versioned sets of collector config files, matched to agents by label
//! selectors; and component compatibility between a version and an agent. Pure: no IO.

mod components;
mod diff;
mod selector;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use components::{ComponentSet, ComponentsError, KINDS, required_components};
pub use diff::diff_files;
pub use selector::{Selector, SelectorError};

use crate::core::domain::{AgentRecord, ConfigMap, ContentHash, InstanceUid};

/// The admin label that pins an agent to a configuration by name.
pub const PIN_LABEL: &str = "configuration";
const MAX_NAME: usize = 63;

/// One immutable version of a configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigVersion {
    pub version: u32,
    pub files: ConfigMap,
    pub hash: ContentHash,
    /// The components its collector YAML uses.
    pub components: ComponentSet,
    pub created_at: DateTime<Utc>,
}

impl ConfigVersion {
    pub fn new(
        version: u32,
        files: ConfigMap,
        created_at: DateTime<Utc>,
    ) -> Result<Self, ComponentsError> {
        let components = required_components(
            files
                .files
                .iter()
                .map(|(name, f)| (name.as_str(), f.body.as_ref(), f.content_type.as_str())),
        )?;
        Ok(Self {
            version,
            hash: files.hash(),
            files,
            components,
            created_at,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Configuration {
    pub name: String,
    pub selector: Selector,
    pub priority: i32,
    /// Oldest first; version n is at index n - 1.
    pub versions: Vec<Arc<ConfigVersion>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Configuration {
    pub fn latest(&self) -> Option<&Arc<ConfigVersion>> {
        self.versions.last()
    }

    pub fn version(&self, n: u32) -> Option<&Arc<ConfigVersion>> {
        self.versions.get((n as usize).checked_sub(1)?)
    }
}

/// Names are what admins type and what agents are pinned by: keep them plain.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "configuration name {name:?} must be 1-{MAX_NAME} characters of lowercase letters, digits, '-', '_', '.', starting with a letter or digit"
        ))
    }
}

/// The configuration an agent is assigned: the one its `configuration` admin label names,
/// else the matching configuration of highest priority (ties go to the first name).
pub fn assign<'a>(
    configs: &'a [Arc<Configuration>],
    agent: &AgentRecord,
) -> Option<&'a Arc<Configuration>> {
    if let Some(pinned) = agent.labels.get(PIN_LABEL) {
        return configs.iter().find(|c| &c.name == pinned);
    }
    configs
        .iter()
        .filter(|c| c.selector.matches(|key| agent.label(key)))
        .min_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        })
}

/// Agents a change of configurations would move, keyed by (from, to) configuration name
/// (`None`: no configuration), each list in the agents' order. Agents that stay are left out.
pub type Moves = std::collections::BTreeMap<(Option<String>, Option<String>), Vec<InstanceUid>>;

/// Which agents move from one configuration to another when `before` becomes `after`.
pub fn reassigned<'a>(
    before: &[Arc<Configuration>],
    after: &[Arc<Configuration>],
    agents: impl IntoIterator<Item = &'a AgentRecord>,
) -> Moves {
    let mut moves = Moves::new();
    for agent in agents {
        let from = assign(before, agent).map(|c| &c.name);
        let to = assign(after, agent).map(|c| &c.name);
        if from != to {
            moves
                .entry((from.cloned(), to.cloned()))
                .or_default()
                .push(agent.uid);
        }
    }
    moves
}

/// Whether an agent can run `version`: `Err` names what it lacks. An agent that has not
/// reported its components is taken as compatible.
pub fn check_compatible(
    version: &ConfigVersion,
    available: Option<&ComponentSet>,
) -> Result<(), Vec<String>> {
    let Some(available) = available else {
        return Ok(());
    };
    let missing = version.components.missing_from(available);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;
    use crate::core::domain::ConfigFile;

    fn config(name: &str, selector: &str, priority: i32) -> Arc<Configuration> {
        Arc::new(Configuration {
            name: name.into(),
            selector: Selector::parse(selector).unwrap(),
            priority,
            versions: vec![],
            created_at: Utc::now(),
            updated_at: Utc::now(),
        })
    }

    fn agent(labels: &[(&str, &str)]) -> AgentRecord {
        let mut rec = AgentRecord::new(InstanceUid::new_v7(), Utc::now());
        rec.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        rec
    }

    #[test]
    fn highest_priority_match_wins_and_a_pin_overrides() {
        let configs = vec![
            config("base", "", 0),
            config("prod", "env=prod", 10),
            config("prod-eu", "env=prod,region=eu", 10),
        ];
        let eu = agent(&[("env", "prod"), ("region", "eu")]);
        assert_eq!(
            assign(&configs, &eu).unwrap().name,
            "prod",
            "tie: first name"
        );
        let dev = agent(&[("env", "dev")]);
        assert_eq!(assign(&configs, &dev).unwrap().name, "base");
        let pinned = agent(&[("env", "prod"), (PIN_LABEL, "base")]);
        assert_eq!(assign(&configs, &pinned).unwrap().name, "base");
        let pinned_nowhere = agent(&[(PIN_LABEL, "gone")]);
        assert!(assign(&configs, &pinned_nowhere).is_none());
    }

    #[test]
    fn a_change_moves_only_the_agents_whose_assignment_changes() {
        let before = vec![
            config("prod", "env=prod", 0),
            config("staging", "env=staging", 0),
        ];
        let mut widened = before.clone();
        widened[0] = config("prod", "", 10);
        let prod = agent(&[("env", "prod")]);
        let staging = agent(&[("env", "staging")]);
        let pinned = agent(&[("env", "staging"), (PIN_LABEL, "staging")]);
        let none = agent(&[]);
        let moves = reassigned(&before, &widened, [&prod, &staging, &pinned, &none]);
        assert_eq!(
            moves,
            Moves::from([
                (
                    (Some("staging".into()), Some("prod".into())),
                    vec![staging.uid]
                ),
                ((None, Some("prod".into())), vec![none.uid]),
            ])
        );
        assert!(reassigned(&before, &before, [&prod, &staging]).is_empty());
    }

    #[test]
    fn versions_know_their_components_and_hash() {
        let files = ConfigMap {
            files: BTreeMap::from([(
                "collector.yaml".to_string(),
                ConfigFile {
                    body: Bytes::from_static(b"receivers:\n  otlp:\nexporters:\n  kafka/eu:\n"),
                    content_type: "text/yaml".into(),
                },
            )]),
        };
        let v = ConfigVersion::new(1, files.clone(), Utc::now()).unwrap();
        assert_eq!(v.hash, files.hash());
        let mut available = ComponentSet::new();
        available.insert("receivers", "otlp");
        assert_eq!(
            check_compatible(&v, Some(&available)),
            Err(vec!["exporters/kafka".to_string()])
        );
        available.insert("exporters", "kafka");
        assert_eq!(check_compatible(&v, Some(&available)), Ok(()));
        assert_eq!(check_compatible(&v, None), Ok(()));
    }

    #[test]
    fn names_are_plain() {
        assert!(validate_name("otel-prod.v2").is_ok());
        for bad in ["", "Prod", "-x", "a b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
