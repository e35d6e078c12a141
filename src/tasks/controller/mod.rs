//! The controller: one task that owns configurations and rollouts (their only writer), steps
//! running rollouts with the pure planner, and tells each agent's actor its directive when it
//! changes. Readers get an `Arc<ControlView>` from a `watch`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::config::{
    ComponentSet, ConfigVersion, Configuration, Selector, assign, check_compatible, validate_name,
};
use crate::core::domain::PackageState;
use crate::core::domain::{
    AgentCapabilities, AgentRecord, ConfigMap, ContentHash, InstanceUid, RemoteConfigStatus,
};
use crate::core::packages::{Package, choose};
use crate::core::rollout::planner::{self, Candidate, Outcome};
use crate::core::rollout::{
    ConfigPayload, Directive, DirectiveKey, PackagePayload, Params, Payload, Phase, Progress,
    Rollout, State, directive,
};
use crate::core::status::Status;
use crate::edge::store::{Store, StoreError};
use crate::tasks::fleet::Fleet;

/// How often running rollouts are stepped and directives refreshed.
pub const TICK: Duration = Duration::from_millis(250);
const REQUEST_CAPACITY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("server is shutting down")]
    Stopped,
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
    /// Per rollout id, the agents it passes over and why.
    pub skipped: HashMap<String, BTreeMap<InstanceUid, String>>,
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
}

pub struct ConfigurationSpec {
    pub name: String,
    pub selector: Selector,
    pub priority: i32,
    pub files: ConfigMap,
}

pub struct RolloutSpec {
    pub target: RolloutTarget,
    pub params: Params,
    pub rollback: bool,
}

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

#[derive(Clone, Copy, Debug)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

enum Request {
    PutConfiguration {
        spec: ConfigurationSpec,
        reply: oneshot::Sender<Result<Arc<ConfigVersion>, ControlError>>,
    },
    StartRollout {
        spec: RolloutSpec,
        reply: oneshot::Sender<Result<Arc<Rollout>, ControlError>>,
    },
    Act {
        id: String,
        action: Action,
        reply: oneshot::Sender<Result<Arc<Rollout>, ControlError>>,
    },
    AddPackage {
        package: Package,
        reply: oneshot::Sender<Result<Arc<Package>, ControlError>>,
    },
}

/// The way in for the API: requests go to the controller task, reads come from its view.
#[derive(Clone)]
pub struct Controller {
    requests: mpsc::Sender<Request>,
    view: watch::Receiver<Arc<ControlView>>,
}

impl Controller {
    pub fn view(&self) -> Arc<ControlView> {
        self.view.borrow().clone()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> Request,
    ) -> Result<T, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| ControlError::Stopped)?;
        answer.await.map_err(|_| ControlError::Stopped)?
    }

    /// Creates the configuration's next version, or returns the latest when the content is
    /// unchanged (selector and priority are updated either way).
    pub async fn put_configuration(
        &self,
        spec: ConfigurationSpec,
    ) -> Result<Arc<ConfigVersion>, ControlError> {
        self.ask(|reply| Request::PutConfiguration { spec, reply })
            .await
    }

    pub async fn start_rollout(&self, spec: RolloutSpec) -> Result<Arc<Rollout>, ControlError> {
        self.ask(|reply| Request::StartRollout { spec, reply })
            .await
    }

    pub async fn act(&self, id: String, action: Action) -> Result<Arc<Rollout>, ControlError> {
        self.ask(|reply| Request::Act { id, action, reply }).await
    }

    /// Records an uploaded package (its bytes are already in the blob store).
    pub async fn add_package(&self, package: Package) -> Result<Arc<Package>, ControlError> {
        self.ask(|reply| Request::AddPackage { package, reply })
            .await
    }
}

/// Loads configurations and rollouts and starts the controller task.
pub async fn spawn_controller(
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    components: Arc<DashMap<ContentHash, Arc<ComponentSet>>>,
    startup_grace: Duration,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Controller, StoreError> {
    let configs: Vec<Arc<Configuration>> = store
        .load_configurations()
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let mut rollouts = store.load_rollouts().await?;
    for rollout in &mut rollouts {
        if let Payload::Config(c) = &mut rollout.payload
            && let Some(v) = configs
                .iter()
                .find(|cfg| cfg.name == c.configuration)
                .and_then(|cfg| cfg.version(c.version))
        {
            c.hash = v.hash.clone();
        }
    }
    let packages = store
        .load_packages()
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let (view_tx, view) = watch::channel(Arc::new(ControlView::default()));
    let (requests, inbox) = mpsc::channel(REQUEST_CAPACITY);
    let task = Task {
        store,
        fleet,
        components,
        configs,
        rollouts,
        packages,
        skipped: HashMap::new(),
        told: HashMap::new(),
        seen_changes: None,
        retry: false,
        started: Utc::now(),
        resume_at: tokio::time::Instant::now() + startup_grace,
        view_tx,
    };
    task.publish();
    tracker.spawn(task.run(inbox, cancel));
    Ok(Controller { requests, view })
}

struct Task {
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    components: Arc<DashMap<ContentHash, Arc<ComponentSet>>>,
    configs: Vec<Arc<Configuration>>,
    rollouts: Vec<Rollout>,
    packages: Vec<Arc<Package>>,
    /// Per rollout, the matching agents it passes over and why (as of the last tick).
    skipped: HashMap<String, BTreeMap<InstanceUid, String>>,
    /// The directive each agent was last given, to tell it only changes.
    told: HashMap<InstanceUid, DirectiveKey>,
    /// The fleet's change counter at the last full tick; `None` forces the next one.
    seen_changes: Option<u64>,
    /// A directive could not be handed over (full mailbox): try again next tick.
    retry: bool,
    /// When this process started; rollouts created before it were restored from the store.
    started: chrono::DateTime<Utc>,
    /// Restored rollouts wait until then, so agents have time to reconnect after a restart
    /// before anyone is counted gone (else a rollout could finish early, or skip agents).
    resume_at: tokio::time::Instant,
    view_tx: watch::Sender<Arc<ControlView>>,
}

impl Task {
    async fn run(mut self, mut inbox: mpsc::Receiver<Request>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                request = inbox.recv() => match request {
                    Some(request) => self.handle(request).await,
                    None => break,
                },
                _ = tick.tick() => self.tick().await,
            }
        }
    }

    fn publish(&self) {
        self.view_tx.send_replace(Arc::new(ControlView {
            configurations: self.configs.clone(),
            rollouts: self.rollouts.iter().cloned().map(Arc::new).collect(),
            packages: self.packages.clone(),
            skipped: self.skipped.clone(),
        }));
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::PutConfiguration { spec, reply } => {
                let _ = reply.send(self.put_configuration(spec).await);
            }
            Request::StartRollout { spec, reply } => {
                let _ = reply.send(self.start_rollout(spec).await);
            }
            Request::Act { id, action, reply } => {
                let _ = reply.send(self.act(&id, action).await);
            }
            Request::AddPackage { package, reply } => {
                let _ = reply.send(self.add_package(package).await);
            }
        }
        self.publish();
        // Act on the change now rather than at the next tick.
        self.seen_changes = None;
        self.tick().await;
    }

    async fn put_configuration(
        &mut self,
        spec: ConfigurationSpec,
    ) -> Result<Arc<ConfigVersion>, ControlError> {
        validate_name(&spec.name).map_err(ControlError::BadRequest)?;
        if spec.files.files.is_empty() {
            return Err(ControlError::BadRequest(
                "a configuration needs at least one file".into(),
            ));
        }
        let now = Utc::now();
        let existing = self.configs.iter().position(|c| c.name == spec.name);
        let mut config = match existing {
            Some(i) => (*self.configs[i]).clone(),
            None => Configuration {
                name: spec.name.clone(),
                selector: spec.selector.clone(),
                priority: spec.priority,
                versions: Vec::new(),
                created_at: now,
                updated_at: now,
            },
        };
        config.selector = spec.selector;
        config.priority = spec.priority;
        config.updated_at = now;
        let unchanged = config
            .latest()
            .filter(|latest| latest.hash == spec.files.hash())
            .cloned();
        let (version, new_version) = match unchanged {
            Some(latest) => (latest, None),
            None => {
                let n = config.versions.len() as u32 + 1;
                let version = ConfigVersion::new(n, spec.files, now)
                    .map_err(|e| ControlError::BadRequest(e.to_string()))?;
                let version = Arc::new(version);
                config.versions.push(version.clone());
                (version.clone(), Some(version))
            }
        };
        self.store
            .save_configuration(&config, new_version.as_deref())
            .await?;
        let config = Arc::new(config);
        match existing {
            Some(i) => self.configs[i] = config,
            None => {
                self.configs.push(config);
                self.configs.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        Ok(version)
    }

    async fn add_package(&mut self, package: Package) -> Result<Arc<Package>, ControlError> {
        self.store.save_package(&package).await?;
        let package = Arc::new(package);
        self.packages.retain(|p| {
            (&p.name, &p.version, &p.platform, &p.arch)
                != (
                    &package.name,
                    &package.version,
                    &package.platform,
                    &package.arch,
                )
        });
        self.packages.push(package.clone());
        self.packages.sort_by(|a, b| {
            (&a.name, &a.version, &a.platform, &a.arch).cmp(&(
                &b.name,
                &b.version,
                &b.platform,
                &b.arch,
            ))
        });
        Ok(package)
    }

    async fn start_rollout(&mut self, spec: RolloutSpec) -> Result<Arc<Rollout>, ControlError> {
        spec.params.validate().map_err(ControlError::BadRequest)?;
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
                    return Err(ControlError::NotFound(format!(
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
        let now = Utc::now();
        // A new rollout of the same configuration, or of the same package, replaces the old.
        for old in self
            .rollouts
            .iter_mut()
            .filter(|r| same_target(&r.payload, &payload))
        {
            let replaced = planner::replace(&old.progress);
            if replaced != old.progress {
                let updated = Rollout {
                    progress: replaced,
                    updated_at: now,
                    ..old.clone()
                };
                self.store.save_rollout(&updated, &[]).await?;
                *old = updated;
            }
        }
        let rollout = Rollout {
            id: uuid::Uuid::now_v7().to_string(),
            payload,
            params: spec.params,
            rollback: spec.rollback,
            progress: Progress::new(),
            created_at: now,
            updated_at: now,
        };
        self.store.save_rollout(&rollout, &[]).await?;
        let shown = Arc::new(rollout.clone());
        self.rollouts.push(rollout);
        Ok(shown)
    }

    fn config_payload(
        &self,
        configuration: &str,
        version: Option<u32>,
    ) -> Result<ConfigPayload, ControlError> {
        let config = self
            .configs
            .iter()
            .find(|c| c.name == configuration)
            .ok_or_else(|| ControlError::NotFound(format!("no configuration {configuration:?}")))?;
        let chosen = match version {
            Some(n) => config.version(n),
            None => config.latest(),
        }
        .ok_or_else(|| {
            ControlError::NotFound(format!(
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

    async fn act(&mut self, id: &str, action: Action) -> Result<Arc<Rollout>, ControlError> {
        let rollout = self
            .rollouts
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| ControlError::NotFound(format!("no rollout {id}")))?;
        let progress = match action {
            Action::Pause => planner::pause(&rollout.progress),
            Action::Resume => planner::resume(&rollout.progress, &rollout.params),
            Action::Cancel => planner::cancel(&rollout.progress),
        }
        .map_err(ControlError::Conflict)?;
        let updated = Rollout {
            progress,
            updated_at: Utc::now(),
            ..rollout.clone()
        };
        self.store.save_rollout(&updated, &[]).await?;
        *rollout = updated;
        Ok(Arc::new(rollout.clone()))
    }

    fn available(&self, agent: &AgentRecord) -> Option<Arc<ComponentSet>> {
        let hash = agent.components_hash.as_ref()?;
        self.components.get(hash).map(|set| set.clone())
    }

    /// Steps running rollouts and refreshes every agent's directive.
    async fn tick(&mut self) {
        // A fleet that only heartbeats, with no rollout running, needs nothing: no scan.
        let changes = self.fleet.changes();
        let running = self
            .rollouts
            .iter()
            .any(|r| r.is_active() || r.progress.state == State::Error);
        if !running && self.seen_changes == Some(changes) && self.told_all() {
            return;
        }
        // With no rollout running and nothing of ours changed since the last full pass, only
        // the agents whose records changed can need a new directive.
        let only_changed = !running && self.seen_changes.is_some() && self.told_all();
        self.seen_changes = Some(changes);
        let now = Utc::now();
        let now_ms = now.timestamp_millis().max(0) as u64;
        let changed = self.fleet.take_changed();
        let agents = if only_changed {
            changed
        } else {
            self.fleet.records()
        };
        // Each agent's configuration, worked out once a tick.
        let configs = self.configs.clone();
        let assignment: Vec<Option<&Arc<Configuration>>> =
            agents.iter().map(|a| assign(&configs, a)).collect();
        let mut assigned: HashMap<&str, Vec<&Arc<AgentRecord>>> = HashMap::new();
        for (agent, config) in agents.iter().zip(&assignment) {
            if let Some(config) = config {
                assigned
                    .entry(config.name.as_str())
                    .or_default()
                    .push(agent);
            }
        }

        let mut changed = false;
        for i in 0..self.rollouts.len() {
            let rollout = &self.rollouts[i];
            if !(rollout.is_active() || rollout.progress.state == State::Error) {
                continue;
            }
            if rollout.created_at < self.started && tokio::time::Instant::now() < self.resume_at {
                continue;
            }
            let mut skipped = BTreeMap::new();
            let candidates: Vec<_> = match &rollout.payload {
                Payload::Config(payload) => {
                    let Some(version) = configs
                        .iter()
                        .find(|c| c.name == payload.configuration)
                        .and_then(|c| c.version(payload.version))
                        .cloned()
                    else {
                        continue;
                    };
                    let targets = assigned
                        .get(payload.configuration.as_str())
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let mut candidates: Vec<_> = targets
                        .iter()
                        .map(|agent| Candidate {
                            id: agent.uid,
                            eligible: self.eligible(agent, &version),
                            outcome: outcome(agent, &version.hash),
                        })
                        .collect();
                    // Agents sent the version and since assigned elsewhere still report on it.
                    let target_ids: HashSet<InstanceUid> = targets.iter().map(|a| a.uid).collect();
                    for (uid, phase) in &rollout.progress.agents {
                        if matches!(phase, Phase::Sent { .. })
                            && !target_ids.contains(uid)
                            && let Some(agent) = self.fleet.get(uid)
                        {
                            candidates.push(Candidate {
                                id: *uid,
                                eligible: false,
                                outcome: outcome(&agent.record(), &version.hash),
                            });
                        }
                    }
                    candidates
                }
                Payload::Package(payload) => agents
                    .iter()
                    .filter(|a| payload.selector.matches(|k| a.label(k)))
                    .map(|agent| {
                        let variant =
                            choose(&self.packages, &payload.name, &payload.version, agent);
                        let skip = upgrade_skip_reason(agent, variant.is_some());
                        if let Some(reason) = &skip {
                            skipped.insert(agent.uid, reason.clone());
                        }
                        Candidate {
                            id: agent.uid,
                            eligible: skip.is_none() && agent.status != Status::Disconnected,
                            outcome: variant.and_then(|v| package_outcome(agent, payload, v)),
                        }
                    })
                    .collect(),
            };
            if self.skipped.get(&rollout.id) != Some(&skipped) {
                self.skipped.insert(rollout.id.clone(), skipped);
                changed = true;
            }
            let step = planner::step(&rollout.params, &rollout.progress, &candidates, now_ms);
            if step.progress == rollout.progress {
                continue;
            }
            let diff = diff(&rollout.progress, &step.progress);
            let updated = Rollout {
                progress: step.progress,
                updated_at: now,
                ..rollout.clone()
            };
            // Only what is stored takes effect: a failed save is tried again next tick.
            if let Err(error) = self.store.save_rollout(&updated, &diff).await {
                tracing::error!(%error, rollout = %updated.id, "cannot save rollout progress; will retry");
                continue;
            }
            if !step.send.is_empty() {
                tracing::info!(rollout = %updated.id, wave = updated.progress.wave, agents = step.send.len(), "rollout wave started");
            }
            self.rollouts[i] = updated;
            changed = true;
        }
        if changed {
            self.publish();
        }

        let mut latest_config: HashMap<&str, &Rollout> = HashMap::new();
        for rollout in &self.rollouts {
            if let Some(name) = rollout.configuration() {
                latest_config.insert(name, rollout);
            }
        }
        let upgrades: Vec<&Rollout> = self
            .rollouts
            .iter()
            .rev()
            .filter(|r| r.package().is_some())
            .collect();
        self.retry = false;
        let mut seen = HashSet::with_capacity(agents.len());
        for (agent, config) in agents.iter().zip(&assignment) {
            seen.insert(agent.uid);
            let mut directive = match config {
                Some(config) => {
                    let available = self.available(agent);
                    let latest = latest_config.get(config.name.as_str()).copied();
                    directive(config, latest, agent, available.as_deref())
                }
                None => Directive::default(),
            };
            // The newest upgrade rollout whose selector takes the agent decides its package.
            if let Some(upgrade) = upgrades.iter().find(|r| {
                r.package()
                    .is_some_and(|p| p.selector.matches(|k| agent.label(k)))
            }) {
                let (package, pending) = package_directive(upgrade, agent, &self.packages);
                directive.package = package;
                directive.pending |= pending;
            }
            let key = directive.key();
            if self.told.get(&agent.uid) == Some(&key) {
                continue;
            }
            match self.fleet.get(&agent.uid) {
                Some(handle) if handle.try_direct(directive) => {
                    self.told.insert(agent.uid, key);
                }
                Some(_) => self.retry = true,
                None => {}
            }
        }
        if !only_changed {
            self.told.retain(|uid, _| seen.contains(uid));
        }
    }

    /// Every directive was handed over (a full mailbox leaves one to retry).
    fn told_all(&self) -> bool {
        !self.retry
    }

    fn eligible(&self, agent: &AgentRecord, version: &ConfigVersion) -> bool {
        agent.status != Status::Disconnected
            && agent
                .capabilities
                .contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
            && check_compatible(version, self.available(agent).as_deref()).is_ok()
    }
}

/// Whether two rollouts deliver to the same thing: one replaces the other.
fn same_target(a: &Payload, b: &Payload) -> bool {
    match (a, b) {
        (Payload::Config(a), Payload::Config(b)) => a.configuration == b.configuration,
        (Payload::Package(a), Payload::Package(b)) => a.name == b.name,
        _ => false,
    }
}

/// Why an upgrade passes an agent over, if it does.
fn upgrade_skip_reason(agent: &AgentRecord, has_variant: bool) -> Option<String> {
    if !agent
        .capabilities
        .contains(AgentCapabilities::ACCEPTS_PACKAGES)
    {
        return Some("agent does not accept packages".into());
    }
    if !has_variant {
        let attr = |k: &str| agent.label(k).map(|v| v.into_owned()).unwrap_or_default();
        return Some(format!(
            "no package for {}={} {}={}",
            crate::core::packages::PLATFORM_ATTRIBUTE,
            attr(crate::core::packages::PLATFORM_ATTRIBUTE),
            crate::core::packages::ARCH_ATTRIBUTE,
            attr(crate::core::packages::ARCH_ATTRIBUTE)
        ));
    }
    None
}

/// What the agent reports of the upgrade: installing, installed, failed. An agent that comes
/// back with the new `service.version` after restarting has it too.
fn package_outcome(
    agent: &AgentRecord,
    payload: &PackagePayload,
    variant: &Package,
) -> Option<Outcome> {
    let hash = variant.hash();
    if let Some(report) = agent
        .packages
        .as_ref()
        .and_then(|p| p.packages.get(payload.name.as_str()))
    {
        if report.state == PackageState::Installed && report.agent_has_hash == hash {
            return Some(Outcome::Applied);
        }
        if report.server_offered_hash == hash {
            match report.state {
                PackageState::InstallFailed => return Some(Outcome::Failed),
                s if s.in_progress() => return Some(Outcome::Applying),
                _ => {}
            }
        }
    }
    let running = agent.label("service.version")?;
    (running.trim_start_matches('v') == payload.version.trim_start_matches('v'))
        .then_some(Outcome::Applied)
}

/// The package an agent should get from an upgrade rollout, and whether it waits for a wave.
fn package_directive(
    rollout: &Rollout,
    agent: &AgentRecord,
    packages: &[Arc<Package>],
) -> (Option<Arc<Package>>, bool) {
    let Some(payload) = rollout.package() else {
        return (None, false);
    };
    let phase = rollout.progress.agents.get(&agent.uid).copied();
    let reached = matches!(
        phase,
        Some(Phase::Sent { .. } | Phase::Completed | Phase::Failed | Phase::TimedOut)
    );
    let offered = rollout.progress.state == State::Stable || reached;
    // An agent already running that version needs nothing, whatever hash it reports.
    let runs_it = agent
        .label("service.version")
        .is_some_and(|v| v.trim_start_matches('v') == payload.version.trim_start_matches('v'));
    let package = (offered && !runs_it)
        .then(|| choose(packages, &payload.name, &payload.version, agent).cloned())
        .flatten();
    (
        package,
        rollout.is_active() && phase == Some(Phase::Waiting),
    )
}

/// What the agent last reported about `hash`, if that is the hash it reported on.
fn outcome(agent: &AgentRecord, hash: &ContentHash) -> Option<Outcome> {
    let reported = agent.remote_config.as_ref().filter(|rc| &rc.hash == hash)?;
    match reported.status {
        RemoteConfigStatus::Applied => Some(Outcome::Applied),
        RemoteConfigStatus::Failed => Some(Outcome::Failed),
        RemoteConfigStatus::Applying => Some(Outcome::Applying),
        RemoteConfigStatus::Unset => None,
    }
}

/// The per-agent rows that changed between two progresses (`None`: removed).
fn diff(
    before: &Progress<InstanceUid>,
    after: &Progress<InstanceUid>,
) -> Vec<(InstanceUid, Option<Phase>)> {
    let mut rows: Vec<_> = after
        .agents
        .iter()
        .filter(|(uid, phase)| before.agents.get(uid) != Some(phase))
        .map(|(uid, phase)| (*uid, Some(*phase)))
        .collect();
    rows.extend(
        before
            .agents
            .keys()
            .filter(|uid| !after.agents.contains_key(uid))
            .map(|uid| (*uid, None)),
    );
    rows
}
