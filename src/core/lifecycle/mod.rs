//! The administrative lifecycle of agents: which agents Corral manages, beside the runtime
//! status it derives. Pure: no IO, no clock.
//!
//! The seed's eight states map onto Corral as follows; Deleted is not a state (the agent's
//! record is removed) and Disconnected is the runtime status of a registered or managed agent.
//!
//! | state | what Corral does with the agent |
//! |---|---|
//! | `discovered` | answers it (status, full-state requests) and sends it nothing else |
//! | `registered` | shows and tracks it; no rollout, upgrade or command reaches it |
//! | `managed` | rollouts, upgrades and commands reach it |
//! | `ignored` | answers it minimally (or refuses it), keeps nothing new, never rediscovers it |
//! | `maintenance` | tracked, excluded from rollouts, upgrades, restarts and bulk actions |
//! | `not_found` | pre-registered and not heard from yet (or gone longer than the retention) |
//!
//! Rules, each a named test:
//! 1. Admins move an agent only along [`admin_allowed`] edges; anything else is refused with
//!    the list of allowed targets ([`AdminState::admin_moves`]).
//! 2. Maintenance remembers where it came from, and resuming returns exactly there.
//! 3. A first contact ([`on_first_contact`]) admits a new agent per the admission setting, or
//!    ignores it when an ignore rule matches; a pre-registered (`not_found`) agent becomes
//!    registered or managed per the admission setting, never discovered.
//! 4. Retention ([`on_retention`]) moves a pre-registered managed agent back to `not_found` and
//!    deletes agents nobody pre-registered; it keeps agents in maintenance (often offline on
//!    purpose), ignored agents (their data stays until an admin deletes them) and pre-registered
//!    agents not managed yet.
//! 5. No sequence of admin moves and system events ever produces a move outside
//!    [`admin_allowed`] ∪ the system edges (property test).

mod rules;

use std::fmt;

pub use rules::{Expected, IgnoreRule};

/// Where an agent in maintenance returns to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resume {
    Registered,
    Managed,
}

impl Resume {
    pub fn state(self) -> AdminState {
        match self {
            Resume::Registered => AdminState::Registered,
            Resume::Managed => AdminState::Managed,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdminState {
    Discovered,
    Registered,
    #[default]
    Managed,
    Ignored,
    Maintenance(Resume),
    NotFound,
}

/// The state names the API and CLI take; maintenance is one name whatever it returns to.
pub const STATE_NAMES: [&str; 6] = [
    "discovered",
    "registered",
    "managed",
    "ignored",
    "maintenance",
    "not_found",
];

impl AdminState {
    /// One state per name of [`STATE_NAMES`], in that order.
    pub const NAMED: [AdminState; 6] = [
        AdminState::Discovered,
        AdminState::Registered,
        AdminState::Managed,
        AdminState::Ignored,
        AdminState::Maintenance(Resume::Managed),
        AdminState::NotFound,
    ];

    pub const ALL: [AdminState; 7] = [
        AdminState::Discovered,
        AdminState::Registered,
        AdminState::Managed,
        AdminState::Ignored,
        AdminState::Maintenance(Resume::Registered),
        AdminState::Maintenance(Resume::Managed),
        AdminState::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Discovered => "discovered",
            AdminState::Registered => "registered",
            AdminState::Managed => "managed",
            AdminState::Ignored => "ignored",
            AdminState::Maintenance(_) => "maintenance",
            AdminState::NotFound => "not_found",
        }
    }

    /// Dense index over the six names, for per-state counters.
    pub fn index(self) -> usize {
        match self {
            AdminState::Discovered => 0,
            AdminState::Registered => 1,
            AdminState::Managed => 2,
            AdminState::Ignored => 3,
            AdminState::Maintenance(_) => 4,
            AdminState::NotFound => 5,
        }
    }

    /// The stored form: the name, and for maintenance where it returns to
    /// (`maintenance:managed`).
    pub fn to_stored(self) -> String {
        match self {
            AdminState::Maintenance(Resume::Registered) => "maintenance:registered".into(),
            AdminState::Maintenance(Resume::Managed) => "maintenance:managed".into(),
            other => other.as_str().into(),
        }
    }

    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "maintenance:registered" => Some(AdminState::Maintenance(Resume::Registered)),
            "maintenance:managed" | "maintenance" => Some(AdminState::Maintenance(Resume::Managed)),
            other => Self::ALL
                .into_iter()
                .find(|st| !matches!(st, AdminState::Maintenance(_)) && st.as_str() == other),
        }
    }

    /// Configurations, packages, commands and connection settings reach the agent.
    pub fn is_managed(self) -> bool {
        self == AdminState::Managed
    }

    /// Corral keeps the agent's reports, history and status (everything but ignored).
    pub fn is_tracked(self) -> bool {
        self != AdminState::Ignored
    }

    /// Connection settings (heartbeat interval, own telemetry) are offered: the agent is
    /// admitted, though maybe not managed.
    pub fn gets_settings(self) -> bool {
        matches!(
            self,
            AdminState::Registered | AdminState::Managed | AdminState::Maintenance(_)
        )
    }

    /// The state an admin asking for `name` means from here: `maintenance` remembers where
    /// it came from, and `managed`/`registered` from maintenance are its resume.
    pub fn target(self, name: &str) -> Option<AdminState> {
        Some(match name {
            "maintenance" => match self {
                AdminState::Registered => AdminState::Maintenance(Resume::Registered),
                AdminState::Maintenance(r) => AdminState::Maintenance(r),
                _ => AdminState::Maintenance(Resume::Managed),
            },
            "discovered" => AdminState::Discovered,
            "registered" => AdminState::Registered,
            "managed" => AdminState::Managed,
            "ignored" => AdminState::Ignored,
            "not_found" => AdminState::NotFound,
            _ => return None,
        })
    }

    /// The state names an admin may move the agent to from here.
    pub fn admin_moves(self) -> Vec<&'static str> {
        STATE_NAMES
            .into_iter()
            .filter(|name| self.target(name).is_some_and(|to| admin_allowed(self, to)))
            .collect()
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an admin may move an agent `from → to`. The seed's edges, and three of ours:
/// Discovered → Managed (approve: register and manage in one step), Managed → Registered
/// (unmanage) and Ignored → Registered (take an ignored agent back). Self-moves are not moves.
pub fn admin_allowed(from: AdminState, to: AdminState) -> bool {
    use AdminState::*;
    match (from, to) {
        (Discovered, Registered | Managed | Ignored) => true,
        (Registered, Managed | Ignored | Maintenance(Resume::Registered)) => true,
        (Managed, Registered | Ignored | Maintenance(Resume::Managed)) => true,
        (Maintenance(resume), to) => to == resume.state(),
        (Ignored, Registered) => true,
        (NotFound, Registered | Managed | Ignored) => true,
        _ => false,
    }
}

/// An admin's move that the lifecycle does not allow from the agent's state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot move an agent from {from} to {asked}; allowed: {}", allowed_text(.allowed))]
pub struct MoveRefused {
    pub from: AdminState,
    pub asked: String,
    pub allowed: Vec<&'static str>,
}

fn allowed_text(allowed: &[&str]) -> String {
    if allowed.is_empty() {
        "none".into()
    } else {
        allowed.join(", ")
    }
}

/// An admin asks to move an agent in `from` to the state named `name`.
pub fn request(from: AdminState, name: &str) -> Result<AdminState, MoveRefused> {
    match from.target(name) {
        Some(to) if admin_allowed(from, to) => Ok(to),
        _ => Err(MoveRefused {
            from,
            asked: name.to_string(),
            allowed: from.admin_moves(),
        }),
    }
}

/// How new agents are admitted (`--admission`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Admission {
    /// Straight to managed.
    #[default]
    Auto,
    /// Stop at registered until an admin manages them.
    Register,
    /// Stay discovered until an admin approves them.
    Manual,
}

impl Admission {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Admission::Auto),
            "register" => Some(Admission::Register),
            "manual" => Some(Admission::Manual),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Admission::Auto => "auto",
            Admission::Register => "register",
            Admission::Manual => "manual",
        }
    }
}

/// The admin state an agent takes when it first speaks to Corral: `known` is its state if an
/// admin pre-registered it (by uid or by identifying attributes), `ignore_rule` whether an
/// ignore rule matches it.
pub fn on_first_contact(
    known: Option<AdminState>,
    admission: Admission,
    ignore_rule: bool,
) -> AdminState {
    match known {
        Some(AdminState::NotFound) => match admission {
            Admission::Auto => AdminState::Managed,
            // An admin named this agent: it is admitted, never merely discovered.
            Admission::Register | Admission::Manual => AdminState::Registered,
        },
        Some(state) => state,
        None if ignore_rule => AdminState::Ignored,
        None => match admission {
            Admission::Auto => AdminState::Managed,
            Admission::Register => AdminState::Registered,
            Admission::Manual => AdminState::Discovered,
        },
    }
}

/// What retention does to an agent disconnected longer than the setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    Keep,
    /// Back to `not_found`: an admin pre-registered it.
    NotFound,
    Delete,
}

/// Agents in maintenance are often offline on purpose, ignored ones keep their data until an
/// admin deletes them, and a pre-registered agent an admin has not managed yet keeps the state
/// the admin gave it.
pub fn on_retention(state: AdminState, pre_registered: bool) -> Retention {
    match state {
        AdminState::Ignored | AdminState::NotFound | AdminState::Maintenance(_) => Retention::Keep,
        AdminState::Managed if pre_registered => Retention::NotFound,
        _ if pre_registered => Retention::Keep,
        _ => Retention::Delete,
    }
}

/// Whether `from → to` is a move the system itself makes (first contact, retention).
pub fn system_allowed(from: AdminState, to: AdminState) -> bool {
    use AdminState::*;
    matches!(
        (from, to),
        (NotFound, Registered | Managed) | (Managed, NotFound)
    )
}

#[cfg(test)]
mod tests;
