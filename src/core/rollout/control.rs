//! The controller's state and the admin requests it decides. Pure: every decision returns what
//! to store, and the controller task (`crate::tasks::controller`) commits it here only once the
//! store took it, so a change takes effect only once it is durable.
//!
//! Rules of the requests (each has a test named after it):
//!
//! 1. A configuration whose files hash like its latest version gets no new version; its
//!    selector and priority are updated either way. A new version is numbered one past the
//!    last. A selector, priority or files left out keep what is stored (a new configuration
//!    needs files; its selector is then the empty one and its priority 0). A configuration
//!    whose files are all blank is refused.
//! 2. A new rollout replaces the unfinished rollouts of the same target (the same
//!    configuration, or the same package name); finished ones stay as they are. A
//!    configuration rollout's previous version is the last one rolled out in full.
//! 3. Pause, resume and cancel are the planner's ([`super::planner`]); one the state does not
//!    allow is refused as a conflict.
//! 4. Only a stored change is committed: until then readers and ticks see the state before it.
//! 5. A configuration is deleted with its rollouts; refused (conflict) while agents are
//!    assigned to it or one of its rollouts is unfinished, unless forced. A package version
//!    (every platform's build) is refused while an unfinished rollout delivers it, the newest
//!    upgrade of that package offers it, or an agent reports running it.
//! 6. Resuming a rollout stopped by errors sends the next wave to one agent (a canary) before
//!    growing again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Directive;
use super::planner::{self, Phase};
use super::{
    ConfigPayload, DirectiveKey, PackagePayload, Params, Payload, Progress, Rollout, State,
};
use crate::core::config::{ConfigVersion, Configuration, Selector, validate_name};
use crate::core::domain::{ConfigMap, InstanceUid};
use crate::core::packages::Package;

/// The matching agents a rollout passes over, and why.
pub type Skipped = BTreeMap<InstanceUid, String>;

/// What the agents a rollout failed on said.
pub type Failures = BTreeMap<InstanceUid, String>;

/// Which agents a tick looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Every agent in the fleet.
    Full,
    /// Only the agents whose records changed since the last pass.
    Changed,
}

/// A rollout whose progress moved: store it (with `diff`) before it takes effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub rollout: Arc<Rollout>,
    /// The per-agent rows that changed (`None`: removed).
    pub diff: Vec<(InstanceUid, Option<Phase>)>,
    /// The agents its new wave goes to, in id order.
    pub sent: Vec<InstanceUid>,
    /// What each agent that failed in this update said.
    pub failures: Vec<(InstanceUid, String)>,
}

/// A directive to hand to one agent's actor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tell {
    pub uid: InstanceUid,
    pub directive: Directive,
    pub key: DirectiveKey,
    /// The ids of the updates it follows from: handed over only once they are stored.
    pub needs: Vec<String>,
}

/// What a tick should do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub updates: Vec<Update>,
    /// Skipped maps that changed, by rollout id. They are shown, not stored.
    pub skipped: Vec<(String, Skipped)>,
    /// Directives that differ from the last ones handed over, in uid order.
    pub tells: Vec<Tell>,
    /// On a full pass, every agent looked at.
    pub seen: Option<HashSet<InstanceUid>>,
}

/// A configuration as an admin puts it: a new version when the files changed. What is left
/// out (`None`) keeps what is stored.
#[derive(Clone, Debug)]
pub struct ConfigurationSpec {
    pub name: String,
    pub selector: Option<Selector>,
    pub priority: Option<i32>,
    pub files: Option<ConfigMap>,
}

#[derive(Clone, Debug)]
pub struct RolloutSpec {
    pub target: RolloutTarget,
    pub params: Params,
    pub rollback: bool,
}

#[derive(Clone, Debug)]
pub enum RolloutTarget {
    /// A configuration's version (default: its latest) to the agents assigned to it.
    Config {
        configuration: String,
        version: Option<u32>,
    },
    /// A package version to the agents matching a selector.
    Package {
        name: String,
        version: String,
        selector: Selector,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

/// Why a request is refused; the task adds its own errors (the store, shutting down).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

/// Everything the controller owns, as readers see it.
#[derive(Debug, Default)]
pub struct ControlView {
    /// By name.
    pub configurations: Vec<Arc<Configuration>>,
    /// Oldest first.
    pub rollouts: Vec<Arc<Rollout>>,
    /// By name, version, platform, arch.
    pub packages: Vec<Arc<Package>>,
    /// Per rollout id, the matching agents it passes over and why.
    pub skipped: HashMap<String, Arc<Skipped>>,
    /// Per rollout id, what its failed agents said when they failed (since this process
    /// started).
    pub failures: HashMap<String, Arc<Failures>>,
}

impl ControlView {
    pub fn configuration(&self, name: &str) -> Option<&Arc<Configuration>> {
        self.configurations.iter().find(|c| c.name == name)
    }

    pub fn rollout(&self, id: &str) -> Option<&Arc<Rollout>> {
        self.rollouts.iter().find(|r| r.id == id)
    }

    /// The configuration's most recent rollout, whatever its state.
    pub fn latest_rollout(&self, name: &str) -> Option<&Arc<Rollout>> {
        self.rollouts
            .iter()
            .rev()
            .find(|r| r.configuration() == Some(name))
    }

    /// How many agents the rollout passes over, by reason.
    pub fn skipped_by_reason(&self, id: &str) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for reason in self.skipped.get(id).iter().flat_map(|m| m.values()) {
            *counts.entry(reason.clone()).or_insert(0) += 1;
        }
        counts
    }
}

/// What `put_configuration` decided: the configuration to store, with its new version if the
/// files changed.
#[derive(Clone, Debug)]
pub struct ConfigChange {
    /// The configuration as stored before (`None`: it is new).
    pub before: Option<Arc<Configuration>>,
    pub config: Configuration,
    /// The version the request stands for: the new one, or the unchanged latest.
    pub version: Arc<ConfigVersion>,
    /// To store with the configuration; `None` when the content was unchanged.
    pub new_version: Option<Arc<ConfigVersion>>,
}

impl ConfigChange {
    /// What the change changes, of `content`, `selector` and `priority` (all three for a new
    /// configuration); empty when nothing.
    pub fn changed(&self) -> Vec<&'static str> {
        let Some(before) = &self.before else {
            return vec!["content", "selector", "priority"];
        };
        let mut changed = Vec::new();
        if self.new_version.is_some() {
            changed.push("content");
        }
        if before.selector != self.config.selector {
            changed.push("selector");
        }
        if before.priority != self.config.priority {
            changed.push("priority");
        }
        changed
    }

    pub fn is_unchanged(&self) -> bool {
        self.changed().is_empty()
    }
}

/// What `start_rollout` decided: rollouts it replaces (store them first) and the new one.
#[derive(Clone, Debug)]
pub struct RolloutStart {
    pub replaced: Vec<Rollout>,
    pub rollout: Rollout,
}

/// What a tick leaves to the task once its rollout updates were stored (or not).
#[derive(Debug, Default)]
pub struct Settled {
    /// Directives to hand to the actors; report each with [`Control::told`] or
    /// [`Control::retry_later`].
    pub tells: Vec<Tell>,
    /// Something readers see changed: publish a new view.
    pub changed: bool,
}

/// The controller's state: configurations, rollouts and packages as stored, and what it last
/// told each agent. The task is its only owner.
#[derive(Debug)]
pub struct Control {
    /// By name.
    pub(super) configs: Vec<Arc<Configuration>>,
    /// Oldest first.
    pub(super) rollouts: Vec<Arc<Rollout>>,
    /// By name, version, platform, arch.
    pub(super) packages: Vec<Arc<Package>>,
    /// Per rollout, the matching agents it passes over and why (as of its last step).
    pub(super) skipped: HashMap<String, Arc<Skipped>>,
    /// Per rollout, what its failed agents said when they failed.
    pub(super) failures: HashMap<String, Arc<Failures>>,
    /// The directive each agent was last handed, to tell it only changes.
    pub(super) told: HashMap<InstanceUid, DirectiveKey>,
    /// Rollouts created before this were restored from the store.
    pub(super) started: DateTime<Utc>,
    /// The fleet's change counter at the last pass; `None` forces a full pass.
    seen_changes: Option<u64>,
    /// A directive was not handed over (full mailbox, or its rollout not stored): the next
    /// pass must be a full one.
    retry: bool,
}

impl Control {
    /// The state restored from the store, in a process started at `started`.
    pub fn new(
        configs: Vec<Configuration>,
        rollouts: Vec<Rollout>,
        packages: Vec<Package>,
        started: DateTime<Utc>,
    ) -> Self {
        let mut configs: Vec<Arc<Configuration>> = configs.into_iter().map(Arc::new).collect();
        configs.sort_by(|a, b| a.name.cmp(&b.name));
        let rollouts = rollouts
            .into_iter()
            .map(|mut rollout| {
                // The store keeps the version number; its hash comes from the configuration.
                if let Payload::Config(c) = &mut rollout.payload
                    && let Some(v) = configs
                        .iter()
                        .find(|cfg| cfg.name == c.configuration)
                        .and_then(|cfg| cfg.version(c.version))
                {
                    c.hash = v.hash.clone();
                }
                Arc::new(rollout)
            })
            .collect();
        let mut packages: Vec<Arc<Package>> = packages.into_iter().map(Arc::new).collect();
        packages.sort_by(|a, b| package_key(a).cmp(&package_key(b)));
        Control {
            configs,
            rollouts,
            packages,
            skipped: HashMap::new(),
            failures: HashMap::new(),
            told: HashMap::new(),
            started,
            seen_changes: None,
            retry: false,
        }
    }

    pub fn view(&self) -> ControlView {
        ControlView {
            configurations: self.configs.clone(),
            rollouts: self.rollouts.clone(),
            packages: self.packages.clone(),
            skipped: self.skipped.clone(),
            failures: self.failures.clone(),
        }
    }

    /// What the next tick looks at, given the fleet's change counter (see the rules of
    /// [`super::plan`]): nothing (`None`) when no rollout is stepped, no record changed and
    /// every directive was handed over; only the changed agents when no rollout is stepped
    /// and the last pass left nothing to retry; else every agent.
    pub fn pass(&mut self, changes: u64) -> Option<Pass> {
        let stepping = self.rollouts.iter().any(|r| r.is_stepped());
        let settled = !stepping && !self.retry && self.seen_changes.is_some();
        if settled && self.seen_changes == Some(changes) {
            return None;
        }
        self.seen_changes = Some(changes);
        Some(if settled { Pass::Changed } else { Pass::Full })
    }

    /// The next pass looks at every agent (a request changed what they should be told).
    pub fn force_full(&mut self) {
        self.seen_changes = None;
    }

    /// Takes a tick's plan in once the task tried to store its updates: those whose id is in
    /// `unstored` failed and stay as they were (the next tick plans them again), and the
    /// directives that follow from them are not handed over.
    pub fn settle(&mut self, plan: Plan, unstored: &HashSet<String>) -> Settled {
        let mut changed = !plan.skipped.is_empty();
        for update in plan.updates {
            if !unstored.contains(&update.rollout.id) {
                if !update.failures.is_empty() {
                    let kept = self.failures.entry(update.rollout.id.clone()).or_default();
                    Arc::make_mut(kept).extend(update.failures);
                }
                self.commit(update.rollout);
                changed = true;
            }
        }
        for (id, skipped) in plan.skipped {
            self.skipped.insert(id, Arc::new(skipped));
        }
        if let Some(seen) = &plan.seen {
            // Agents gone from the fleet: if one comes back, it is told afresh.
            self.told.retain(|uid, _| seen.contains(uid));
        }
        let (tells, held): (Vec<_>, Vec<_>) = plan
            .tells
            .into_iter()
            .partition(|t| t.needs.iter().all(|id| !unstored.contains(id)));
        // What is held back is told on a later pass, which must then be a full one.
        self.retry = !held.is_empty();
        Settled { tells, changed }
    }

    /// The agent's actor took `key`'s directive.
    pub fn told(&mut self, uid: InstanceUid, key: DirectiveKey) {
        self.told.insert(uid, key);
    }

    /// The agent was deleted: what it was told no longer holds (if it comes back, it is new).
    pub fn forget(&mut self, uid: InstanceUid) {
        self.told.remove(&uid);
    }

    /// A directive could not be handed over (the actor's mailbox was full): try next tick.
    pub fn retry_later(&mut self) {
        self.retry = true;
    }

    /// Rule 1: the configuration to store for `spec`.
    pub fn put_configuration(
        &self,
        spec: ConfigurationSpec,
        now: DateTime<Utc>,
    ) -> Result<ConfigChange, Refusal> {
        validate_name(&spec.name).map_err(Refusal::BadRequest)?;
        let before = self.configs.iter().find(|c| c.name == spec.name).cloned();
        let latest = before.as_ref().and_then(|c| c.latest()).cloned();
        let files = match (spec.files, &latest) {
            (Some(files), _) => files,
            (None, Some(latest)) => latest.files.clone(),
            (None, None) => {
                return Err(Refusal::BadRequest(format!(
                    "configuration {} does not exist yet: give its files",
                    spec.name
                )));
            }
        };
        if files.files.is_empty() {
            return Err(Refusal::BadRequest(
                "a configuration needs at least one file".into(),
            ));
        }
        check_files(&files).map_err(Refusal::BadRequest)?;
        if files.files.values().all(|f| f.body.trim_ascii().is_empty()) {
            return Err(Refusal::BadRequest(
                "the configuration is empty: every file is blank".into(),
            ));
        }
        let mut config = match &before {
            Some(existing) => (**existing).clone(),
            None => Configuration {
                name: spec.name.clone(),
                selector: Selector::default(),
                priority: 0,
                versions: Vec::new(),
                created_at: now,
                updated_at: now,
            },
        };
        if let Some(selector) = spec.selector {
            config.selector = selector;
        }
        if let Some(priority) = spec.priority {
            config.priority = priority;
        }
        let unchanged = latest.filter(|latest| latest.hash == files.hash());
        if let Some(latest) = unchanged {
            let same = before
                .as_ref()
                .is_some_and(|b| b.selector == config.selector && b.priority == config.priority);
            if !same {
                config.updated_at = now;
            }
            return Ok(ConfigChange {
                before,
                config,
                version: latest,
                new_version: None,
            });
        }
        config.updated_at = now;
        let n = u32::try_from(config.versions.len())
            .ok()
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| Refusal::Conflict(format!("{} has too many versions", config.name)))?;
        let version =
            ConfigVersion::new(n, files, now).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let version = Arc::new(version);
        config.versions.push(version.clone());
        Ok(ConfigChange {
            before,
            config,
            version: version.clone(),
            new_version: Some(version),
        })
    }

    /// The configuration was stored: it takes effect.
    pub fn commit_configuration(&mut self, config: Configuration) {
        let config = Arc::new(config);
        match self.configs.iter_mut().find(|c| c.name == config.name) {
            Some(slot) => *slot = config,
            None => {
                self.configs.push(config);
                self.configs.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
    }

    /// Rule 2: the rollout `spec` asks for, under the new `id`, and the ones it replaces.
    pub fn start_rollout(
        &self,
        spec: RolloutSpec,
        id: String,
        now: DateTime<Utc>,
    ) -> Result<RolloutStart, Refusal> {
        spec.params.validate().map_err(Refusal::BadRequest)?;
        let payload = match spec.target {
            RolloutTarget::Config {
                configuration,
                version,
            } => Payload::Config(self.config_payload(&configuration, version)?),
            RolloutTarget::Package {
                name,
                version,
                selector,
            } => {
                if !self
                    .packages
                    .iter()
                    .any(|p| p.name == name && p.version == version)
                {
                    return Err(Refusal::NotFound(format!(
                        "no package {name:?} at version {version:?}; upload it first"
                    )));
                }
                Payload::Package(PackagePayload {
                    name,
                    version,
                    selector,
                })
            }
        };
        let replaced = self
            .rollouts
            .iter()
            .filter(|r| r.same_target(&payload) && !r.is_terminal())
            .map(|old| Rollout {
                progress: planner::replace(&old.progress),
                updated_at: now,
                ..(**old).clone()
            })
            .collect();
        let rollout = Rollout {
            id,
            payload,
            params: spec.params,
            rollback: spec.rollback,
            progress: Progress::new(),
            created_at: now,
            updated_at: now,
        };
        Ok(RolloutStart { replaced, rollout })
    }

    fn config_payload(
        &self,
        configuration: &str,
        version: Option<u32>,
    ) -> Result<ConfigPayload, Refusal> {
        let config = self
            .configs
            .iter()
            .find(|c| c.name == configuration)
            .ok_or_else(|| Refusal::NotFound(format!("no configuration {configuration:?}")))?;
        let chosen = match version {
            Some(n) => config.version(n),
            None => config.latest(),
        }
        .ok_or_else(|| {
            Refusal::NotFound(format!(
                "configuration {} has no version {}",
                config.name,
                version.map_or("at all".to_string(), |v| v.to_string())
            ))
        })?;
        // What agents outside the new rollout run: the last version rolled out in full.
        let previous_version = self
            .rollouts
            .iter()
            .rev()
            .filter(|r| r.progress.state == State::Stable)
            .find_map(|r| r.config().filter(|c| c.configuration == config.name))
            .map(|c| c.version);
        Ok(ConfigPayload {
            configuration: config.name.clone(),
            version: chosen.version,
            hash: chosen.hash.clone(),
            previous_version,
        })
    }

    /// Rule 3: the rollout `id` after `action`.
    pub fn act(&self, id: &str, action: Action, now: DateTime<Utc>) -> Result<Rollout, Refusal> {
        let rollout = self
            .rollouts
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| Refusal::NotFound(format!("no rollout {id}")))?;
        let progress = match action {
            Action::Pause => planner::pause(&rollout.progress),
            Action::Resume => planner::resume(&rollout.progress, &rollout.params),
            Action::Cancel => planner::cancel(&rollout.progress),
        }
        .map_err(Refusal::Conflict)?;
        Ok(Rollout {
            progress,
            updated_at: now,
            ..(**rollout).clone()
        })
    }

    /// Rule 5: whether configuration `name` may go, given how many agents are assigned to it;
    /// `Ok` holds the ids of its rollouts, which go with it.
    pub fn delete_configuration(
        &self,
        name: &str,
        assigned: usize,
        force: bool,
    ) -> Result<Vec<String>, Refusal> {
        if !self.configs.iter().any(|c| c.name == name) {
            return Err(Refusal::NotFound(format!("no configuration {name:?}")));
        }
        let rollouts: Vec<&Arc<Rollout>> = self
            .rollouts
            .iter()
            .filter(|r| r.configuration() == Some(name))
            .collect();
        if !force {
            if assigned > 0 {
                return Err(Refusal::Conflict(format!(
                    "{assigned} agents are assigned to configuration {name}; change their labels or its selector first, or force the delete"
                )));
            }
            if let Some(r) = rollouts.iter().find(|r| !r.is_terminal()) {
                return Err(Refusal::Conflict(format!(
                    "rollout {} of configuration {name} is {}; cancel it first, or force the delete",
                    r.id, r.progress.state
                )));
            }
        }
        Ok(rollouts.iter().map(|r| r.id.clone()).collect())
    }

    /// The configuration was deleted from the store, with its rollouts.
    pub fn commit_configuration_delete(&mut self, name: &str) {
        self.configs.retain(|c| c.name != name);
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rollouts)
            .into_iter()
            .partition(|r| r.configuration() == Some(name));
        self.rollouts = kept;
        for r in gone {
            self.skipped.remove(&r.id);
            self.failures.remove(&r.id);
        }
        // What agents were told of it no longer holds.
        self.told.clear();
    }

    /// Rule 5: the builds of package `name` at `version` that may be deleted, given the agents
    /// that report running it.
    pub fn delete_package(
        &self,
        name: &str,
        version: &str,
        running: usize,
    ) -> Result<Vec<Arc<Package>>, Refusal> {
        let builds: Vec<Arc<Package>> = self
            .packages
            .iter()
            .filter(|p| p.name == name && p.version == version)
            .cloned()
            .collect();
        if builds.is_empty() {
            return Err(Refusal::NotFound(format!(
                "no package {name:?} at version {version:?}"
            )));
        }
        let delivers = |r: &Rollout| r.package().is_some_and(|p| p.version == version);
        let of_package = |r: &&Arc<Rollout>| r.package().is_some_and(|p| p.name == name);
        if let Some(r) = self
            .rollouts
            .iter()
            .filter(of_package)
            .find(|r| !r.is_terminal() && delivers(r))
        {
            return Err(Refusal::Conflict(format!(
                "rollout {} delivers package {name:?} {version} ({}); cancel it first",
                r.id, r.progress.state
            )));
        }
        let newest = self
            .rollouts
            .iter()
            .rev()
            .filter(of_package)
            .find(|r| !matches!(r.progress.state, State::Cancelled | State::Replaced));
        if let Some(r) = newest.filter(|r| delivers(r)) {
            return Err(Refusal::Conflict(format!(
                "rollout {} ({}) still offers package {name:?} {version} to the agents it selects; roll out another version first",
                r.id, r.progress.state
            )));
        }
        if running > 0 {
            return Err(Refusal::Conflict(format!(
                "{running} agents report running package {name:?} {version}"
            )));
        }
        Ok(builds)
    }

    /// The package version was deleted from the store.
    pub fn commit_package_delete(&mut self, name: &str, version: &str) {
        self.packages
            .retain(|p| !(p.name == name && p.version == version));
    }

    /// The rollout was stored: it takes effect (a new one goes last, as the newest).
    pub fn commit_rollout(&mut self, rollout: Rollout) -> Arc<Rollout> {
        let rollout = Arc::new(rollout);
        self.commit(rollout.clone());
        rollout
    }

    fn commit(&mut self, rollout: Arc<Rollout>) {
        match self.rollouts.iter_mut().find(|r| r.id == rollout.id) {
            Some(slot) => *slot = rollout,
            None => self.rollouts.push(rollout),
        }
    }

    /// Whether an upload is new (`Ok(None)`: store it), the same bytes again (`Ok(Some)`: the
    /// package as it is), or other bytes under a version that exists (refused: a version an
    /// agent may have installed never changes under it).
    pub fn add_package(&self, package: &Package) -> Result<Option<Arc<Package>>, Refusal> {
        match self
            .packages
            .iter()
            .find(|p| package_key(p) == package_key(package))
        {
            None => Ok(None),
            Some(existing) if existing.sha256 == package.sha256 => Ok(Some(existing.clone())),
            Some(existing) => Err(Refusal::Conflict(format!(
                "package {:?} {} for {}/{} exists with other bytes (sha256 {}); a version never changes: upload a new version",
                existing.name,
                existing.version,
                if existing.platform.is_empty() {
                    "any"
                } else {
                    &existing.platform
                },
                if existing.arch.is_empty() {
                    "any"
                } else {
                    &existing.arch
                },
                existing.sha256.to_hex()
            ))),
        }
    }

    /// The package was stored.
    pub fn commit_package(&mut self, package: Package) -> Arc<Package> {
        let package = Arc::new(package);
        self.packages
            .retain(|p| package_key(p) != package_key(&package));
        self.packages.push(package.clone());
        self.packages
            .sort_by(|a, b| package_key(a).cmp(&package_key(b)));
        package
    }
}

/// Most files one configuration may have: as many as an agent may report.
pub const MAX_FILES: usize = 64;
const MAX_FILE_NAME: usize = 255;

/// File names an agent can take as they are: no path (`/`, `\\`, `.`, `..`), no control
/// characters, at most 255 bytes (the empty name is OpAMP's single-file convention); content
/// types likewise plain.
fn check_files(files: &ConfigMap) -> Result<(), String> {
    if files.files.len() > MAX_FILES {
        return Err(format!(
            "a configuration has at most {MAX_FILES} files, not {}",
            files.files.len()
        ));
    }
    for (name, file) in &files.files {
        let plain = |s: &str| s.len() <= MAX_FILE_NAME && !s.chars().any(char::is_control);
        if !plain(name) || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(format!(
                "file name {name:?} must be at most {MAX_FILE_NAME} bytes, without '/', '\\' or control characters, and not . or .."
            ));
        }
        if !plain(&file.content_type) {
            return Err(format!(
                "content type {:?} of {name:?} must be at most {MAX_FILE_NAME} bytes without control characters",
                file.content_type
            ));
        }
    }
    Ok(())
}

fn package_key(p: &Package) -> (&str, &str, &str, &str) {
    (&p.name, &p.version, &p.platform, &p.arch)
}

#[cfg(test)]
mod tests;
