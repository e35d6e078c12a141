//! The fleet's counters: one set of relaxed atomics shared by every agent task, read by the
//! progress lines and the summary.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Stats {
    pub spawned: AtomicU64,
    /// Agents currently connected (WS: the connection got its first reply; HTTP: the last
    /// poll succeeded).
    pub connected: AtomicI64,
    /// `connected` when the stop was decided, before agents start saying goodbye.
    pub connected_at_stop: AtomicI64,
    pub ever_connected: AtomicU64,
    pub all_connected_ms: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub heartbeats: AtomicU64,
    pub full_reports: AtomicU64,
    pub configs_received: AtomicU64,
    pub configs_applied: AtomicU64,
    pub configs_failed: AtomicU64,
    /// Remote configs whose hash was the one last applying, applied or failed.
    pub configs_ignored: AtomicU64,
    /// Of those, offers of the config the agent had already applied (status APPLIED): a
    /// server that re-sends these wastes bandwidth and, with a real collector, a reload.
    pub configs_resent: AtomicU64,
    /// Remote configs replaced by a newer one before they were applied.
    pub configs_superseded: AtomicU64,
    pub component_map_requests: AtomicU64,
    pub component_maps_sent: AtomicU64,
    pub error_responses: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Connections or polls the server answered 503 with a Retry-After: told to come back
    /// later, not failed.
    pub told_to_wait: AtomicU64,
    pub connection_drops: AtomicU64,
    pub poll_errors: AtomicU64,
    pub decode_errors: AtomicU64,
    pub reconnects: AtomicU64,
    /// Connections plain-HTTP agents opened (their own, not the pooled client's).
    pub http_connections_opened: AtomicU64,
    pub full_state_requests: AtomicU64,
    pub uid_reassignments: AtomicU64,
    pub foreign_uid_replies: AtomicU64,
    pub heartbeat_offers: AtomicU64,
    pub immediate_send_limit_hits: AtomicU64,
    pub disconnects_sent: AtomicU64,
    /// Disconnections on purpose (--churn).
    pub churn_disconnects: AtomicU64,
    /// Connections (WS) or polls (HTTP) that succeeded again after a churn disconnection.
    pub churn_reconnects: AtomicU64,
    /// Packages offered in packages_available (one per package entry).
    pub packages_offered: AtomicU64,
    /// Offers of a hash the agent has, is working on or failed: not downloaded again.
    pub packages_ignored: AtomicU64,
    /// Downloads started.
    pub downloads: AtomicU64,
    /// Downloads that completed (all bytes received, whatever the hash).
    pub downloads_completed: AtomicU64,
    pub download_bytes: AtomicU64,
    /// Range requests the server answered with 206 from the right offset.
    pub download_resumes: AtomicU64,
    pub installs: AtomicU64,
    /// Download errors, hash mismatches and simulated install failures.
    pub install_failures: AtomicU64,
    /// Restart commands carried out (installs restart too; they are counted as installs).
    pub restarts: AtomicU64,
    pub logged: AtomicU64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}
