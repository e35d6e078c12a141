//! What admins tell Corral about agents before they connect: agents expected by their
//! identifying attributes, and rules for agents to ignore. Plain data; first contact
//! ([`super::on_first_contact`]) is where they take effect.
//!
//! An agent pre-registered by instance uid needs neither: it is an ordinary agent record in
//! [`super::AdminState::NotFound`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::core::config::Selector;

/// An agent an admin expects, known by (some of) the identifying attributes it will report,
/// e.g. `service.name=otelcol, host.name=web-1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub id: String,
    pub identifying_attributes: BTreeMap<String, String>,
    /// Admin labels the agent gets when it turns up.
    pub labels: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
}

/// Agents matching `selector` on first contact are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoreRule {
    pub id: String,
    pub selector: Selector,
    pub created_at: DateTime<Utc>,
}
