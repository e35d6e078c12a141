//! The fleet's side of the admin lifecycle: the admin state of agents heard from for the first
//! time (admission, pre-registrations by attributes, ignore rules), pre-registration by uid,
//! deletion, and retention of disconnected agents. The moves themselves are
//! `crate::core::lifecycle`'s; this module only applies them to the registry.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

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

    /// Changes the rules (after the store has them).
    pub fn update_rules(&self, change: impl FnOnce(&mut Rules)) {
        let mut rules = (*self.rules.load_full()).clone();
        change(&mut rules);
        self.rules.store(Arc::new(rules));
    }

    /// The record of an agent heard from for the first time, with the admin state it takes:
    /// an admin's pre-registration by attributes wins (and is used up), then ignore rules,
    /// then the admission setting. Rules look at the attributes its first report carries.
    pub(super) fn first_contact(&self, uid: InstanceUid, report: &AgentReport) -> AgentRecord {
        let mut record = AgentRecord::new(uid, Utc::now());
        let rules = self.rules.load();
        let Some(description) = &report.description else {
            record.admin_state = on_first_contact(None, rules.admission, false);
            return record;
        };
        let expected = rules.expected.iter().find(|e| e.matches(description));
        let ignored = rules
            .ignore
            .iter()
            .any(|rule| rule.selector.matches(|k| reported(description, k)));
        record.admin_state = on_first_contact(
            expected.map(|_| AdminState::NotFound),
            rules.admission,
            ignored,
        );
        if let Some(expected) = expected {
            record.labels = expected.labels.clone();
            record.pre_registered = true;
            tracing::info!(%uid, expected = %expected.id, state = %record.admin_state, "pre-registered agent turned up");
            let id = expected.id.clone();
            self.update_rules(|rules| rules.expected.retain(|e| e.id != id));
            let store = self.store.clone();
            self.tracker.spawn(async move {
                if let Err(error) = store.delete_expected(&id).await {
                    tracing::error!(%error, %id, "cannot remove a used pre-registration");
                }
            });
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

    /// Deletes an agent: its actor closes its connection and stops, the registry and the
    /// store let go of it. Returns whether it was known. If it speaks again, it is new.
    pub async fn forget(&self, uid: &InstanceUid) -> bool {
        let Some((_, handle)) = self.agents.remove(uid) else {
            return false;
        };
        let _ = handle.admin(Event::Forget).await;
        self.ctx.changed.lock().remove(uid);
        self.ctx.writes.delete_agent(*uid);
        true
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
                fleet.retain(Utc::now(), after).await;
            }
        });
    }

    /// One retention pass at `now`.
    pub async fn retain(&self, now: DateTime<Utc>, after: Duration) {
        let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        let due: Vec<(InstanceUid, Retention, AgentHandle)> = self
            .agents
            .iter()
            .filter_map(|entry| {
                let handle = entry.value();
                let record = handle.peek();
                let gone = record.status == Status::Disconnected
                    && handle.link().ws_conn().is_none()
                    && now - handle.link().last_seen().max(record.last_seen) > after;
                let what = on_retention(record.admin_state, record.pre_registered);
                (gone && what != Retention::Keep).then(|| (*entry.key(), what, handle.clone()))
            })
            .collect();
        for (uid, what, handle) in due {
            match what {
                Retention::Delete => {
                    tracing::info!(%uid, "deleting an agent disconnected past the retention");
                    self.forget(&uid).await;
                }
                Retention::NotFound => {
                    let _ = handle
                        .admin(Event::SetAdminState(AdminState::NotFound))
                        .await;
                }
                Retention::Keep => {}
            }
        }
    }
}
