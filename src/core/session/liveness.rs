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
    /// The latest gaps in milliseconds, oldest overwritten first; kept inline, since every
    /// agent has one.
    gaps: [u32; GAPS_KEPT],
    /// Gaps seen, up to [`GAPS_KEPT`].
    seen: u8,
    /// Where the next gap goes.
    next: u8,
}

impl Liveness {
    pub fn new(default: Duration) -> Self {
        Self {
            default,
            offered: None,
            gaps: [0; GAPS_KEPT],
            seen: 0,
            next: 0,
        }
    }

    /// The interval the agent accepted from us, if it accepts connection settings.
    pub fn set_offered(&mut self, offered: Option<Duration>) {
        self.offered = offered;
    }

    pub fn forget_gaps(&mut self) {
        self.seen = 0;
        self.next = 0;
    }

    /// The time between two heartbeats.
    pub fn record_gap(&mut self, gap: Duration) {
        let ms = u32::try_from(gap.as_millis()).unwrap_or(u32::MAX);
        self.gaps[usize::from(self.next)] = ms;
        self.next = (self.next + 1) % GAPS_KEPT as u8;
        self.seen = (self.seen + 1).min(GAPS_KEPT as u8);
    }

    /// Whether the interval is known: accepted from our offer, or learned from enough gaps.
    /// Until then only the actor may hear the agent, since only it learns the gaps at once.
    pub fn settled(&self) -> bool {
        self.offered.is_some() || usize::from(self.seen) >= GAPS_TRUSTED
    }

    pub fn expected_interval(&self) -> Duration {
        let seen = usize::from(self.seen);
        let learned = (seen >= GAPS_TRUSTED).then(|| {
            let longest = self.gaps[..seen].iter().copied().max().unwrap_or(0);
            Duration::from_millis(u64::from(longest))
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
