//! The controller: one task that owns configurations and rollouts (their only writer), steps
//! running rollouts with the pure planner, and tells each agent's actor its directive when it
//! changes. Readers get an `Arc<ControlView>` from a `watch`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::planner::{self, Candidate, Outcome};
use super::{Directive, Params, Phase, Progress, Rollout, State, directive};
use crate::config::{
    ComponentSet, ConfigVersion, Configuration, Selector, assign, check_compatible, validate_name,
};
use crate::domain::{
    AgentCapabilities, AgentRecord, ConfigMap, ContentHash, InstanceUid, RemoteConfigStatus,
};
use crate::fleet::Fleet;
use crate::status::Status;
use crate::store::{Store, StoreError};

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
        self.rollouts.iter().rev().find(|r| r.configuration == name)
    }
}

pub struct ConfigurationSpec {
    pub name: String,
    pub selector: Selector,
    pub priority: i32,
    pub files: ConfigMap,
}

pub struct RolloutSpec {
    pub configuration: String,
    pub version: Option<u32>,
    pub params: Params,
    pub rollback: bool,
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
}

/// Loads configurations and rollouts and starts the controller task.
pub async fn spawn_controller(
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    components: Arc<DashMap<ContentHash, Arc<ComponentSet>>>,
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
        if let Some(v) = configs
            .iter()
            .find(|c| c.name == rollout.configuration)
            .and_then(|c| c.version(rollout.version))
        {
            rollout.hash = v.hash.clone();
        }
    }
    let (view_tx, view) = watch::channel(Arc::new(ControlView::default()));
    let (requests, inbox) = mpsc::channel(REQUEST_CAPACITY);
    let task = Task {
        store,
        fleet,
        components,
        configs,
        rollouts,
        told: HashMap::new(),
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
    /// The directive each agent was last given, to tell it only changes.
    told: HashMap<InstanceUid, (Option<ContentHash>, bool, Option<String>)>,
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
        }
        self.publish();
        // Act on the change now rather than at the next tick.
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

    async fn start_rollout(&mut self, spec: RolloutSpec) -> Result<Arc<Rollout>, ControlError> {
        spec.params.validate().map_err(ControlError::BadRequest)?;
        let config = self
            .configs
            .iter()
            .find(|c| c.name == spec.configuration)
            .ok_or_else(|| {
                ControlError::NotFound(format!("no configuration {:?}", spec.configuration))
            })?
            .clone();
        let version = match spec.version {
            Some(n) => config.version(n),
            None => config.latest(),
        }
        .ok_or_else(|| {
            ControlError::NotFound(format!(
                "configuration {} has no version {}",
                config.name,
                spec.version.map_or("at all".to_string(), |v| v.to_string())
            ))
        })?
        .clone();
        let now = Utc::now();
        // What agents outside the new rollout run: the last version rolled out in full.
        let previous_version = self
            .rollouts
            .iter()
            .rev()
            .find(|r| r.configuration == config.name && r.progress.state == State::Stable)
            .map(|r| r.version);
        for old in self
            .rollouts
            .iter_mut()
            .filter(|r| r.configuration == config.name)
        {
            let replaced = planner::replace(&old.progress);
            if replaced != old.progress {
                old.progress = replaced;
                old.updated_at = now;
                self.store.save_rollout(old, &[]).await?;
            }
        }
        let rollout = Rollout {
            id: uuid::Uuid::now_v7().to_string(),
            configuration: config.name.clone(),
            version: version.version,
            hash: version.hash.clone(),
            previous_version,
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
        rollout.progress = progress;
        rollout.updated_at = Utc::now();
        self.store.save_rollout(rollout, &[]).await?;
        Ok(Arc::new(rollout.clone()))
    }

    fn available(&self, agent: &AgentRecord) -> Option<Arc<ComponentSet>> {
        let hash = agent.components_hash.as_ref()?;
        self.components.get(hash).map(|set| set.clone())
    }

    /// Steps running rollouts and refreshes every agent's directive.
    async fn tick(&mut self) {
        let now = Utc::now();
        let now_ms = now.timestamp_millis().max(0) as u64;
        let agents = self.fleet.records();
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
            let Some(version) = self
                .configs
                .iter()
                .find(|c| c.name == rollout.configuration)
                .and_then(|c| c.version(rollout.version))
                .cloned()
            else {
                continue;
            };
            let targets = assigned
                .get(rollout.configuration.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let candidates: Vec<_> = targets
                .iter()
                .map(|agent| Candidate {
                    id: agent.uid,
                    eligible: self.eligible(agent, &version),
                    outcome: outcome(agent, &version.hash),
                })
                .collect();
            let step = planner::step(&rollout.params, &rollout.progress, &candidates, now_ms);
            if step.progress == rollout.progress {
                continue;
            }
            let diff = diff(&rollout.progress, &step.progress);
            let rollout = &mut self.rollouts[i];
            rollout.progress = step.progress;
            rollout.updated_at = now;
            if let Err(error) = self.store.save_rollout(rollout, &diff).await {
                tracing::error!(%error, rollout = %rollout.id, "cannot save rollout progress");
            }
            if !step.send.is_empty() {
                tracing::info!(rollout = %rollout.id, wave = rollout.progress.wave, agents = step.send.len(), "rollout wave started");
            }
            changed = true;
        }
        if changed {
            self.publish();
        }

        let mut latest: HashMap<&str, &Rollout> = HashMap::new();
        for rollout in &self.rollouts {
            latest.insert(rollout.configuration.as_str(), rollout);
        }
        let mut seen = HashSet::with_capacity(agents.len());
        for (agent, config) in agents.iter().zip(&assignment) {
            seen.insert(agent.uid);
            let directive = match config {
                Some(config) => {
                    let available = self.available(agent);
                    let latest = latest.get(config.name.as_str()).copied();
                    directive(config, latest, agent.uid, available.as_deref())
                }
                None => Directive::default(),
            };
            let key = directive.key();
            if self.told.get(&agent.uid) == Some(&key) {
                continue;
            }
            if let Some(handle) = self.fleet.get(&agent.uid)
                && handle.try_direct(directive)
            {
                self.told.insert(agent.uid, key);
            }
        }
        self.told.retain(|uid, _| seen.contains(uid));
    }

    fn eligible(&self, agent: &AgentRecord, version: &ConfigVersion) -> bool {
        agent.status != Status::Disconnected
            && agent
                .capabilities
                .contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
            && check_compatible(version, self.available(agent).as_deref()).is_ok()
    }
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
