/// Decides when to ask an agent for a full report (`ReportFullState`): after a gap in its
/// sequence numbers, or when state the server needs is missing. Never twice while a full
/// report may be on its way, so an agent with odd numbering cannot make us loop; but an agent
/// that let [`PATIENCE`] messages go by without answering has dropped the request, and a later
/// gap asks again.
#[derive(Clone, Debug, Default)]
pub struct FullStateTracker {
    last_seq: Option<u64>,
    /// Messages still to wait for the full report asked for; 0 when none is awaited.
    awaiting: u8,
    asked_for_missing: bool,
}

/// How many messages an agent may send after being asked for its full state before the ask
/// counts as dropped.
pub const PATIENCE: u8 = 4;

impl FullStateTracker {
    /// Call on a new connection or poll session: the first message may be compressed.
    pub fn reconnected(&mut self) {
        self.awaiting = 0;
        self.asked_for_missing = false;
    }

    /// Whether to set `ReportFullState` in the reply to message `seq`. `is_full` says the
    /// message carried a description (full reports always do); `missing` says the merged
    /// state still lacks something the agent's capabilities promise.
    pub fn observe(&mut self, seq: u64, is_full: bool, missing: bool) -> bool {
        let gap = self.last_seq.is_none_or(|prev| seq != prev.wrapping_add(1));
        self.last_seq = Some(seq);
        if is_full {
            self.awaiting = 0;
        }
        if self.awaiting > 0 {
            self.awaiting -= 1;
            return false;
        }
        let ask_for_missing = missing && !self.asked_for_missing;
        if (gap && !is_full) || ask_for_missing {
            self.awaiting = PATIENCE;
            self.asked_for_missing |= missing;
            return true;
        }
        false
    }

    /// Heartbeats up to `seq` were answered elsewhere, in sequence: they are seen.
    pub fn caught_up(&mut self, seq: u64) {
        self.last_seq = Some(seq);
    }

    /// Neither waiting for a full report nor about to ask for one.
    pub fn settled(&self) -> bool {
        self.awaiting == 0 && self.last_seq.is_some()
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_compressed_messages_need_nothing() {
        let mut t = FullStateTracker::default();
        assert!(!t.observe(1, true, false));
        for seq in 2..10 {
            assert!(!t.observe(seq, false, false));
        }
    }

    #[test]
    fn a_gap_asks_once_until_the_full_report_arrives() {
        let mut t = FullStateTracker::default();
        t.observe(1, true, false);
        assert!(t.observe(5, false, false), "gap asks");
        assert!(!t.observe(9, false, false), "no second ask while waiting");
        assert!(!t.observe(10, true, false), "the full report settles it");
        assert!(!t.observe(11, false, false));
        assert!(t.observe(20, false, false), "a later gap asks again");
    }

    /// Regression: after one unanswered request, later gaps were never flagged again.
    #[test]
    fn an_ask_the_agent_dropped_is_made_again_at_a_later_gap() {
        let mut t = FullStateTracker::default();
        t.observe(1, true, false);
        assert!(t.observe(5, false, false), "gap asks");
        for seq in 6..6 + u64::from(PATIENCE) {
            assert!(!t.observe(seq, false, false), "waiting for the full report");
        }
        assert!(
            t.observe(20, false, false),
            "the ask was dropped: a new gap asks again"
        );
    }

    #[test]
    fn an_agent_that_never_answers_is_asked_at_most_once_per_patience() {
        let mut t = FullStateTracker::default();
        let asks = (0..100u64)
            .filter(|i| t.observe(i * 2, false, false))
            .count();
        assert!(
            asks <= 100 / (usize::from(PATIENCE) + 1) + 1,
            "asked {asks} times"
        );
    }

    #[test]
    fn repeated_numbers_do_not_ping_pong() {
        // A client that repeats sequence numbers on retries and answers every ask.
        let mut t = FullStateTracker::default();
        let mut asks = 0;
        let mut full = true;
        for seq in [1, 1, 2, 2, 3, 5, 5, 6] {
            if t.observe(seq, full, false) {
                asks += 1;
                full = true;
            } else {
                full = false;
            }
        }
        assert!(asks <= 4, "asked {asks} times for 8 messages");
    }

    #[test]
    fn a_compressed_first_message_asks() {
        let mut t = FullStateTracker::default();
        assert!(t.observe(42, false, false));
    }

    #[test]
    fn missing_state_is_asked_for_once_per_connection() {
        let mut t = FullStateTracker::default();
        assert!(t.observe(1, true, true));
        assert!(
            !t.observe(2, true, true),
            "the agent answered and still lacks it"
        );
        assert!(!t.observe(3, false, true));
        t.reconnected();
        assert!(t.observe(4, false, true));
    }
}
