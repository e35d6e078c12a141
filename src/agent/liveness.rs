use std::collections::VecDeque;
use std::time::Duration;

/// How many recent heartbeat gaps inform the expected interval.
const GAPS_KEPT: usize = 4;
/// Gaps needed before they replace the assumed default.
const GAPS_TRUSTED: usize = 2;
/// No agent is expected to speak more often than this, whatever it seems to do.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Silence longer than this many expected intervals means the agent is gone.
pub const GRACE_FACTOR: f64 = 2.5;

/// When silence means an agent is gone. An agent that accepted our offered heartbeat interval
/// is held to it. Otherwise the interval is learned from the gaps between its heartbeats
/// (bare messages), since clients differ: some poll every 30 s whatever they are told, some
/// every second. Until enough gaps are seen, the protocol default is assumed.
#[derive(Clone, Debug)]
pub struct Liveness {
    default: Duration,
    offered: Option<Duration>,
    gaps: VecDeque<Duration>,
}

impl Liveness {
    pub fn new(default: Duration) -> Self {
        Self {
            default,
            offered: None,
            gaps: VecDeque::with_capacity(GAPS_KEPT),
        }
    }

    /// The interval the agent accepted from us, if it accepts connection settings.
    pub fn set_offered(&mut self, offered: Option<Duration>) {
        self.offered = offered;
    }

    pub fn forget_gaps(&mut self) {
        self.gaps.clear();
    }

    /// The time between two heartbeats.
    pub fn record_gap(&mut self, gap: Duration) {
        if self.gaps.len() == GAPS_KEPT {
            self.gaps.pop_front();
        }
        self.gaps.push_back(gap);
    }

    pub fn expected_interval(&self) -> Duration {
        let learned = (self.gaps.len() >= GAPS_TRUSTED).then(|| {
            self.gaps
                .iter()
                .copied()
                .fold(Duration::ZERO, Duration::max)
        });
        let interval = match (self.offered, learned) {
            (Some(offered), Some(learned)) => offered.max(learned),
            (Some(offered), None) => offered,
            (None, Some(learned)) => learned,
            (None, None) => self.default,
        };
        interval.max(MIN_INTERVAL)
    }

    pub fn grace(&self) -> Duration {
        self.expected_interval().mul_f64(GRACE_FACTOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn assumes_the_default_until_it_has_seen_enough() {
        let mut l = Liveness::new(S(30));
        assert_eq!(l.grace(), S(75));
        l.record_gap(S(2));
        assert_eq!(l.expected_interval(), S(30));
        l.record_gap(S(2));
        assert_eq!(l.expected_interval(), S(2));
    }

    #[test]
    fn an_accepted_offer_is_a_floor() {
        let mut l = Liveness::new(S(30));
        l.set_offered(Some(S(5)));
        assert_eq!(l.expected_interval(), S(5));
        for _ in 0..GAPS_KEPT {
            l.record_gap(Duration::from_millis(100));
        }
        assert_eq!(l.expected_interval(), S(5));
        l.record_gap(S(30));
        assert_eq!(
            l.expected_interval(),
            S(30),
            "a slower agent is not declared gone"
        );
    }

    #[test]
    fn learned_interval_follows_recent_gaps_with_a_minimum() {
        let mut l = Liveness::new(S(30));
        for _ in 0..GAPS_KEPT {
            l.record_gap(S(20));
        }
        for _ in 0..GAPS_KEPT {
            l.record_gap(Duration::from_millis(100));
        }
        assert_eq!(l.expected_interval(), MIN_INTERVAL);
    }
}
