//! The controller: one task that owns configurations and rollouts (their only writer). The
//! decisions are pure and live in `crate::core::rollout` ([`Control`] for admin requests,
//! [`plan`] for each tick); this task only reads the fleet, awaits the store, hands directives
//! to the actors and publishes the view readers get from a `watch`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::config::{ComponentSet, assign};
use crate::core::domain::ContentHash;
use crate::core::packages::Package;
use crate::core::rollout::{
    Action, ConfigChange, ConfigurationSpec, Control, ControlView, Pass, Refusal, Rollout,
    RolloutSpec, Tick, plan, runs_package,
};
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

impl From<Refusal> for ControlError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::BadRequest(m) => ControlError::BadRequest(m),
            Refusal::NotFound(m) => ControlError::NotFound(m),
            Refusal::Conflict(m) => ControlError::Conflict(m),
        }
    }
}

enum Request {
    PutConfiguration {
        spec: ConfigurationSpec,
        dry_run: bool,
        reply: oneshot::Sender<Result<ConfigChange, ControlError>>,
    },
    DeleteConfiguration {
        name: String,
        force: bool,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    DeletePackage {
        name: String,
        version: String,
        reply: oneshot::Sender<Result<Vec<Arc<Package>>, ControlError>>,
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

    /// Creates the configuration's next version, or keeps the latest when the content is
    /// unchanged (selector and priority are updated either way); with `dry_run`, only says
    /// what it would do.
    pub async fn put_configuration(
        &self,
        spec: ConfigurationSpec,
        dry_run: bool,
    ) -> Result<ConfigChange, ControlError> {
        self.ask(|reply| Request::PutConfiguration {
            spec,
            dry_run,
            reply,
        })
        .await
    }

    /// Deletes a configuration and its rollouts (see [`Control::delete_configuration`]).
    pub async fn delete_configuration(
        &self,
        name: String,
        force: bool,
    ) -> Result<(), ControlError> {
        self.ask(|reply| Request::DeleteConfiguration { name, force, reply })
            .await
    }

    /// Deletes every build of a package version; returns them, for their bytes to go too.
    pub async fn delete_package(
        &self,
        name: String,
        version: String,
    ) -> Result<Vec<Arc<Package>>, ControlError> {
        self.ask(|reply| Request::DeletePackage {
            name,
            version,
            reply,
        })
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
    let control = Control::new(
        store.load_configurations().await?,
        store.load_rollouts().await?,
        store.load_packages().await?,
        Utc::now(),
    );
    let (view_tx, view) = watch::channel(Arc::new(control.view()));
    let (requests, inbox) = mpsc::channel(REQUEST_CAPACITY);
    let task = Task {
        store,
        fleet,
        components,
        control,
        resume_at: tokio::time::Instant::now() + startup_grace,
        view_tx,
    };
    tracker.spawn(task.run(inbox, cancel));
    Ok(Controller { requests, view })
}

struct Task {
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    components: Arc<DashMap<ContentHash, Arc<ComponentSet>>>,
    control: Control,
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
        self.view_tx.send_replace(Arc::new(self.control.view()));
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::PutConfiguration {
                spec,
                dry_run,
                reply,
            } => {
                let _ = reply.send(self.put_configuration(spec, dry_run).await);
            }
            Request::DeleteConfiguration { name, force, reply } => {
                let _ = reply.send(self.delete_configuration(&name, force).await);
            }
            Request::DeletePackage {
                name,
                version,
                reply,
            } => {
                let _ = reply.send(self.delete_package(&name, &version).await);
            }
            Request::StartRollout { spec, reply } => {
                // Answered once its first step is taken, so the answer says whom it reaches.
                let started = self.start_rollout(spec).await;
                self.publish();
                self.control.force_full();
                self.tick().await;
                let _ = reply.send(started);
                return;
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
        self.control.force_full();
        self.tick().await;
    }

    async fn put_configuration(
        &mut self,
        spec: ConfigurationSpec,
        dry_run: bool,
    ) -> Result<ConfigChange, ControlError> {
        let change = self.control.put_configuration(spec, Utc::now())?;
        if dry_run || change.is_unchanged() {
            return Ok(change);
        }
        self.store
            .save_configuration(&change.config, change.new_version.as_deref())
            .await?;
        self.control.commit_configuration(change.config.clone());
        Ok(change)
    }

    async fn delete_configuration(&mut self, name: &str, force: bool) -> Result<(), ControlError> {
        let view = self.control.view();
        let assigned = self
            .fleet
            .records()
            .iter()
            .filter(|a| assign(&view.configurations, a).is_some_and(|c| c.name == name))
            .count();
        self.control.delete_configuration(name, assigned, force)?;
        self.store.delete_configuration(name).await?;
        self.control.commit_configuration_delete(name);
        Ok(())
    }

    async fn delete_package(
        &mut self,
        name: &str,
        version: &str,
    ) -> Result<Vec<Arc<Package>>, ControlError> {
        let running = self
            .fleet
            .records()
            .iter()
            .filter(|a| runs_package(a, name, version))
            .count();
        let builds = self.control.delete_package(name, version, running)?;
        self.store.delete_package(name, version).await?;
        self.control.commit_package_delete(name, version);
        Ok(builds)
    }

    async fn add_package(&mut self, package: Package) -> Result<Arc<Package>, ControlError> {
        if let Some(same) = self.control.add_package(&package)? {
            return Ok(same);
        }
        self.store.save_package(&package).await?;
        Ok(self.control.commit_package(package))
    }

    async fn start_rollout(&mut self, spec: RolloutSpec) -> Result<Arc<Rollout>, ControlError> {
        let id = uuid::Uuid::now_v7().to_string();
        let start = self.control.start_rollout(spec, id, Utc::now())?;
        // Each replaced rollout takes effect as it is stored, even if a later save fails.
        for old in start.replaced {
            self.store.save_rollout(&old, &[]).await?;
            self.control.commit_rollout(old);
        }
        self.store.save_rollout(&start.rollout, &[]).await?;
        Ok(self.control.commit_rollout(start.rollout))
    }

    async fn act(&mut self, id: &str, action: Action) -> Result<Arc<Rollout>, ControlError> {
        let updated = self.control.act(id, action, Utc::now())?;
        self.store.save_rollout(&updated, &[]).await?;
        Ok(self.control.commit_rollout(updated))
    }

    /// Steps running rollouts and hands changed directives to the actors.
    async fn tick(&mut self) {
        // Before anything is read: an agent deleted and back already must be told afresh.
        for uid in self.fleet.take_forgotten() {
            self.control.forget(uid);
        }
        let Some(pass) = self.control.pass(self.fleet.changes()) else {
            return;
        };
        let plan = {
            // Drained on every pass, so a changed-only pass sees what changed since the last.
            let changed = self.fleet.take_changed();
            let agents = match pass {
                Pass::Changed => changed,
                Pass::Full => self.fleet.records(),
            };
            let components = |hash: &ContentHash| self.components.get(hash).map(|set| set.clone());
            plan(
                &self.control,
                &Tick {
                    agents: &agents,
                    pass,
                    components: &components,
                    grace: tokio::time::Instant::now() < self.resume_at,
                    now: Utc::now(),
                },
            )
        };

        // Only what is stored takes effect: a failed save is planned again next tick, and the
        // directives that follow from it are not handed over.
        let mut unstored = HashSet::new();
        for update in &plan.updates {
            let rollout = &update.rollout;
            match self.store.save_rollout(rollout, &update.diff).await {
                Err(error) => {
                    tracing::error!(%error, rollout = %rollout.id, "cannot save rollout progress; will retry");
                    unstored.insert(rollout.id.clone());
                }
                Ok(()) if !update.sent.is_empty() => {
                    tracing::info!(rollout = %rollout.id, wave = rollout.progress.wave, agents = update.sent.len(), "rollout wave started");
                }
                Ok(()) => {}
            }
        }
        let settled = self.control.settle(plan, &unstored);
        if settled.changed {
            self.publish();
        }
        for tell in settled.tells {
            match self.fleet.get(&tell.uid) {
                Some(handle) if handle.try_direct(tell.directive) => {
                    self.control.told(tell.uid, tell.key);
                }
                // A full mailbox: the next tick is a full pass and tells it again.
                Some(_) => self.control.retry_later(),
                // Gone from the fleet: nothing to tell.
                None => {}
            }
        }
    }
}
