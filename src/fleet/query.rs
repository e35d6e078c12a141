use std::sync::Arc;

use crate::domain::{AgentRecord, InstanceUid};
use crate::status::Status;

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
    pub labels: LabelSelector,
    /// A full selector expression, e.g. `env=prod,region in (eu,us)`.
    pub selector: Option<crate::config::Selector>,
}

impl AgentFilter {
    pub fn matches(&self, agent: &AgentRecord) -> bool {
        self.status.is_none_or(|s| agent.status == s)
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
}

impl super::Fleet {
    /// Matching agents after `cursor`, at most `limit` of them.
    pub fn list(&self, filter: &AgentFilter, cursor: Option<InstanceUid>, limit: usize) -> Page {
        let mut total = 0;
        let mut after: Vec<Arc<AgentRecord>> = Vec::new();
        for handle in self.agents.iter() {
            let agent = handle.record();
            if !filter.matches(&agent) {
                continue;
            }
            total += 1;
            if cursor.is_none_or(|c| agent.uid > c) {
                after.push(agent);
            }
        }
        let more = after.len() > limit;
        if more {
            after.select_nth_unstable_by_key(limit, |a| a.uid);
            after.truncate(limit);
        }
        after.sort_unstable_by_key(|a| a.uid);
        for agent in &mut after {
            if let Some(handle) = self.get(&agent.uid) {
                *agent = handle.snapshot();
            }
        }
        Page {
            next_cursor: if more {
                after.last().map(|a| a.uid)
            } else {
                None
            },
            agents: after,
            total,
        }
    }

    /// Agents by status, from counters the actors keep: no scan.
    pub fn summary(&self) -> FleetSummary {
        let by_status: Vec<_> = Status::ALL
            .into_iter()
            .map(|s| (s, self.ctx.metrics.agents_with(s)))
            .collect();
        FleetSummary {
            total: by_status.iter().map(|(_, n)| n).sum(),
            by_status,
        }
    }
}
