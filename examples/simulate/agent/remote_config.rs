//! Remote configs: APPLYING at once, APPLIED or FAILED once the apply delay has passed.

use bytes::Bytes;
use corral::edge::protocol::proto::{self, RemoteConfigStatuses};
use rand::Rng;
use tokio::time::Instant;

use super::Agent;
use crate::context::Ctx;
use crate::stats::inc;

pub(super) struct PendingApply {
    at: Instant,
    hash: Bytes,
    config: proto::AgentConfigMap,
    /// Why applying fails (None: it succeeds).
    fail: Option<String>,
}

impl Agent {
    /// Starts applying a remote config: APPLYING at once, APPLIED or FAILED after the apply
    /// delay. The config last applying, applied or failed (the same hash) is ignored, as the
    /// collector does; an earlier one that comes back (a rollback) is applied again.
    pub(super) fn on_remote_config(&mut self, rc: proto::AgentRemoteConfig, ctx: &Ctx) {
        let st = &ctx.stats;
        inc(&st.configs_received);
        let known = rc.config_hash == self.remote_status.last_remote_config_hash
            && self.remote_status.status() != RemoteConfigStatuses::Unset;
        if known {
            inc(&st.configs_ignored);
            if self.remote_status.status() == RemoteConfigStatuses::Applied {
                inc(&st.configs_resent);
            }
            return;
        }
        if self.pending_apply.is_some() {
            inc(&st.configs_superseded);
        }
        let config = rc.config.unwrap_or_default();
        let marker = ctx.args.fail_on.iter().find(|m| {
            config
                .config_map
                .values()
                .any(|f| contains(&f.body, m.as_bytes()))
        });
        let (delay, fail) = {
            let mut rng = rand::rng();
            let delay = ctx
                .args
                .apply_delay_dist
                .draw(ctx.args.apply_delay_ms, &mut rng);
            let fail = match marker {
                Some(m) => Some(format!(
                    "simulated failure: the config contains {m:?} (--fail-on)"
                )),
                None => rng.random_bool(ctx.args.failure_ratio).then(|| {
                    "simulated failure: invalid keys in processors::batch (--failure-ratio)"
                        .to_string()
                }),
            };
            (delay, fail)
        };
        self.remote_status = proto::RemoteConfigStatus {
            last_remote_config_hash: rc.config_hash.clone(),
            status: RemoteConfigStatuses::Applying.into(),
            error_message: String::new(),
        };
        self.dirty.remote = true;
        self.must_send = true;
        self.pending_apply = Some(PendingApply {
            at: Instant::now() + delay,
            hash: rc.config_hash,
            config,
            fail,
        });
    }

    /// When the pending remote config is applied: not before APPLYING has been sent.
    pub fn apply_at(&self) -> Option<Instant> {
        self.pending_apply
            .as_ref()
            .filter(|_| !self.dirty.remote)
            .map(|p| p.at)
    }

    /// Finishes applying the pending remote config.
    pub fn apply_due(&mut self, ctx: &Ctx) {
        let Some(p) = self.pending_apply.take() else {
            return;
        };
        if let Some(error_message) = p.fail {
            inc(&ctx.stats.configs_failed);
            self.remote_status = proto::RemoteConfigStatus {
                last_remote_config_hash: p.hash,
                status: RemoteConfigStatuses::Failed.into(),
                error_message,
            };
        } else {
            inc(&ctx.stats.configs_applied);
            self.effective = ctx.shared_config(&p.hash, p.config);
            self.remote_status = proto::RemoteConfigStatus {
                last_remote_config_hash: p.hash,
                status: RemoteConfigStatuses::Applied.into(),
                error_message: String::new(),
            };
            self.dirty.effective = true;
        }
        self.dirty.remote = true;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
