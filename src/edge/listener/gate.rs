//! Which new connections are served and which are told to come back later: a rate of new
//! connections, and a cap on those not yet past their first message. A reconnect storm is
//! smoothed instead of refused: the excess is told to retry after a random delay, so it does
//! not come back as one wave. The delay is spread over the time the refused backlog needs at
//! the admitted rate (1 s at least, 30 s at most), so a storm comes back about as fast as it
//! can be let in, and no faster.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where the retry delay told to refused connections is drawn from, uniformly, in seconds, at
/// its widest.
pub const RETRY_WINDOW_SECS: RangeInclusive<u64> = 1..=30;
/// The pace the backlog is reckoned at when new connections are not paced.
const UNPACED_RATE: f64 = 2_000.0;

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

/// Connections told to come back and not yet due: each refusal adds one, and the admitted
/// rate takes them away as time passes.
#[derive(Debug)]
struct Backlog {
    waiting: f64,
    last: Instant,
}

/// Decides, at accept, whether a new connection is served.
#[derive(Debug)]
pub struct Gate {
    rate: Option<Rate>,
    handshakes: Ceiling,
    backlog: Backlog,
}

impl Gate {
    pub fn new(per_second: Option<u32>, max_handshakes: usize, now: Instant) -> Self {
        Self {
            rate: per_second.map(|rate| Rate::new(rate, now)),
            handshakes: Ceiling::new(max_handshakes),
            backlog: Backlog {
                waiting: 0.0,
                last: now,
            },
        }
    }

    /// The place a served connection holds until its first message is answered, or why it
    /// is refused and when it should come back. A connection refused for the rate takes no
    /// handshake place.
    pub fn admit(&mut self, now: Instant) -> Result<Place, (Refusal, Duration)> {
        let paced = self.rate.as_mut().is_none_or(|rate| rate.take(now));
        let refusal = if !paced {
            Refusal::Rate
        } else {
            match self.handshakes.enter() {
                Some(place) => return Ok(place),
                None => Refusal::Handshakes,
            }
        };
        Err((refusal, self.come_back(now)))
    }

    /// A delay for one more refused connection: at random within the time the backlog needs
    /// at the admitted rate.
    fn come_back(&mut self, now: Instant) -> Duration {
        let pace = self.rate.as_ref().map_or(UNPACED_RATE, |r| r.per_second);
        let backlog = &mut self.backlog;
        let elapsed = now.saturating_duration_since(backlog.last).as_secs_f64();
        backlog.last = now;
        backlog.waiting = (backlog.waiting - elapsed * pace).max(0.0) + 1.0;
        let widest = (backlog.waiting / pace).ceil() as u64;
        let window = widest.clamp(*RETRY_WINDOW_SECS.start(), *RETRY_WINDOW_SECS.end());
        Duration::from_secs(fastrand::u64(*RETRY_WINDOW_SECS.start()..=window))
    }
}

/// A retry delay drawn from the widest window, for refusals with no backlog to go by.
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
        assert_eq!(gate.admit(now).unwrap_err().0, Refusal::Handshakes);
        drop(first);
        assert!(gate.admit(now).is_ok());
    }

    #[test]
    fn a_connection_refused_for_the_rate_holds_no_handshake_place() {
        let now = Instant::now();
        let mut gate = Gate::new(Some(1), 10, now);
        let _held = gate.admit(now).unwrap();
        assert_eq!(gate.admit(now).unwrap_err().0, Refusal::Rate);
        assert_eq!(gate.handshakes.held(), 1);
    }

    /// A storm of 19,000 at 2,000 a second: the refused are told to come back within the
    /// ten seconds their backlog needs, not all of them within one second nor over thirty.
    #[test]
    fn retry_delays_spread_over_what_the_backlog_needs() {
        let now = Instant::now();
        let mut gate = Gate::new(Some(2_000), 100_000, now);
        let mut delays = Vec::new();
        let mut places = Vec::new();
        for _ in 0..19_000 {
            match gate.admit(now) {
                Ok(place) => places.push(place),
                Err((_, after)) => delays.push(after.as_secs()),
            }
        }
        assert_eq!(places.len(), 2_000);
        let latest = delays.iter().copied().max().unwrap();
        assert!((8..=10).contains(&latest), "latest {latest} s");
        let early = delays[..1_000].iter().copied().max().unwrap();
        assert!(
            early <= 2,
            "the first refused have a short backlog ahead: {early} s"
        );
        // A lone refusal long after the storm is told to come back soon.
        let later = now + Duration::from_secs(60);
        let mut small = Gate::new(Some(1), 10, later);
        let _held = small.admit(later).unwrap();
        assert_eq!(small.admit(later).unwrap_err().1, Duration::from_secs(1));
    }

    #[test]
    fn retry_delays_spread_over_the_window() {
        let delays: std::collections::HashSet<u64> =
            (0..500).map(|_| retry_after().as_secs()).collect();
        assert!(delays.iter().all(|d| RETRY_WINDOW_SECS.contains(d)));
        assert!(delays.len() > 20, "delays are spread: {delays:?}");
    }
}
