//! Waits shared by both drivers: reconnection backoff, pauses that end on stop, and the
//! deadlines of a goodbye and a restart.

use std::time::Duration;

use rand::Rng;
use tokio::time::{Instant, sleep};

use crate::context::Ctx;

/// The longest wait for a goodbye to be sent and the connection closed.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between closing the connection and reconnecting on a restart.
pub const RESTART_PAUSE: Duration = Duration::from_millis(200);

pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The wait before the next attempt: the current step with ±50% jitter.
    pub fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(rand::rng().random_range(0.5..1.5))
    }
}

/// Sleeps unless the simulation stops first; returns false when stopped.
pub async fn pause(ctx: &Ctx, d: Duration) -> bool {
    tokio::select! {
        _ = ctx.stop.cancelled() => false,
        _ = sleep(d) => true,
    }
}

/// A deadline for a `select!` branch that is switched off.
pub fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}
