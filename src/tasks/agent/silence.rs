//! One watch over the whole fleet for agents gone silent, instead of a timer in every actor.
//! A quiet agent's heartbeats are answered by its transport (see `LinkState::claim_heartbeat`),
//! so its actor's own timer was the only thing still waking it: once every two heartbeat
//! intervals or so, for nothing. Here each watched agent has one entry, due when its grace
//! period runs out after the last message heard. A due entry whose agent was heard since is
//! moved to its new due time without waking the actor; only an agent that really is silent gets
//! [`super::Command::Silence`], and the actor decides (see `AgentActor::on_silence`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::Mutex;

use super::AgentHandle;
use crate::core::domain::InstanceUid;

/// How often due entries are looked at; entries are grouped by due time to this resolution.
pub const SILENCE_TICK_MS: i64 = 100;

/// No entry is in the watch for this agent.
const NOT_WATCHED: i64 = i64::MAX;

/// Due times (milliseconds since the epoch, rounded up to the tick) and the agents due then.
#[derive(Default)]
pub struct SilenceWatch {
    due: Mutex<BTreeMap<i64, Vec<InstanceUid>>>,
}

impl SilenceWatch {
    fn insert(&self, due_ms: i64, uid: InstanceUid) {
        let slot = due_ms.saturating_add(SILENCE_TICK_MS - 1) / SILENCE_TICK_MS * SILENCE_TICK_MS;
        self.due.lock().entry(slot).or_default().push(uid);
    }

    /// Takes the entries due by `now_ms`.
    fn take_due(&self, now_ms: i64) -> Vec<InstanceUid> {
        let due = {
            let mut map = self.due.lock();
            let later = map.split_off(&now_ms.saturating_add(1));
            std::mem::replace(&mut *map, later)
        };
        due.into_values().flatten().collect()
    }

    /// Watches the agent whose link this is: due a grace period after it was last heard.
    pub fn watch(&self, uid: InstanceUid, watched: &Watched, grace_ms: i64) {
        if let Some(due) = watched.watch(grace_ms) {
            self.insert(due, uid);
        }
    }

    /// Looks again at an agent whose entry came due at `now_ms`: moves the entry to when the
    /// agent would now be silent, or drops it. Returns whether the agent is silent.
    fn recheck(&self, uid: InstanceUid, watched: &Watched, now_ms: i64) -> bool {
        match watched.recheck(now_ms) {
            Recheck::Later(due) => {
                self.insert(due, uid);
                false
            }
            Recheck::Silent => true,
            Recheck::Done => false,
        }
    }

    /// Looks at every entry due by `now_ms` (`agent` finds an agent's handle) and tells the
    /// actors of silent agents.
    pub fn sweep(&self, now_ms: i64, agent: impl Fn(&InstanceUid) -> Option<AgentHandle>) {
        for uid in self.take_due(now_ms) {
            let Some(handle) = agent(&uid) else { continue };
            let watched = &handle.link().watched;
            if self.recheck(uid, watched, now_ms)
                && !handle.tell_silent()
                && let Some(due) = watched.retry(now_ms + SILENCE_TICK_MS)
            {
                // A full mailbox: the actor is busy; ask again next tick.
                self.insert(due, uid);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.due.lock().values().map(Vec::len).sum()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the watch keeps of one agent, in its `LinkState`: when it was last heard (also moved
/// on by heartbeats its transport answers), its grace period, and when its entry is due.
pub struct Watched {
    /// Milliseconds since the epoch of the last message; `i64::MIN` before the first.
    pub(super) last_seen_ms: AtomicI64,
    /// How long silence may last, in milliseconds; 0 when the agent is not watched (it is
    /// offline, or does not promise heartbeats).
    grace_ms: AtomicI64,
    /// When the agent's entry in the watch is due, or [`NOT_WATCHED`] with no entry.
    due_ms: AtomicI64,
}

enum Recheck {
    /// Heard since: due again then.
    Later(i64),
    Silent,
    /// No longer watched, or another entry took over.
    Done,
}

impl Default for Watched {
    fn default() -> Self {
        Self {
            last_seen_ms: AtomicI64::new(i64::MIN),
            grace_ms: AtomicI64::new(0),
            due_ms: AtomicI64::new(NOT_WATCHED),
        }
    }
}

impl Watched {
    /// Watches for silence longer than `grace_ms` after the last message; gives the due time
    /// of a new entry when none is due as early.
    fn watch(&self, grace_ms: i64) -> Option<i64> {
        let grace_ms = grace_ms.max(1);
        self.grace_ms.store(grace_ms, Ordering::Release);
        let due = self
            .last_seen_ms
            .load(Ordering::Acquire)
            .max(0)
            .saturating_add(grace_ms);
        (self.due_ms.fetch_min(due, Ordering::AcqRel) > due).then_some(due)
    }

    /// Puts the agent back in the watch, due at `due_ms`, unless an entry is due as early.
    fn retry(&self, due_ms: i64) -> Option<i64> {
        (self.due_ms.fetch_min(due_ms, Ordering::AcqRel) > due_ms).then_some(due_ms)
    }

    /// Whether the agent is watched (its entry may still be on its way).
    pub fn is_watched(&self) -> bool {
        self.grace_ms.load(Ordering::Acquire) != 0
    }

    /// Stops watching; the entry is dropped when it comes due.
    pub fn unwatch(&self) {
        self.grace_ms.store(0, Ordering::Release);
    }

    fn recheck(&self, now_ms: i64) -> Recheck {
        let entry = self.due_ms.load(Ordering::Acquire);
        if entry > now_ms {
            // Superseded by an entry due later than this one was.
            return Recheck::Done;
        }
        // Take the entry out first, and only then look at the grace period: an actor that
        // watches the agent again meanwhile either finds no entry and adds its own, or came
        // before the take, and then its grace period is seen here.
        if self
            .due_ms
            .compare_exchange(entry, NOT_WATCHED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // The actor armed an earlier entry in the meantime: that one decides.
            return Recheck::Done;
        }
        let grace = self.grace_ms.load(Ordering::Acquire);
        if grace == 0 {
            return Recheck::Done;
        }
        let due = self
            .last_seen_ms
            .load(Ordering::Acquire)
            .max(0)
            .saturating_add(grace);
        if due <= now_ms {
            return Recheck::Silent;
        }
        match self.retry(due) {
            Some(due) => Recheck::Later(due),
            // The actor armed one as early.
            None => Recheck::Done,
        }
    }

    pub fn seen(&self, at_ms: i64) {
        self.last_seen_ms.store(at_ms, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched_at(seen_ms: i64) -> Watched {
        let w = Watched::default();
        w.seen(seen_ms);
        w
    }

    #[test]
    fn an_agent_is_due_a_grace_period_after_it_was_last_heard() {
        let watch = SilenceWatch::default();
        let uid = InstanceUid::new_v7();
        let w = watched_at(10_000);
        watch.watch(uid, &w, 5_000);
        assert!(watch.take_due(14_999).is_empty());
        assert_eq!(watch.take_due(15_000), vec![uid]);
        assert!(watch.recheck(uid, &w, 15_000), "nothing heard since");
        assert!(watch.is_empty(), "a silent agent leaves the watch");
    }

    #[test]
    fn an_agent_heard_since_moves_on_without_being_called_silent() {
        let watch = SilenceWatch::default();
        let uid = InstanceUid::new_v7();
        let w = watched_at(10_000);
        watch.watch(uid, &w, 5_000);
        w.seen(13_000);
        let due = watch.take_due(15_000);
        assert_eq!(due, vec![uid]);
        assert!(!watch.recheck(uid, &w, 15_000));
        assert!(watch.take_due(17_999).is_empty());
        assert_eq!(watch.take_due(18_000), vec![uid]);
        assert!(watch.recheck(uid, &w, 18_000));
    }

    #[test]
    fn one_entry_per_agent_however_often_it_is_armed() {
        let watch = SilenceWatch::default();
        let uid = InstanceUid::new_v7();
        let w = watched_at(10_000);
        for seen in [10_000, 11_000, 12_000] {
            w.seen(seen);
            watch.watch(uid, &w, 5_000);
        }
        assert_eq!(watch.len(), 1, "later due times ride on the first entry");
        assert_eq!(watch.take_due(15_000), vec![uid]);
        assert!(!watch.recheck(uid, &w, 15_000), "heard at 12 s");
        assert_eq!(watch.take_due(17_000), vec![uid]);
        assert!(watch.recheck(uid, &w, 17_000));
    }

    #[test]
    fn a_shorter_grace_brings_the_entry_forward() {
        let watch = SilenceWatch::default();
        let uid = InstanceUid::new_v7();
        let w = watched_at(0);
        watch.watch(uid, &w, 75_000);
        watch.watch(uid, &w, 12_500);
        let due = watch.take_due(12_500);
        assert_eq!(due, vec![uid], "due on the shorter grace");
        assert!(watch.recheck(uid, &w, 12_500));
        let stale = watch.take_due(75_000);
        assert_eq!(stale, vec![uid], "the first entry is still there");
        assert!(!watch.recheck(uid, &w, 75_000), "and is dropped as stale");
    }

    #[test]
    fn an_agent_watched_again_before_its_old_entry_comes_due_stays_watched() {
        let watch = SilenceWatch::default();
        let uid = InstanceUid::new_v7();
        let w = watched_at(0);
        watch.watch(uid, &w, 1_000);
        w.unwatch();
        w.seen(1_500);
        watch.watch(uid, &w, 1_000);
        assert_eq!(watch.len(), 1, "the old entry is earlier: none added");
        assert_eq!(watch.take_due(1_000), vec![uid]);
        assert!(!watch.recheck(uid, &w, 1_000));
        assert_eq!(
            watch.take_due(2_500),
            vec![uid],
            "moved on to its new due time"
        );
        assert!(watch.recheck(uid, &w, 2_500));
    }

    #[test]
    fn an_agent_no_longer_watched_leaves_at_its_due_time() {
        let watch = SilenceWatch::default();
        let uid = InstanceUid::new_v7();
        let w = watched_at(0);
        watch.watch(uid, &w, 1_000);
        w.unwatch();
        assert_eq!(watch.take_due(1_000), vec![uid]);
        assert!(!watch.recheck(uid, &w, 1_000));
        assert!(watch.is_empty());
        watch.watch(uid, &w, 1_000);
        assert_eq!(watch.len(), 1, "watched again later");
    }
}
