//! Which new connections are served and which are told to come back later: a rate of new
//! connections, and a cap on those not yet past their first message. A reconnect storm is
//! smoothed instead of refused: the excess is told to retry after a random delay, so it does
//! not come back as one wave.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where the retry delay told to refused connections is drawn from, uniformly, in seconds.
pub const RETRY_WINDOW_SECS: RangeInclusive<u64> = 1..=30;

/// A token bucket: `rate` new connections a second, bursts of up to one second's worth.
#[derive(Debug)]
pub struct Rate {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Rate {
    pub fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A count of things in progress with a ceiling, and the guard that holds one place.
#[derive(Clone, Debug)]
pub struct Ceiling {
    held: Arc<AtomicUsize>,
    max: usize,
}

/// One place under a [`Ceiling`]; given back when dropped.
#[derive(Debug)]
pub struct Place(Arc<AtomicUsize>);

impl Ceiling {
    pub fn new(max: usize) -> Self {
        Self {
            held: Arc::default(),
            max,
        }
    }

    /// A place, unless all are held.
    pub fn enter(&self) -> Option<Place> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max).then_some(held + 1)
            })
            .ok()
            .map(|_| Place(self.held.clone()))
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a new connection is told to come back later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// More new connections this second than the rate allows.
    Rate,
    /// Too many connections have not had their first message answered yet.
    Handshakes,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rate => "connection_rate",
            Refusal::Handshakes => "pending_handshakes",
        }
    }
}

/// Decides, at accept, whether a new connection is served.
#[derive(Debug)]
pub struct Gate {
    rate: Option<Rate>,
    handshakes: Ceiling,
}

impl Gate {
    pub fn new(per_second: Option<u32>, max_handshakes: usize, now: Instant) -> Self {
        Self {
            rate: per_second.map(|rate| Rate::new(rate, now)),
            handshakes: Ceiling::new(max_handshakes),
        }
    }

    /// The place a served connection holds until its first message is answered, or why it
    /// is refused. A connection refused for the rate takes no handshake place.
    pub fn admit(&mut self, now: Instant) -> Result<Place, Refusal> {
        if let Some(rate) = &mut self.rate
            && !rate.take(now)
        {
            return Err(Refusal::Rate);
        }
        self.handshakes.enter().ok_or(Refusal::Handshakes)
    }
}

/// A retry delay drawn from [`RETRY_WINDOW_SECS`].
pub fn retry_after() -> Duration {
    Duration::from_secs(fastrand::u64(RETRY_WINDOW_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_allows_a_burst_of_one_second_then_refills_with_time() {
        let start = Instant::now();
        let mut rate = Rate::new(10, start);
        let admitted = (0..25).filter(|_| rate.take(start)).count();
        assert_eq!(admitted, 10);
        let later = start + Duration::from_millis(500);
        let admitted = (0..25).filter(|_| rate.take(later)).count();
        assert_eq!(admitted, 5);
        let much_later = start + Duration::from_secs(60);
        let admitted = (0..25).filter(|_| rate.take(much_later)).count();
        assert_eq!(
            admitted, 10,
            "a quiet minute does not save up more than a second"
        );
    }

    #[test]
    fn handshake_places_come_back_when_dropped() {
        let now = Instant::now();
        let mut gate = Gate::new(None, 2, now);
        let first = gate.admit(now).unwrap();
        let _second = gate.admit(now).unwrap();
        assert_eq!(gate.admit(now).unwrap_err(), Refusal::Handshakes);
        drop(first);
        assert!(gate.admit(now).is_ok());
    }

    #[test]
    fn a_connection_refused_for_the_rate_holds_no_handshake_place() {
        let now = Instant::now();
        let mut gate = Gate::new(Some(1), 10, now);
        let _held = gate.admit(now).unwrap();
        assert_eq!(gate.admit(now).unwrap_err(), Refusal::Rate);
        assert_eq!(gate.handshakes.held(), 1);
    }

    #[test]
    fn retry_delays_spread_over_the_window() {
        let delays: std::collections::HashSet<u64> =
            (0..500).map(|_| retry_after().as_secs()).collect();
        assert!(delays.iter().all(|d| RETRY_WINDOW_SECS.contains(d)));
        assert!(delays.len() > 20, "delays are spread: {delays:?}");
    }
}
