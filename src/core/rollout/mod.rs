//! Staged rollouts of configuration versions and packages, all pure:
//! - this module: the rollout model ([`Rollout`], its [`Payload`]);
//! - [`planner`]: one rollout's next step (waves, outcomes, errors);
//! - [`directive`]: what one agent should be told;
//! - [`control`]: the controller's state, the admin requests it decides and the view readers
//!   get;
//! - [`plan`]: one controller tick: every running rollout stepped, every changed directive.
//!
//! The task that drives them, awaits the store and talks to the actors is
//! `crate::tasks::controller`.

pub mod control;
pub mod directive;
pub mod plan;
pub mod planner;

use chrono::{DateTime, Utc};

pub use control::{
    Action, ConfigChange, ConfigurationSpec, Control, ControlView, Pass, Plan, Refusal,
    RolloutSpec, RolloutTarget, Skipped, Tell, Update,
};
pub use directive::{
    Directive, DirectiveKey, WAVE_PENDING, directive, incompatibility, package_directive,
    runs_package,
};
pub use plan::{Tick, plan};
pub use planner::{Counts, Params, Phase, Progress, State};

use crate::core::config::Selector;
use crate::core::domain::{ContentHash, InstanceUid};

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

    /// Pending, started or paused: it may still send.
    pub fn is_active(&self) -> bool {
        matches!(
            self.progress.state,
            State::Pending | State::Started | State::Paused
        )
    }

    /// The controller steps it each tick: active, or stopped in error (the outcomes of the
    /// agents it sent keep counting, rule 6 of the planner).
    pub fn is_stepped(&self) -> bool {
        self.is_active() || self.progress.state == State::Error
    }

    pub(crate) fn is_terminal(&self) -> bool {
        self.progress.state.is_terminal()
    }

    /// Whether it delivers to the same thing as `other` (one replaces the other): the same
    /// configuration, or the same package.
    pub fn same_target(&self, other: &Payload) -> bool {
        match (&self.payload, other) {
            (Payload::Config(a), Payload::Config(b)) => a.configuration == b.configuration,
            (Payload::Package(a), Payload::Package(b)) => a.name == b.name,
            _ => false,
        }
    }
}
