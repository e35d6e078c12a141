//! The staged-rollout planner: which agents get the configuration next, when a wave is done and
//! when the rollout stops. Pure: no IO, no clock (the caller passes the time in milliseconds),
//! generic over the agent id so it does not depend on the server's types.
//!
//! A thin task ticks [`step`] with the rollout's [`Params`], the previous [`Progress`] and a
//! snapshot of the target agents, sends the configuration to [`Step::send`] and persists
//! [`Step::progress`]. The admin actions [`pause`], [`resume`], [`cancel`] and [`replace`] are
//! pure functions of the progress too.
//!
//! Rules of [`step`] (each has a test named after it):
//!
//! 1. Terminal states (stable, cancelled, replaced) never change and never send.
//! 2. A candidate not yet tracked that is eligible and has not reported Applied joins as
//!    Waiting: new matches and agents back from a disconnect join the remaining waves. A
//!    candidate that reports Applied before being sent is not a target. A Waiting agent that is
//!    no longer an eligible, not-applied candidate is dropped, so disconnected agents are not
//!    counted. Sent, Completed, Failed and TimedOut agents stay whatever their eligibility.
//! 3. Sent + Applied → Completed; Sent + Failed → Failed; Sent for longer than the wave timeout
//!    (`now_ms - at_ms > wave_timeout_ms`) with neither → TimedOut. Completed, Failed and
//!    TimedOut are final: later reports for the same hash are ignored.
//! 4. Errors are Failed + TimedOut. When they exceed `max_errors + extra_errors` a started or
//!    paused rollout becomes Error in that same step, and sends nothing until resumed. Its sent
//!    agents that have reported nothing of the version yet wait again (they are not in flight;
//!    a resumed rollout may send them the version again, from its canary on); one that reports
//!    it later all the same is counted completed or failed.
//! 5. Pending becomes Started on the first step. In Started, once no agent is Sent: if some are
//!    Waiting, wave `wave` sends the first `wave_size(wave)` of them in id order and `wave`
//!    goes up by one; if none are Waiting either, the rollout is Stable.
//! 6. Paused and Error apply outcomes and timeouts (rules 3 and 4) but never start a wave.
//!    Resuming an Error rollout marks the next wave a canary: it goes to one agent, does not
//!    count as a wave (the wave after it has the size it would have had), and the rollout
//!    grows again only once that agent is done.
//! 7. Determinism: the output depends only on the inputs, not on the order of the candidates;
//!    if an id is given twice, its last entry counts.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};

/// How a rollout grows and when it stops. Validated once when the rollout is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub initial: u32,
    pub multiplier: u32,
    pub maximum: u32,
    pub max_errors: u32,
    pub wave_timeout_ms: u64,
}

impl Default for Params {
    /// The API's defaults.
    fn default() -> Self {
        Params {
            initial: 3,
            multiplier: 5,
            maximum: 100,
            max_errors: 0,
            wave_timeout_ms: 300_000,
        }
    }
}

impl Params {
    pub fn validate(&self) -> Result<(), String> {
        if self.initial < 1 {
            return Err("initial must be at least 1".into());
        }
        if self.multiplier < 1 {
            return Err("multiplier must be at least 1".into());
        }
        if self.maximum < self.initial {
            return Err(format!(
                "maximum ({}) must be at least initial ({})",
                self.maximum, self.initial
            ));
        }
        if self.wave_timeout_ms < 1 {
            return Err("wave_timeout_seconds must be at least 1".into());
        }
        Ok(())
    }

    /// Agents in wave `wave` (counted from 0): `min(initial × multiplier^wave, maximum)`.
    pub fn wave_size(&self, wave: u32) -> u32 {
        let grown = self
            .initial
            .saturating_mul(self.multiplier.saturating_pow(wave));
        grown.min(self.maximum)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Started,
    Paused,
    Error,
    Stable,
    Cancelled,
    Replaced,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Pending,
        State::Started,
        State::Paused,
        State::Error,
        State::Stable,
        State::Cancelled,
        State::Replaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Started => "started",
            State::Paused => "paused",
            State::Error => "error",
            State::Stable => "stable",
            State::Cancelled => "cancelled",
            State::Replaced => "replaced",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Stable | State::Cancelled | State::Replaced)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one target agent is in the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Waiting,
    Sent { wave: u32, at_ms: u64 },
    Completed,
    Failed,
    TimedOut,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Sent { .. } => "sent",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::TimedOut => "timed_out",
        }
    }

    /// Parses a persisted tag. "sent" gives `None`: a Sent phase needs its wave and send time
    /// back, and guessing `at_ms` would time the agent out at once, so build it directly.
    pub fn parse(tag: &str) -> Option<Self> {
        [
            Phase::Waiting,
            Phase::Completed,
            Phase::Failed,
            Phase::TimedOut,
        ]
        .into_iter()
        .find(|p| p.as_str() == tag)
    }
}

/// What the agent reported for the rollout's configuration hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applying,
    Applied,
    Failed,
}

/// What the planner needs to know of one target agent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<Id> {
    pub id: Id,
    /// Connected, assigned to the configuration and able to take it.
    pub eligible: bool,
    pub outcome: Option<Outcome>,
}

impl<Id> Candidate<Id> {
    fn is_target(&self) -> bool {
        self.eligible && self.outcome != Some(Outcome::Applied)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress<Id> {
    pub state: State,
    /// Waves started so far, which is also the index of the next wave.
    pub wave: u32,
    /// Errors tolerated beyond `max_errors`, granted by resuming an errored rollout.
    pub extra_errors: u32,
    /// The next wave is one agent: the rollout was resumed after errors (rule 6).
    pub canary: bool,
    pub agents: BTreeMap<Id, Phase>,
}

impl<Id> Default for Progress<Id> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Id> Progress<Id> {
    pub fn new() -> Self {
        Progress {
            state: State::Pending,
            wave: 0,
            extra_errors: 0,
            canary: false,
            agents: BTreeMap::new(),
        }
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for phase in self.agents.values() {
            c.total += 1;
            match phase {
                Phase::Waiting => c.pending += 1,
                Phase::Sent { .. } => c.configuring += 1,
                Phase::Completed => c.completed += 1,
                Phase::Failed | Phase::TimedOut => c.errors += 1,
            }
        }
        c
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub completed: u32,
    /// Failed + timed out.
    pub errors: u32,
    /// Sent, no outcome yet.
    pub configuring: u32,
    /// Waiting for a later wave.
    pub pending: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<Id> {
    pub progress: Progress<Id>,
    /// To send the configuration to now, in id order.
    pub send: Vec<Id>,
}

/// One planning step (see the module documentation for its rules). Pure: same inputs, same
/// output.
pub fn step<Id: Ord + Copy + Debug>(
    params: &Params,
    previous: &Progress<Id>,
    candidates: &[Candidate<Id>],
    now_ms: u64,
) -> Step<Id> {
    let mut progress = previous.clone();
    let mut send = Vec::new();
    if progress.state.is_terminal() {
        return Step { progress, send };
    }
    if progress.state == State::Pending {
        progress.state = State::Started;
    }

    // Keyed by id so that the candidates' order cannot leak into the result (rule 7).
    let by_id: BTreeMap<Id, &Candidate<Id>> = candidates.iter().map(|c| (c.id, c)).collect();

    // Rule 4: in a stopped rollout, a waiting agent that reports the version anyway (it was
    // sent it before the stop took it back) has its outcome counted.
    if progress.state == State::Error {
        for (id, phase) in &mut progress.agents {
            match by_id.get(id).and_then(|c| c.outcome) {
                Some(Outcome::Applied) if *phase == Phase::Waiting => *phase = Phase::Completed,
                Some(Outcome::Failed) if *phase == Phase::Waiting => *phase = Phase::Failed,
                _ => {}
            }
        }
    }
    // Rule 2. Only Waiting agents leave: one that was sent is accounted for until the end.
    progress.agents.retain(|id, phase| {
        *phase != Phase::Waiting || by_id.get(id).is_some_and(|c| c.is_target())
    });
    for (id, c) in &by_id {
        if c.is_target() {
            progress.agents.entry(*id).or_insert(Phase::Waiting);
        }
    }

    // Rule 3. A missing candidate has no outcome, so a disconnected agent can still time out.
    for (id, phase) in &mut progress.agents {
        let Phase::Sent { at_ms, .. } = *phase else {
            continue;
        };
        *phase = match by_id.get(id).and_then(|c| c.outcome) {
            Some(Outcome::Applied) => Phase::Completed,
            Some(Outcome::Failed) => Phase::Failed,
            // A clock that went backwards (another server after a restart) counts as no time.
            _ if now_ms.saturating_sub(at_ms) > params.wave_timeout_ms => Phase::TimedOut,
            _ => continue,
        };
    }

    let counts = progress.counts();
    let allowed = params.max_errors.saturating_add(progress.extra_errors);
    if matches!(progress.state, State::Started | State::Paused) && counts.errors > allowed {
        progress.state = State::Error;
        // Rule 4: a stopped rollout reaches nobody who has not taken the version up; they
        // wait again, and a resumed rollout starts them over from its canary.
        // Like any waiting agent, one that is no target any more leaves (rule 2).
        progress.agents.retain(|id, phase| {
            let candidate = by_id.get(id);
            if !matches!(phase, Phase::Sent { .. })
                || candidate.is_some_and(|c| c.outcome.is_some())
            {
                return true;
            }
            *phase = Phase::Waiting;
            candidate.is_some_and(|c| c.is_target())
        });
    }
    let counts = progress.counts();

    if progress.state == State::Started && counts.configuring == 0 {
        if counts.pending == 0 {
            progress.state = State::Stable;
        } else {
            let wave = progress.wave;
            // Validated params never give 0; guard anyway, as an empty wave would stall forever.
            let size = if progress.canary {
                1
            } else {
                usize::try_from(params.wave_size(wave).max(1)).unwrap_or(usize::MAX)
            };
            let waiting = progress
                .agents
                .iter_mut()
                .filter(|(_, phase)| **phase == Phase::Waiting);
            for (id, phase) in waiting.take(size) {
                *phase = Phase::Sent {
                    wave,
                    at_ms: now_ms,
                };
                send.push(*id);
            }
            if progress.canary {
                progress.canary = false;
            } else {
                progress.wave = wave.saturating_add(1);
            }
        }
    }
    Step { progress, send }
}

/// Rule 3 alone, without the clock: sent agents that report an outcome are completed or
/// failed; nothing times out, nobody joins or leaves, no wave starts and the state stays. For
/// a rollout restored after a restart while its agents reconnect.
pub fn record_outcomes<Id: Ord + Copy>(
    previous: &Progress<Id>,
    candidates: &[Candidate<Id>],
) -> Progress<Id> {
    let mut progress = previous.clone();
    let by_id: BTreeMap<Id, &Candidate<Id>> = candidates.iter().map(|c| (c.id, c)).collect();
    for (id, phase) in &mut progress.agents {
        if !matches!(phase, Phase::Sent { .. }) {
            continue;
        }
        match by_id.get(id).and_then(|c| c.outcome) {
            Some(Outcome::Applied) => *phase = Phase::Completed,
            Some(Outcome::Failed) => *phase = Phase::Failed,
            _ => {}
        }
    }
    progress
}

fn with_state<Id: Clone>(p: &Progress<Id>, state: State) -> Progress<Id> {
    Progress { state, ..p.clone() }
}

/// Stops new waves; outcomes of the agents already sent keep counting.
pub fn pause<Id: Clone>(p: &Progress<Id>) -> Result<Progress<Id>, String> {
    match p.state {
        State::Pending | State::Started => Ok(with_state(p, State::Paused)),
        other => Err(format!("cannot pause a rollout that is {other}")),
    }
}

/// Restarts a paused rollout, or an errored one with room for exactly one more error, as in
/// Bindplane: the errors seen so far become the new allowance.
pub fn resume<Id: Clone>(p: &Progress<Id>, params: &Params) -> Result<Progress<Id>, String> {
    match p.state {
        State::Paused => Ok(with_state(p, State::Started)),
        State::Error => {
            let excess = p
                .counts()
                .errors
                .saturating_sub(params.max_errors.saturating_add(p.extra_errors));
            let mut next = with_state(p, State::Started);
            next.extra_errors = p.extra_errors.saturating_add(excess);
            next.canary = true;
            Ok(next)
        }
        other => Err(format!("cannot resume a rollout that is {other}")),
    }
}

pub fn cancel<Id: Clone>(p: &Progress<Id>) -> Result<Progress<Id>, String> {
    if p.state.is_terminal() {
        return Err(format!("cannot cancel a rollout that is {}", p.state));
    }
    Ok(with_state(p, State::Cancelled))
}

/// A newer rollout of the same configuration took over. Not an error on a finished rollout:
/// the caller need not check first.
pub fn replace<Id: Clone>(p: &Progress<Id>) -> Progress<Id> {
    if p.state.is_terminal() {
        return p.clone();
    }
    with_state(p, State::Replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{RngAlgorithm, TestRng};
    use std::collections::BTreeSet;

    const SEC: u64 = 1_000;

    fn params(initial: u32, multiplier: u32, maximum: u32, max_errors: u32) -> Params {
        Params {
            initial,
            multiplier,
            maximum,
            max_errors,
            wave_timeout_ms: 60 * SEC,
        }
    }

    fn cand(id: u32, outcome: Option<Outcome>) -> Candidate<u32> {
        Candidate {
            id,
            eligible: true,
            outcome,
        }
    }

    fn gone(id: u32) -> Candidate<u32> {
        Candidate {
            id,
            eligible: false,
            outcome: None,
        }
    }

    /// Sent in wave 0 at `at_ms`.
    fn sent(at_ms: u64) -> Phase {
        Phase::Sent { wave: 0, at_ms }
    }

    fn idle(progress: Progress<u32>) -> Step<u32> {
        Step {
            progress,
            send: vec![],
        }
    }

    fn state_and_send(s: &Step<u32>) -> (State, &[u32]) {
        (s.progress.state, &s.send)
    }

    /// `n` eligible agents, those in `sent` reporting `outcome`.
    fn fleet(n: u32, sent: &[u32], outcome: Option<Outcome>) -> Vec<Candidate<u32>> {
        (0..n)
            .map(|id| cand(id, outcome.filter(|_| sent.contains(&id))))
            .collect()
    }

    fn started(agents: &[(u32, Phase)]) -> Progress<u32> {
        Progress {
            state: State::Started,
            agents: agents.iter().copied().collect(),
            ..Progress::new()
        }
    }

    #[test]
    fn fifty_agents_go_in_waves_of_3_15_32() {
        let p = params(3, 5, 100, 0);
        let mut progress = Progress::new();
        let mut sent = Vec::new();
        let mut waves = Vec::new();
        for t in 0..5 {
            let s = step(
                &p,
                &progress,
                &fleet(50, &sent, Some(Outcome::Applied)),
                t * SEC,
            );
            if !s.send.is_empty() {
                waves.push(s.send.len());
            }
            sent.extend(s.send);
            progress = s.progress;
        }
        assert_eq!(waves, [3, 15, 32]);
        assert_eq!(sent, (0..50).collect::<Vec<_>>());
        assert_eq!(progress.state, State::Stable);
        assert_eq!(progress.wave, 3);
        assert_eq!(progress.counts().completed, 50);
    }

    #[test]
    fn params_validate_names_the_field() {
        assert_eq!(Params::default().validate(), Ok(()));
        let bad = |f: fn(&mut Params)| {
            let mut p = Params::default();
            f(&mut p);
            p.validate().unwrap_err()
        };
        assert!(bad(|p| p.initial = 0).starts_with("initial "));
        assert!(bad(|p| p.multiplier = 0).starts_with("multiplier "));
        assert!(bad(|p| p.maximum = 2).starts_with("maximum "));
        assert!(bad(|p| p.wave_timeout_ms = 0).starts_with("wave_timeout_seconds "));
    }

    #[test]
    fn wave_size_grows_then_saturates() {
        let p = Params::default();
        let sizes: Vec<u32> = (0..4).map(|w| p.wave_size(w)).collect();
        assert_eq!(sizes, [3, 15, 75, 100]);
        assert_eq!(p.wave_size(u32::MAX), 100);
        let flat = params(2, 1, 10, 0);
        assert_eq!(flat.wave_size(40), 2);
        let huge = params(u32::MAX, u32::MAX, u32::MAX, 0);
        assert_eq!(huge.wave_size(3), u32::MAX);
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("Started"), None);
        for p in [
            Phase::Waiting,
            Phase::Completed,
            Phase::Failed,
            Phase::TimedOut,
        ] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(sent(7).as_str(), "sent");
        assert_eq!(Phase::parse("sent"), None);
        assert_eq!(Phase::parse("timedout"), None);
    }

    #[test]
    fn rule_1_terminal_states_never_change() {
        for state in [State::Stable, State::Cancelled, State::Replaced] {
            let before = Progress {
                state,
                ..started(&[(1, Phase::Waiting), (2, sent(0))])
            };
            let s = step(
                &params(1, 1, 1, 0),
                &before,
                &fleet(5, &[2], None),
                u64::MAX,
            );
            assert_eq!(s, idle(before.clone()));
            assert!(pause(&before).is_err());
            assert!(resume(&before, &Params::default()).is_err());
            assert!(cancel(&before).is_err());
            assert_eq!(replace(&before), before);
        }
    }

    #[test]
    fn rule_2_membership() {
        let before = started(&[
            (0, sent(0)),
            (1, sent(0)),
            (2, Phase::Completed),
            (3, Phase::Waiting),
            (4, Phase::Waiting),
            (5, Phase::Waiting),
        ]);
        let candidates = [
            gone(0),                         // sent, now ineligible: stays
            cand(2, None),                   // 1 and 2 missing or no outcome: stay
            gone(3),                         // waiting, now ineligible: dropped
            cand(4, Some(Outcome::Applied)), // waiting, got it on its own: dropped
            cand(6, None),                   // new match: joins
            cand(7, Some(Outcome::Applied)), // already at the version: not a target
            gone(8),                         // disconnected: not counted
        ];
        let s = step(&params(1, 1, 1, 5), &before, &candidates, SEC);
        let ids: Vec<_> = s.progress.agents.keys().copied().collect();
        assert_eq!(ids, [0, 1, 2, 6]);
        assert_eq!(s.progress.agents[&6], Phase::Waiting);
        assert!(s.send.is_empty(), "wave 0 is still configuring");
    }

    #[test]
    fn rule_3_outcomes_and_timeouts() {
        let p = params(1, 1, 1, 10);
        let before = started(&[
            (0, sent(0)),
            (1, sent(0)),
            (2, sent(0)),
            (3, sent(SEC)),
            (4, sent(0)),
        ]);
        let candidates = [
            cand(0, Some(Outcome::Applied)),
            cand(1, Some(Outcome::Failed)),
            cand(2, Some(Outcome::Applying)),
            cand(3, None),
            cand(4, None),
        ];
        let s = step(&p, &before, &candidates, p.wave_timeout_ms);
        let phases: Vec<_> = s.progress.agents.values().copied().collect();
        // At exactly the timeout an agent is still within it.
        assert_eq!(
            phases,
            [Phase::Completed, Phase::Failed, sent(0), sent(SEC), sent(0)]
        );

        let s = step(&p, &s.progress, &candidates, p.wave_timeout_ms + 1);
        let phases: Vec<_> = s.progress.agents.values().copied().collect();
        let timed_out = Phase::TimedOut;
        assert_eq!(
            phases,
            [
                Phase::Completed,
                Phase::Failed,
                timed_out,
                sent(SEC),
                timed_out
            ]
        );

        // Final phases ignore later reports.
        let flipped = [
            cand(0, Some(Outcome::Failed)),
            cand(1, Some(Outcome::Applied)),
            cand(2, Some(Outcome::Applied)),
        ];
        let after = step(&p, &s.progress, &flipped, p.wave_timeout_ms + 2);
        assert_eq!(after.progress.agents[&0], Phase::Completed);
        assert_eq!(after.progress.agents[&1], Phase::Failed);
        assert_eq!(after.progress.agents[&2], Phase::TimedOut);
    }

    #[test]
    fn rule_3_clock_going_backwards_is_no_timeout() {
        let before = started(&[(0, sent(10 * SEC))]);
        let s = step(&params(1, 1, 1, 0), &before, &[], 0);
        assert_eq!(s.progress, before);
    }

    #[test]
    fn rule_4_too_many_errors_stop_the_rollout() {
        let p = params(2, 1, 2, 1);
        let mut fleet = fleet(6, &[], None);
        let s = step(&p, &Progress::new(), &fleet, 0);
        assert_eq!(s.send, [0, 1]);
        // One error is tolerated: the next wave goes.
        fleet[0].outcome = Some(Outcome::Failed);
        fleet[1].outcome = Some(Outcome::Applied);
        let s = step(&p, &s.progress, &fleet, SEC);
        assert_eq!(state_and_send(&s), (State::Started, &[2, 3][..]));
        fleet[2].outcome = Some(Outcome::Failed);
        let s = step(&p, &s.progress, &fleet, 2 * SEC);
        assert_eq!(s.progress.state, State::Error);
        // Outcomes still count in Error (rule 6), but with wave 1 done wave 2 does not go.
        fleet[3].outcome = Some(Outcome::Applied);
        let s = step(&p, &s.progress, &fleet, 1_000 * SEC);
        assert_eq!(s.progress.state, State::Error);
        assert_eq!(s.progress.agents[&3], Phase::Completed);
        assert!(s.send.is_empty());
        assert_eq!(s.progress.counts().pending, 2);
    }

    #[test]
    fn rule_6_resume_after_error_sends_a_canary_and_allows_exactly_one_more_error() {
        let p = params(3, 1, 3, 0);
        let s = step(&p, &Progress::new(), &fleet(9, &[], None), 0);
        // Two failures at once with max_errors 0: stopped, with errors 2 > 0.
        let s = step(
            &p,
            &s.progress,
            &fleet(9, &[0, 1], Some(Outcome::Failed)),
            SEC,
        );
        assert_eq!(s.progress.state, State::Error);
        let resumed = resume(&s.progress, &p).unwrap();
        assert_eq!((resumed.state, resumed.extra_errors), (State::Started, 2));

        // Agent 2 of wave 0 applies: the canary goes, one agent, and is not a wave.
        let mut candidates = fleet(9, &[0, 1], Some(Outcome::Failed));
        candidates[2].outcome = Some(Outcome::Applied);
        let s = step(&p, &resumed, &candidates, 2 * SEC);
        assert_eq!(state_and_send(&s), (State::Started, &[3][..]));
        assert_eq!((s.progress.wave, s.progress.canary), (1, false));
        let waiting = step(&p, &s.progress, &candidates, 2 * SEC);
        assert!(
            waiting.send.is_empty(),
            "nothing more until the canary is done"
        );
        // The canary applies: the rollout grows again, with the wave it had planned.
        candidates[3].outcome = Some(Outcome::Applied);
        let s = step(&p, &waiting.progress, &candidates, 3 * SEC);
        assert_eq!(state_and_send(&s), (State::Started, &[4, 5, 6][..]));
        // One more error stops it again.
        candidates[4].outcome = Some(Outcome::Failed);
        let s = step(&p, &s.progress, &candidates, 4 * SEC);
        assert_eq!(s.progress.state, State::Error);
        assert!(s.send.is_empty());
        assert!(resume(&resume(&s.progress, &p).unwrap(), &p).is_err());
    }

    #[test]
    fn outcomes_alone_count_while_a_restored_rollout_waits() {
        let p = params(3, 1, 3, 0);
        let s = step(&p, &Progress::new(), &fleet(5, &[], None), 0);
        let mut candidates = fleet(5, &[0], Some(Outcome::Applied));
        candidates[1].outcome = Some(Outcome::Failed);
        candidates.truncate(2);
        let held = record_outcomes(&s.progress, &candidates);
        assert_eq!(held.agents[&0], Phase::Completed);
        assert_eq!(held.agents[&1], Phase::Failed);
        assert!(matches!(held.agents[&2], Phase::Sent { .. }), "no timeout");
        assert_eq!(held.agents[&4], Phase::Waiting, "absent, and still there");
        assert_eq!((held.state, held.wave), (s.progress.state, s.progress.wave));
    }

    #[test]
    fn rule_5_pending_starts_and_an_empty_fleet_is_stable() {
        let p = Params::default();
        let s = step(&p, &Progress::new(), &fleet(1, &[], None), 0);
        assert_eq!(state_and_send(&s), (State::Started, &[0][..]));
        let s = step(&p, &Progress::<u32>::new(), &[], 0);
        assert_eq!(s.progress.state, State::Stable);
        assert_eq!(s.progress.wave, 0);
    }

    #[test]
    fn rule_6_pause_stops_new_waves_but_outcomes_count() {
        let p = params(2, 1, 2, 0);
        let s = step(&p, &Progress::new(), &fleet(4, &[], None), 0);
        let paused = pause(&s.progress).unwrap();
        assert!(pause(&paused).is_err());

        let s = step(&p, &paused, &fleet(4, &[0, 1], Some(Outcome::Applied)), SEC);
        assert_eq!(s.progress.state, State::Paused);
        assert!(s.send.is_empty());
        assert_eq!(s.progress.counts().completed, 2);
        let resumed = resume(&s.progress, &p).unwrap();
        let s = step(
            &p,
            &resumed,
            &fleet(4, &[0, 1], Some(Outcome::Applied)),
            2 * SEC,
        );
        assert_eq!(s.send, [2, 3]);

        // A failure while paused stops the rollout in Error.
        let paused = pause(&s.progress).unwrap();
        let s = step(&p, &paused, &fleet(4, &[2], Some(Outcome::Failed)), 3 * SEC);
        assert_eq!(s.progress.state, State::Error);
    }

    #[test]
    fn cancel_and_replace_are_terminal() {
        let p = params(1, 1, 1, 0);
        let running = step(&p, &Progress::new(), &fleet(3, &[], None), 0).progress;
        for non_terminal in [State::Pending, State::Started, State::Paused, State::Error] {
            let before = Progress {
                state: non_terminal,
                ..running.clone()
            };
            let cancelled = cancel(&before).unwrap();
            let replaced = replace(&before);
            for (end, state) in [(cancelled, State::Cancelled), (replaced, State::Replaced)] {
                assert_eq!(end.state, state);
                let s = step(&p, &end, &fleet(3, &[0], Some(Outcome::Applied)), SEC);
                assert_eq!(s, idle(end));
            }
        }
    }

    #[test]
    fn rule_7_duplicate_ids_take_the_last_entry() {
        let candidates = [cand(0, None), gone(0)];
        let s = step(&Params::default(), &Progress::new(), &candidates, 0);
        assert_eq!(s.progress.state, State::Stable);
        assert!(s.send.is_empty());
    }

    fn chance(rng: &mut TestRng, percent: u8) -> bool {
        rng.random_ratio(u32::from(percent), 100)
    }

    /// Probabilities (in percent) of what happens to the fleet between two steps.
    #[derive(Debug, Clone)]
    struct Weather {
        fleet: u32,
        late_joiners: u32,
        churn: u8,
        apply: u8,
        fail: u8,
        self_apply: u8,
        admin: u8,
        seed: [u8; 32],
    }

    fn any_params() -> impl Strategy<Value = Params> {
        (1u32..5, 1u32..4, 0u32..40, 0u32..4, 1u64..5_000).prop_map(
            |(initial, multiplier, extra, max_errors, wave_timeout_ms)| Params {
                initial,
                multiplier,
                maximum: initial + extra,
                max_errors,
                wave_timeout_ms,
            },
        )
    }

    fn any_weather() -> impl Strategy<Value = Weather> {
        (
            0u32..=60,
            0u32..10,
            0u8..15,
            0u8..80,
            0u8..20,
            0u8..5,
            0u8..10,
            any::<[u8; 32]>(),
        )
            .prop_map(
                |(fleet, late_joiners, churn, apply, fail, self_apply, admin, seed)| Weather {
                    fleet,
                    late_joiners,
                    churn,
                    apply,
                    fail,
                    self_apply,
                    admin,
                    seed,
                },
            )
    }

    /// One simulated agent, as the server would describe it to the planner.
    #[derive(Clone, Copy)]
    struct Agent {
        present: bool,
        eligible: bool,
        outcome: Option<Outcome>,
        /// Eligible and present at every step so far.
        steady: bool,
        applied_on_its_own: bool,
    }

    impl Agent {
        fn candidate(self, id: u32) -> Option<Candidate<u32>> {
            self.present.then_some(Candidate {
                id,
                eligible: self.eligible,
                outcome: self.outcome,
            })
        }
    }

    /// Moves the simulated fleet on by one tick: connections come and go, sent agents report.
    fn weather(w: &Weather, rng: &mut TestRng, agents: &mut [Agent], progress: &Progress<u32>) {
        for (id, a) in (0u32..).zip(agents.iter_mut()) {
            if chance(rng, w.churn) {
                a.eligible = !a.eligible;
            }
            if chance(rng, w.churn / 2) {
                a.present = !a.present;
            }
            match progress.agents.get(&id) {
                Some(Phase::Sent { .. }) if a.outcome.is_none() => {
                    if chance(rng, w.fail) {
                        a.outcome = Some(Outcome::Failed);
                    } else if chance(rng, w.apply) {
                        a.outcome = Some(Outcome::Applied);
                    } else if chance(rng, 10) {
                        a.outcome = Some(Outcome::Applying);
                    }
                }
                // Late reports for the same hash, which rule 3 ignores.
                Some(Phase::Completed) if chance(rng, w.fail) => a.outcome = Some(Outcome::Failed),
                None | Some(Phase::Waiting) if chance(rng, w.self_apply) => {
                    a.outcome = Some(Outcome::Applied);
                    a.applied_on_its_own = true;
                }
                _ => {}
            }
            a.steady &= a.present && a.eligible;
        }
    }

    /// An admin action at random; failures of actions invalid in the current state are fine.
    fn admin(rng: &mut TestRng, progress: &Progress<u32>, params: &Params) -> Progress<u32> {
        let result = match rng.random_range(0..20) {
            0..=7 => pause(progress),
            8..=16 => resume(progress, params),
            17..=18 => cancel(progress),
            _ => Ok(replace(progress)),
        };
        result.unwrap_or_else(|_| progress.clone())
    }

    fn phase_of(p: &Progress<u32>, id: u32) -> Option<Phase> {
        p.agents.get(&id).copied()
    }

    /// Runs one rollout against a simulated fleet and checks the properties after every step.
    fn run(params: Params, w: Weather) -> Result<(), TestCaseError> {
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &w.seed);
        let initial = Agent {
            present: true,
            eligible: true,
            outcome: None,
            steady: true,
            applied_on_its_own: false,
        };
        let mut agents = vec![initial; w.fleet as usize];
        // Agents that start matching mid-run are present nowhere until they arrive.
        let late = Agent {
            present: false,
            steady: false,
            ..initial
        };
        agents.extend(std::iter::repeat_n(late, w.late_joiners as usize));

        let mut progress = Progress::new();
        let mut now = 0u64;
        let mut ever_sent = BTreeSet::new();

        for _ in 0..200 {
            if progress.state.is_terminal() {
                break;
            }
            if chance(&mut rng, w.admin) {
                let next = admin(&mut rng, &progress, &params);
                if progress.state == State::Error && next.state == State::Started {
                    // Room for exactly one more error.
                    let allowed = params.max_errors + next.extra_errors;
                    prop_assert_eq!(allowed, next.counts().errors);
                }
                progress = next;
            }
            let candidates: Vec<_> = (0u32..)
                .zip(&agents)
                .filter_map(|(id, a)| a.candidate(id))
                .collect();
            let before = progress.clone();
            let out = step(&params, &before, &candidates, now);
            let after = &out.progress;

            // Rule 7: the same inputs in another order give the same step.
            let mut reversed = candidates.clone();
            reversed.reverse();
            prop_assert_eq!(&step(&params, &before, &reversed, now), &out);

            // Rule 1.
            if before.state.is_terminal() {
                prop_assert_eq!(&out, &idle(before.clone()));
            }

            // Counts add up, and a sent agent is never forgotten (rule 2).
            let c = after.counts();
            prop_assert_eq!(c.total, c.completed + c.errors + c.configuring + c.pending);
            prop_assert_eq!(c.total as usize, after.agents.len());
            // Rule 4: the step that stops it takes back what was sent and not taken up.
            let stopped_now = after.state == State::Error && before.state != State::Error;
            for (id, phase) in &before.agents {
                let taken_back = stopped_now
                    && matches!(phase, Phase::Sent { .. })
                    && !matches!(phase_of(after, *id), Some(p) if p != Phase::Waiting);
                if taken_back {
                    ever_sent.remove(id);
                } else if *phase != Phase::Waiting {
                    prop_assert!(after.agents.contains_key(id), "sent agent {} dropped", id);
                }
                if matches!(phase, Phase::Completed | Phase::Failed | Phase::TimedOut) {
                    prop_assert_eq!(phase_of(after, *id), Some(*phase));
                }
            }
            let membership = (0u32..)
                .zip(&agents)
                .filter(|_| !before.state.is_terminal());
            for (id, a) in membership {
                let target = a.present && a.eligible && a.outcome != Some(Outcome::Applied);
                let tracked = phase_of(after, id);
                if target {
                    prop_assert!(tracked.is_some(), "target {} not tracked", id);
                }
                if tracked == Some(Phase::Waiting) {
                    prop_assert!(target, "{} waits but is no target", id);
                }
            }

            // Wave sizes, and no wave while the previous one is configuring (rule 5).
            if !out.send.is_empty() {
                prop_assert!(matches!(before.state, State::Pending | State::Started));
                // A canary (rule 6) is one agent and not a wave.
                let canary = before.canary;
                prop_assert_eq!(after.wave, before.wave + u32::from(!canary));
                prop_assert!(!after.canary);
                let waiting = c.pending as usize + out.send.len();
                let size = if canary {
                    1
                } else {
                    params.wave_size(before.wave) as usize
                };
                prop_assert!(out.send.len() <= size);
                prop_assert_eq!(out.send.len(), size.min(waiting));
                let last = out.send.last().copied().unwrap_or_default();
                for (id, phase) in &after.agents {
                    let new = out.send.contains(id);
                    if let Phase::Sent { wave, at_ms } = phase {
                        prop_assert!(
                            new,
                            "{} of wave {} still sent as wave {} goes",
                            id,
                            wave,
                            before.wave
                        );
                        prop_assert_eq!((*wave, *at_ms), (before.wave, now));
                    }
                    if *phase == Phase::Waiting {
                        prop_assert!(*id > last, "{} skipped in id order", id);
                    }
                }
            }
            // A started rollout is never left idle: it sends or becomes stable.
            if after.state == State::Started {
                prop_assert!(c.configuring > 0, "started with nothing configuring");
            }
            for id in &out.send {
                prop_assert!(ever_sent.insert(*id), "{} sent twice", id);
            }

            // Rule 4: too many errors stop it in the same step; Error sends nothing.
            let allowed = params.max_errors + after.extra_errors;
            if !before.state.is_terminal() {
                prop_assert_eq!(after.state == State::Error, c.errors > allowed);
            }
            if before.state == State::Error {
                prop_assert!(out.send.is_empty());
            }

            if after.state == State::Stable {
                prop_assert_eq!((c.pending, c.configuring), (0, 0));
                for (id, a) in (0u32..).zip(&agents) {
                    if a.steady && !a.applied_on_its_own {
                        prop_assert!(ever_sent.contains(&id), "{} never sent", id);
                    }
                }
            }

            progress = out.progress;
            now += rng.random_range(0..=params.wave_timeout_ms * 3 / 2);
            weather(&w, &mut rng, &mut agents, &progress);
            // Late joiners arrive and start matching.
            if let Some(a) = agents
                .iter_mut()
                .skip(w.fleet as usize)
                .find(|a| !a.present)
            {
                a.present |= chance(&mut rng, 5);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn rollouts_keep_their_properties(params in any_params(), w in any_weather()) {
            run(params, w)?;
        }
    }
}
