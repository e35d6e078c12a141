//! The fleet's side of the admin lifecycle: the admin state of agents heard from for the first
//! time (admission, pre-registrations by attributes, ignore rules), pre-registration by uid,
//! deletion, and retention of disconnected agents. The moves themselves are
//! `crate::core::lifecycle`'s; this module only applies them to the registry.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::Fleet;
use crate::core::config::Selector;
use crate::core::domain::{AgentDescription, AgentRecord, AgentReport, InstanceUid};
use crate::core::lifecycle::{
    AdminState, Admission, Expected, IgnoreRule, Retention, on_first_contact, on_retention,
};
use crate::core::session::Event;
use crate::core::status::Status;
use crate::tasks::agent::AgentHandle;

/// What decides the admin state of an agent heard from for the first time.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub admission: Admission,
    pub expected: Vec<Expected>,
    pub ignore: Vec<IgnoreRule>,
}

/// How often retention looks for agents disconnected too long.
const RETENTION_SWEEP: Duration = Duration::from_secs(5);

/// An attribute the agent reports (identifying first), as a label value.
fn reported<'a>(description: &'a AgentDescription, key: &str) -> Option<Cow<'a, str>> {
    match description.attribute(key)? {
        crate::core::domain::AttributeValue::String(s) => Some(Cow::Borrowed(s.as_ref())),
        other => Some(Cow::Owned(other.to_string())),
    }
}

impl Expected {
    /// Whether the agent described is the one expected: every attribute given matches.
    pub fn matches(&self, description: &AgentDescription) -> bool {
        !self.identifying_attributes.is_empty()
            && self
                .identifying_attributes
                .iter()
                .all(|(k, v)| reported(description, k).is_some_and(|have| have == v.as_str()))
    }
}

impl Fleet {
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Changes the rules (after the store has them). Concurrent changes all take effect.
    pub fn update_rules(&self, change: impl Fn(&mut Rules)) {
        self.rules.rcu(|rules| {
            let mut rules = (**rules).clone();
            change(&mut rules);
            rules
        });
    }

    /// The record of an agent heard from for the first time, with the admin state it takes:
    /// `inherit` (a copy of an ignored agent stays ignored), else an admin's pre-registration
    /// by attributes (used up), then ignore rules, then the admission setting. Rules look at
    /// the attributes its first report carries (`dispatch` keeps no agent before it has one).
    pub(super) fn first_contact(
        &self,
        uid: InstanceUid,
        report: &AgentReport,
        inherit: Option<AdminState>,
    ) -> AgentRecord {
        let mut record = AgentRecord::new(uid, Utc::now());
        let rules = self.rules.load();
        let description = report.description.as_ref();
        let expected = description
            .filter(|_| inherit.is_none())
            .and_then(|d| rules.expected.iter().find(|e| e.matches(d)));
        let ignored = description.is_some_and(|d| {
            rules
                .ignore
                .iter()
                .any(|rule| rule.selector.matches(|k| reported(d, k)))
        });
        let known = inherit.or(expected.map(|_| AdminState::NotFound));
        record.admin_state = on_first_contact(known, rules.admission, ignored);
        if let Some(expected) = expected {
            record.labels = expected.labels.clone();
            record.pre_registered = true;
            tracing::info!(%uid, expected = %expected.id, state = %record.admin_state, "pre-registered agent turned up");
            let id = expected.id.clone();
            self.update_rules(|rules| rules.expected.retain(|e| e.id != id));
            // In the same flush as the agent's record: a crash cannot lose both.
            self.ctx.writes.delete_expected(id);
        }
        record
    }

    /// Adds an agent an admin pre-registered by uid: `not_found` until it speaks. `None` when
    /// the uid is known already.
    pub fn pre_register(
        &self,
        uid: InstanceUid,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Option<AgentHandle> {
        let mut fresh = None;
        self.agents.entry(uid).or_insert_with(|| {
            let mut record = AgentRecord::new(uid, Utc::now());
            record.admin_state = AdminState::NotFound;
            record.pre_registered = true;
            record.labels = labels;
            record.status = Status::Disconnected;
            record.status_reason = "not connected yet".into();
            let handle = AgentHandle::spawn(record, false, self.ctx.clone(), &self.tracker);
            fresh = Some(handle.clone());
            handle
        });
        if let Some(handle) = &fresh {
            self.ctx.writes.agent(handle.record());
        }
        fresh
    }

    /// Deletes an agent: its actor closes its connection, removes what is stored of it and
    /// stops; then the registry lets go of it. Returns whether it was known. If it speaks again,
    /// it is new.
    pub async fn forget(&self, uid: &InstanceUid) -> bool {
        let Some(handle) = self.get(uid) else {
            return false;
        };
        if handle.admin(Event::Forget).await.is_err() && !handle.link().is_gone() {
            // The server is stopping: nothing was deleted.
            return false;
        }
        self.agents.remove_if(uid, |_, entry| entry.same(&handle));
        true
    }

    /// The agents deleted since the last call, for the controller to forget.
    pub fn take_forgotten(&self) -> Vec<InstanceUid> {
        std::mem::take(&mut *self.ctx.forgotten.lock())
            .into_iter()
            .collect()
    }

    /// The agents matching `selector`, in no particular order.
    pub fn select(&self, selector: &Selector) -> Vec<AgentHandle> {
        self.agents
            .iter()
            .filter(|entry| {
                let record = entry.value().peek();
                selector.matches(|k| record.label(k))
            })
            .map(|entry| entry.value().clone())
            .collect()
    }

    /// Starts the task that deletes agents disconnected longer than `after` (or returns them
    /// to `not_found` when an admin pre-registered them); it stops with the server.
    pub fn spawn_retention(self: &Arc<Self>, after: Duration) {
        let fleet = self.clone();
        self.tracker.spawn(async move {
            let mut ticks = tokio::time::interval(RETENTION_SWEEP.min(after));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = fleet.ctx.cancel.cancelled() => return,
                }
                fleet.retain(after).await;
            }
        });
    }

    /// One retention pass: each agent that looks disconnected long enough is asked to apply
    /// retention, which it decides against its own current state (it may have reconnected, or
    /// been ignored, since it was looked at).
    pub async fn retain(&self, after: Duration) {
        let since = self.started;
        let cutoff =
            Utc::now() - chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        let due: Vec<AgentHandle> = self
            .agents
            .iter()
            .filter(|entry| {
                let record = entry.value().peek();
                record.status == Status::Disconnected
                    && record.last_seen.max(since) < cutoff
                    && on_retention(record.admin_state, record.pre_registered) != Retention::Keep
            })
            .map(|entry| entry.value().clone())
            .collect();
        for handle in due {
            let uid = handle.uid();
            let _ = handle.admin(Event::Retain { after, since }).await;
            if handle.link().is_gone() {
                tracing::info!(%uid, "deleted an agent disconnected past the retention");
                self.agents.remove_if(&uid, |_, entry| entry.same(&handle));
            }
        }
    }
}
