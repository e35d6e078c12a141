//! The agent status state machine: the seven statuses, the transitions allowed between them,
//! and how the facts an agent reports settle into one status. Pure: no IO, no clock.
//!
//! The actor owning an agent builds an [`Observation`] after every report or connection event,
//! asks [`derive`] for the status it implies, and calls [`StatusMachine::settle`], which moves
//! there through allowed transitions only.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Connected,
    Error,
    Configuring,
    Pending,
    Incompatible,
    Upgrading,
    Disconnected,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Connected,
        Status::Error,
        Status::Configuring,
        Status::Pending,
        Status::Incompatible,
        Status::Upgrading,
        Status::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connected => "connected",
            Status::Error => "error",
            Status::Configuring => "configuring",
            Status::Pending => "pending",
            Status::Incompatible => "incompatible",
            Status::Upgrading => "upgrading",
            Status::Disconnected => "disconnected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Dense index, for per-status counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `from → to` is a transition of the status diagram. Self-transitions are not
/// transitions. Three edges are ours, not the diagram's (see ARCHITECTURE.md):
/// Pending → Connected, Pending → Disconnected and Incompatible → Connected.
pub fn allowed(from: Status, to: Status) -> bool {
    use Status::*;
    matches!(
        (from, to),
        (
            Connected,
            Disconnected | Error | Configuring | Pending | Incompatible | Upgrading
        ) | (Disconnected, Connected)
            | (
                Error,
                Connected | Disconnected | Configuring | Pending | Incompatible | Upgrading
            )
            | (Configuring, Connected | Disconnected | Error)
            | (Pending, Configuring | Connected | Disconnected)
            | (
                Incompatible,
                Disconnected | Error | Configuring | Pending | Upgrading | Connected
            )
            | (Upgrading, Connected | Disconnected | Error)
    )
}

/// Whether the agent's connection is live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    Live,
    Lost(String),
}

/// Where the agent is with the last remote config it reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigProgress {
    /// Nothing in flight: unset, or applied.
    Settled,
    Applying,
    Failed(String),
}

/// Where the agent is with a package it was offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpgradeProgress {
    Idle,
    /// Downloading, waiting to install or installing; the reason says which.
    InProgress(String),
    Failed(String),
}

/// The facts one status is derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub connection: Connection,
    pub config: ConfigProgress,
    pub upgrade: UpgradeProgress,
    /// Why the agent's health is bad, if it is.
    pub health_problem: Option<String>,
    /// Why the configuration the agent is headed to cannot run on it, if it cannot.
    pub incompatible: Option<String>,
    /// Why the agent waits for a rollout, if it does.
    pub pending: Option<std::borrow::Cow<'static, str>>,
}

impl Observation {
    pub fn live(config: ConfigProgress, health_problem: Option<String>) -> Self {
        Self {
            connection: Connection::Live,
            config,
            upgrade: UpgradeProgress::Idle,
            health_problem,
            incompatible: None,
            pending: None,
        }
    }
}

/// The status the facts imply, with its reason. A lost connection wins; then what the
/// configuration is doing (being applied, failed); then what an upgrade is doing (failed,
/// in progress); then bad health; then what a rollout says (incompatible, pending).
pub fn derive(obs: &Observation) -> (Status, String) {
    if let Connection::Lost(reason) = &obs.connection {
        return (Status::Disconnected, reason.clone());
    }
    match &obs.config {
        ConfigProgress::Applying => {
            return (Status::Configuring, "applying remote config".to_string());
        }
        ConfigProgress::Failed(msg) if msg.is_empty() => {
            return (Status::Error, "remote config failed".to_string());
        }
        ConfigProgress::Failed(msg) => {
            return (Status::Error, format!("remote config failed: {msg}"));
        }
        ConfigProgress::Settled => {}
    }
    match &obs.upgrade {
        UpgradeProgress::Failed(reason) => return (Status::Error, reason.clone()),
        UpgradeProgress::InProgress(reason) => return (Status::Upgrading, reason.clone()),
        UpgradeProgress::Idle => {}
    }
    if let Some(problem) = &obs.health_problem {
        return (Status::Error, problem.clone());
    }
    if let Some(reason) = &obs.incompatible {
        return (Status::Incompatible, reason.clone());
    }
    if let Some(reason) = &obs.pending {
        return (Status::Pending, reason.to_string());
    }
    (Status::Connected, CONNECTED_REASON.to_string())
}

const CONNECTED_REASON: &str = "connected";

/// One recorded change of status. `from` is `None` for an agent's very first status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Option<Status>,
    pub to: Status,
    pub reason: String,
}

/// An agent's current status and reason; moves only along allowed transitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusMachine {
    status: Option<Status>,
    reason: String,
}

impl StatusMachine {
    /// Resumes from a status known before (e.g. read back from the store).
    pub fn resume(status: Status, reason: String) -> Self {
        Self {
            status: Some(status),
            reason,
        }
    }

    pub fn status(&self) -> Option<Status> {
        self.status
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Moves to `target`. When `current → target` is not allowed, the agent goes through
    /// Connected, which every status may reach and which may reach every status; a new agent
    /// starts at Connected, as in the diagram. Returns the transitions made, in order; empty
    /// when the status is unchanged (the reason is still updated).
    pub fn settle(&mut self, target: Status, reason: String) -> Vec<Transition> {
        let mut made = Vec::new();
        match self.status {
            Some(current) if current == target => {}
            Some(current) if allowed(current, target) => {}
            Some(current) => {
                made.push(Transition {
                    from: Some(current),
                    to: Status::Connected,
                    reason: CONNECTED_REASON.to_string(),
                });
                self.status = Some(Status::Connected);
            }
            None => {
                let first_reason = if target == Status::Connected {
                    reason.clone()
                } else {
                    CONNECTED_REASON.to_string()
                };
                made.push(Transition {
                    from: None,
                    to: Status::Connected,
                    reason: first_reason,
                });
                self.status = Some(Status::Connected);
            }
        }
        if self.status != Some(target) {
            made.push(Transition {
                from: self.status,
                to: target,
                reason: reason.clone(),
            });
            self.status = Some(target);
        }
        self.reason = reason;
        made
    }
}

#[cfg(test)]
mod tests;
