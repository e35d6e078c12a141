//! One controller tick, planned: which running rollouts move on (and the per-agent rows to
//! store), which agents each passes over and why, and which agents must be told a new
//! directive. Pure: the task passes in the fleet's records, the component sets, whether the
//! restart grace still holds and the time; it stores the updates, hands the directives to the
//! actors and reports back through [`Control::settle`], [`Control::told`] and
//! [`Control::retry_later`].
//!
//! Rules of [`plan`] (each has a test named after it):
//!
//! 1. Assignment: each agent has at most one configuration ([`assign`]). A configuration
//!    rollout's candidates are the agents assigned to its configuration, and the agents it sent
//!    the version to that have been assigned elsewhere since (not eligible: they still report
//!    on it). An upgrade's candidates are the agents its selector takes.
//! 2. Only managed agents take part. A matching agent that is not managed is no candidate and
//!    is listed as skipped with its reason (`in maintenance`, `not managed (registered)`); its
//!    entry leaves the progress unless it completed, so it is neither pending, configuring nor
//!    an error. Managed again, it joins the remaining waves like an agent that starts matching
//!    later. A deleted agent (on a full pass: not in the fleet) leaves the progress of every
//!    running rollout, whatever its phase.
//! 3. A managed matching agent the rollout cannot serve is listed as skipped with the reason
//!    (configuration: no remote config, missing components; upgrade: no packages, no build for
//!    its platform) and is not eligible. A disconnected agent the rollout has not sent anything
//!    is not eligible until it comes back, and is listed as skipped (`disconnected`) meanwhile.
//! 4. Directives: a managed agent gets [`directive`] for its configuration and that
//!    configuration's latest rollout, plus the package of the newest upgrade whose selector
//!    takes it ([`package_directive`]). An agent in maintenance is told nothing: it keeps
//!    exactly the directive it had. Any other agent that is not managed gets
//!    `Directive::default()`: no version, no package.
//! 5. A directive is told only when it differs from the one last handed to that agent.
//! 6. Stepped rollouts (active, or stopped in error) move only on a full pass: a changed-only
//!    pass does not see the whole fleet and would drop the waiting agents it did not look at.
//!    A full pass also forgets what was told to agents no longer in the fleet.
//!    [`Control::pass`] picks the pass: none when no rollout is stepped, no record changed and
//!    nothing is left to retry; changed-only when no rollout is stepped and nothing is left to
//!    retry; else full.
//! 7. A rollout restored from the store (created before the controller started) does not move
//!    while the restart grace holds: agents get time to reconnect before anyone is counted
//!    gone. Its directives still hold. What agents report counts at once: a sent agent that
//!    reports the version applied is completed, one that reports it failed has failed; nothing
//!    times out, no wave starts and nobody leaves.
//! 8. Only what is stored takes effect: directives are worked out from the rollouts as updated,
//!    and each names the updates it follows from ([`Tell::needs`]); one whose update failed to
//!    store is not handed over, and the rollout is planned again next tick. So a wave is sent
//!    only once it is stored.
//! 9. Determinism: the plan depends only on the inputs, not on the order of the agents (each
//!    given once): updates follow the rollouts' order, rows and directives the uids'.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::control::{Control, Pass, Plan, Skipped, Tell, Update};
use super::directive::{directive, package_directive, runs_version};
use super::planner::{self, Candidate, Outcome};
use super::{Directive, PackagePayload, Payload, Phase, Progress, Rollout};
use crate::core::config::{ComponentSet, ConfigVersion, Configuration, assign, check_compatible};
use crate::core::domain::{
    AgentCapabilities, AgentRecord, ContentHash, InstanceUid, PackageState, RemoteConfigStatus,
};
use crate::core::lifecycle::AdminState;
use crate::core::packages::{ARCH_ATTRIBUTE, PLATFORM_ATTRIBUTE, Package, choose};
use crate::core::status::Status;

/// What one tick reads.
pub struct Tick<'a> {
    /// Every agent on a full pass; the changed ones on a changed-only pass.
    pub agents: &'a [Arc<AgentRecord>],
    pub pass: Pass,
    /// The component sets agents reported, by hash.
    pub components: &'a dyn Fn(&ContentHash) -> Option<Arc<ComponentSet>>,
    /// Restored rollouts still wait for agents to reconnect (rule 7).
    pub grace: bool,
    pub now: DateTime<Utc>,
}

/// Plans one tick (see the module documentation for its rules).
pub fn plan(control: &Control, tick: &Tick<'_>) -> Plan {
    let agents: Vec<(&AgentRecord, Option<&Arc<Configuration>>)> = tick
        .agents
        .iter()
        .map(|a| (&**a, assign(&control.configs, a)))
        .collect();

    let mut plan = Plan::default();
    let mut rollouts = control.rollouts.clone();
    if tick.pass == Pass::Full {
        let now_ms = u64::try_from(tick.now.timestamp_millis()).unwrap_or(0);
        let by_uid: HashMap<InstanceUid, &AgentRecord> =
            agents.iter().map(|(a, _)| (a.uid, *a)).collect();
        let mut assigned: HashMap<&str, Vec<&AgentRecord>> = HashMap::new();
        for (agent, config) in &agents {
            if let Some(config) = config {
                assigned.entry(&config.name).or_default().push(agent);
            }
        }
        let fleet = Fleet {
            by_uid: &by_uid,
            assigned,
            components: tick.components,
        };
        for slot in &mut rollouts {
            if !slot.is_stepped() {
                continue;
            }
            let Some((candidates, skipped)) = fleet.candidates(control, slot) else {
                continue;
            };
            let (progress, sent) = if tick.grace && slot.created_at < control.started {
                // Rule 7: only what agents report counts while the others reconnect.
                let progress = planner::record_outcomes(&slot.progress, &candidates);
                (progress, Vec::new())
            } else {
                if control.skipped.get(&slot.id).map(|s| &**s) != Some(&skipped) {
                    plan.skipped.push((slot.id.clone(), skipped));
                }
                // Rule 2: an agent that is not managed leaves the progress unless it
                // completed; a deleted one (no longer in the fleet) leaves it whatever its
                // phase.
                let mut previous = slot.progress.clone();
                previous.agents.retain(|uid, phase| {
                    by_uid
                        .get(uid)
                        .is_some_and(|a| *phase == Phase::Completed || a.admin_state.is_managed())
                });
                let step = planner::step(&slot.params, &previous, &candidates, now_ms);
                (step.progress, step.send)
            };
            if progress == slot.progress {
                continue;
            }
            let updated = Arc::new(Rollout {
                progress,
                updated_at: tick.now,
                ..(**slot).clone()
            });
            let diff = diff(&slot.progress, &updated.progress);
            plan.updates.push(Update {
                failures: failures(&diff, &by_uid, slot),
                diff,
                rollout: updated.clone(),
                sent,
            });
            *slot = updated;
        }
        plan.seen = Some(by_uid.keys().copied().collect());
    }

    let updated: HashSet<&str> = plan.updates.iter().map(|u| u.rollout.id.as_str()).collect();
    let mut latest: HashMap<&str, &Arc<Rollout>> = HashMap::new();
    for rollout in &rollouts {
        if let Some(name) = rollout.configuration() {
            latest.insert(name, rollout);
        }
    }
    let upgrades: Vec<&Arc<Rollout>> = rollouts
        .iter()
        .rev()
        .filter(|r| r.package().is_some())
        .collect();
    for (agent, config) in agents {
        let mut needs = Vec::new();
        let directive = match agent.admin_state {
            // Rule 4: its rollout state is frozen, and so is what it was told.
            AdminState::Maintenance(_) => continue,
            AdminState::Managed => {
                let mut consult = |r: &Rollout| {
                    if updated.contains(r.id.as_str()) {
                        needs.push(r.id.clone());
                    }
                };
                let mut d = match config {
                    Some(config) => {
                        let latest = latest.get(config.name.as_str()).map(|r| &***r);
                        latest.into_iter().for_each(&mut consult);
                        let available = available(tick.components, agent);
                        directive(config, latest, agent, available.as_deref())
                    }
                    None => Directive::default(),
                };
                let upgrade = upgrades.iter().find(|r| {
                    r.package()
                        .is_some_and(|p| p.selector.matches(|k| agent.label(k)))
                });
                if let Some(upgrade) = upgrade {
                    consult(upgrade);
                    let (package, pending) = package_directive(upgrade, agent, &control.packages);
                    d.package = package;
                    d.pending = d.pending.or(pending);
                }
                d
            }
            _ => Directive::default(),
        };
        let key = directive.key();
        // Rule 5.
        if control.told.get(&agent.uid) == Some(&key) {
            continue;
        }
        plan.tells.push(Tell {
            uid: agent.uid,
            directive,
            key,
            needs,
        });
    }
    // Rule 9: a fleet's order is its registry's, which says nothing.
    plan.tells.sort_by_key(|t| t.uid);
    plan
}

/// What the agents that just failed `rollout` said, kept with the failure: a rollback clears
/// the agent's own error moments later.
fn failures(
    diff: &[(InstanceUid, Option<Phase>)],
    by_uid: &HashMap<InstanceUid, &AgentRecord>,
    rollout: &Rollout,
) -> Vec<(InstanceUid, String)> {
    diff.iter()
        .filter(|(_, phase)| *phase == Some(Phase::Failed))
        .filter_map(|(uid, _)| {
            let agent = by_uid.get(uid)?;
            let config_error = rollout
                .config()
                .and(agent.remote_config.as_ref())
                .map(|rc| rc.error.clone())
                .filter(|e| !e.is_empty());
            let said = config_error.unwrap_or_else(|| agent.status_reason.clone());
            Some((*uid, said))
        })
        .collect()
}

/// The fleet as a full pass sees it.
struct Fleet<'a> {
    by_uid: &'a HashMap<InstanceUid, &'a AgentRecord>,
    /// The agents assigned to each configuration, by name.
    assigned: HashMap<&'a str, Vec<&'a AgentRecord>>,
    components: &'a dyn Fn(&ContentHash) -> Option<Arc<ComponentSet>>,
}

impl Fleet<'_> {
    /// The planner's candidates for `rollout`, and the matching agents it passes over with the
    /// reason (rules 1 to 3). `None`: its configuration version is gone, so it cannot move.
    fn candidates(
        &self,
        control: &Control,
        rollout: &Rollout,
    ) -> Option<(Vec<Candidate<InstanceUid>>, Skipped)> {
        let mut skipped = BTreeMap::new();
        let mut candidates = Vec::new();
        match &rollout.payload {
            Payload::Config(payload) => {
                let version = control
                    .configs
                    .iter()
                    .find(|c| c.name == payload.configuration)
                    .and_then(|c| c.version(payload.version))?;
                let targets = self
                    .assigned
                    .get(payload.configuration.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                for agent in targets {
                    let skip = admin_skip_reason(agent.admin_state)
                        .or_else(|| {
                            config_skip_reason(agent, version, available(self.components, agent))
                        })
                        .or_else(|| disconnected(agent, rollout));
                    if agent.admin_state.is_managed() {
                        candidates.push(Candidate {
                            id: agent.uid,
                            eligible: skip.is_none() && agent.status != Status::Disconnected,
                            outcome: outcome(agent, &version.hash),
                        });
                    }
                    if let Some(reason) = skip {
                        skipped.insert(agent.uid, reason);
                    }
                }
                let targets: HashSet<InstanceUid> = targets.iter().map(|a| a.uid).collect();
                for (uid, phase) in &rollout.progress.agents {
                    if matches!(phase, Phase::Sent { .. })
                        && !targets.contains(uid)
                        && let Some(agent) = self.by_uid.get(uid)
                        && agent.admin_state.is_managed()
                    {
                        candidates.push(Candidate {
                            id: *uid,
                            eligible: false,
                            outcome: outcome(agent, &version.hash),
                        });
                    }
                }
            }
            Payload::Package(payload) => {
                let matching = self
                    .by_uid
                    .values()
                    .filter(|a| payload.selector.matches(|k| a.label(k)));
                for agent in matching {
                    let variant = choose(&control.packages, &payload.name, &payload.version, agent);
                    let skip = admin_skip_reason(agent.admin_state)
                        .or_else(|| upgrade_skip_reason(agent, variant.is_some()))
                        .or_else(|| disconnected(agent, rollout));
                    if agent.admin_state.is_managed() {
                        candidates.push(Candidate {
                            id: agent.uid,
                            eligible: skip.is_none() && agent.status != Status::Disconnected,
                            outcome: variant.and_then(|v| package_outcome(agent, payload, v)),
                        });
                    }
                    if let Some(reason) = skip {
                        skipped.insert(agent.uid, reason);
                    }
                }
            }
        }
        Some((candidates, skipped))
    }
}

fn available(
    components: &dyn Fn(&ContentHash) -> Option<Arc<ComponentSet>>,
    agent: &AgentRecord,
) -> Option<Arc<ComponentSet>> {
    components(agent.components_hash.as_ref()?)
}

/// A disconnected agent the rollout has not sent anything is passed over until it is back
/// (rule 3).
fn disconnected(agent: &AgentRecord, rollout: &Rollout) -> Option<String> {
    let untouched = || {
        matches!(
            rollout.progress.agents.get(&agent.uid),
            None | Some(Phase::Waiting)
        )
    };
    (agent.status == Status::Disconnected && untouched()).then(|| "disconnected".to_string())
}

/// Why no rollout reaches an agent in `state`, if none does (rule 2).
pub fn admin_skip_reason(state: AdminState) -> Option<String> {
    match state {
        AdminState::Managed => None,
        AdminState::Maintenance(_) => Some("in maintenance".into()),
        other => Some(format!("not managed ({other})")),
    }
}

/// Why a configuration rollout passes a managed agent over, if it does (rule 3).
fn config_skip_reason(
    agent: &AgentRecord,
    version: &ConfigVersion,
    available: Option<Arc<ComponentSet>>,
) -> Option<String> {
    if !agent
        .capabilities
        .contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    {
        return Some("agent does not accept remote config".into());
    }
    check_compatible(version, available.as_deref())
        .err()
        .map(|missing| format!("agent lacks components: {}", missing.join(", ")))
}

/// Why an upgrade passes a managed agent over, if it does (rule 3).
fn upgrade_skip_reason(agent: &AgentRecord, has_variant: bool) -> Option<String> {
    if !agent
        .capabilities
        .contains(AgentCapabilities::ACCEPTS_PACKAGES)
    {
        return Some("agent does not accept packages".into());
    }
    if !has_variant {
        let attr = |k: &str| agent.label(k).map(|v| v.into_owned()).unwrap_or_default();
        return Some(format!(
            "no package for {PLATFORM_ATTRIBUTE}={} {ARCH_ATTRIBUTE}={}",
            attr(PLATFORM_ATTRIBUTE),
            attr(ARCH_ATTRIBUTE)
        ));
    }
    None
}

/// What the agent reports of the upgrade: installing, installed, failed. An agent that comes
/// back with the new `service.version` after restarting has it too.
fn package_outcome(
    agent: &AgentRecord,
    payload: &PackagePayload,
    variant: &Package,
) -> Option<Outcome> {
    let hash = variant.hash();
    if let Some(report) = agent
        .packages
        .as_ref()
        .and_then(|p| p.packages.get(payload.name.as_str()))
    {
        if report.state == PackageState::Installed && report.agent_has_hash == hash {
            return Some(Outcome::Applied);
        }
        if report.server_offered_hash == hash {
            match report.state {
                PackageState::InstallFailed => return Some(Outcome::Failed),
                s if s.in_progress() => return Some(Outcome::Applying),
                _ => {}
            }
        }
    }
    runs_version(agent, &payload.version).then_some(Outcome::Applied)
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

/// The per-agent rows that changed between two progresses (`None`: removed), in uid order.
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
    rows.sort_by_key(|(uid, _)| *uid);
    rows
}

#[cfg(test)]
mod tests;
