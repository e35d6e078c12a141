use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::core::domain::{AgentRecord, InstanceUid};
use crate::core::lifecycle::{AdminState, STATE_NAMES};
use crate::core::status::Status;

/// Agents whose labels all equal the given values (admin labels over reported attributes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<(String, String)>);

impl LabelSelector {
    pub fn matches(&self, agent: &AgentRecord) -> bool {
        self.0
            .iter()
            .all(|(k, v)| agent.label(k).is_some_and(|have| have == v.as_str()))
    }
}

#[derive(Clone, Debug, Default)]
pub struct AgentFilter {
    pub status: Option<Status>,
    /// An admin state's name (`maintenance` whatever it returns to).
    pub admin_state: Option<&'static str>,
    pub labels: LabelSelector,
    /// A full selector expression, e.g. `env=prod,region in (eu,us)`.
    pub selector: Option<crate::core::config::Selector>,
}

impl AgentFilter {
    /// Matches every agent.
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.admin_state.is_none()
            && self.labels.0.is_empty()
            && self.selector.is_none()
    }

    pub fn matches(&self, agent: &AgentRecord) -> bool {
        self.status.is_none_or(|s| agent.status == s)
            && self
                .admin_state
                .is_none_or(|name| agent.admin_state.as_str() == name)
            && self.labels.matches(agent)
            && self
                .selector
                .as_ref()
                .is_none_or(|sel| sel.matches(|k| agent.label(k)))
    }
}

/// One page of agents in uid order (UUIDv7 uids sort by first appearance).
#[derive(Debug)]
pub struct Page {
    pub agents: Vec<Arc<AgentRecord>>,
    /// The uid to continue after, when more match.
    pub next_cursor: Option<InstanceUid>,
    /// How many agents match in all.
    pub total: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSummary {
    pub total: i64,
    pub by_status: Vec<(Status, i64)>,
    pub by_admin_state: Vec<(&'static str, i64)>,
}

impl super::Fleet {
    /// Matching agents after `cursor`, at most `limit` of them.
    ///
    /// One pass over the registry that keeps only the `limit + 1` smallest uids after the
    /// cursor (one more than a page tells whether more match): a page costs the same at any
    /// depth, and an unfiltered page reads no agent's record but its own.
    pub fn list(&self, filter: &AgentFilter, cursor: Option<InstanceUid>, limit: usize) -> Page {
        let keep = limit.saturating_add(1);
        let mut smallest: BinaryHeap<InstanceUid> = BinaryHeap::with_capacity(keep.min(1024));
        let everyone = filter.is_empty();
        let mut total = 0;
        for entry in self.agents.iter() {
            if !everyone && !filter.matches(&entry.value().peek()) {
                continue;
            }
            total += 1;
            let uid = *entry.key();
            if cursor.is_some_and(|c| uid <= c) {
                continue;
            }
            if smallest.len() < keep {
                smallest.push(uid);
            } else if smallest.peek().is_some_and(|largest| uid < *largest) {
                smallest.pop();
                smallest.push(uid);
            }
        }
        let mut uids = smallest.into_sorted_vec();
        let more = uids.len() > limit;
        uids.truncate(limit);
        let agents: Vec<_> = uids
            .iter()
            .filter_map(|uid| self.get(uid))
            .map(|handle| handle.snapshot())
            .collect();
        Page {
            next_cursor: if more { uids.last().copied() } else { None },
            agents,
            total,
        }
    }

    /// Agents by status and by admin state, from counters the actors keep: no scan. Every
    /// known agent has an admin state; an agent ignored when it first spoke has no status.
    pub fn summary(&self) -> FleetSummary {
        let by_status: Vec<_> = Status::ALL
            .into_iter()
            .map(|s| (s, self.ctx.metrics.agents_with(s)))
            .collect();
        let by_admin_state: Vec<_> = STATE_NAMES
            .into_iter()
            .zip(AdminState::NAMED)
            .map(|(name, state)| (name, self.ctx.metrics.agents_in(state)))
            .collect();
        FleetSummary {
            total: by_admin_state.iter().map(|(_, n)| n).sum(),
            by_status,
            by_admin_state,
        }
    }
}
