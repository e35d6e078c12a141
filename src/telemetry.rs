//! Logging set-up and the Prometheus metrics every part of the server reports into.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::domain::Transport;
use crate::core::lifecycle::{AdminState, STATE_NAMES};
use crate::core::rollout::Rollout;
use crate::core::status::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminStateLabel {
    pub admin_state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CutLabel {
    pub listener: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// An admin API request: its route's template (`/api/v1/agents/{uid}`, or `unmatched`), never
/// the path itself, so the series are as many as the routes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRouteLabel {
    pub route: String,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabel {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutStateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabel {
    rollout: String,
}

/// The route label of a request no route took.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Admin API request durations, in seconds: 1 ms to about 16 s.
fn api_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric the server exports. Cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    pub agents: Family<StatusLabel, Gauge>,
    /// Indexed by `AdminState::index`, looked up once.
    admin_states: [Gauge; 6],
    pub connections: Family<TransportLabel, Gauge>,
    pub messages_in: Family<TransportLabel, Counter>,
    pub messages_out: Family<TransportLabel, Counter>,
    pub decode_errors: Family<KindLabel, Counter>,
    pub rejected_requests: Family<KindLabel, Counter>,
    pub queue_overflows: Family<KindLabel, Counter>,
    pub connections_cut: Family<CutLabel, Counter>,
    pub store_flushes: Counter,
    pub store_errors: Counter,
    pub store_rows_set_aside: Counter,
    pub api_requests: Family<ApiRequestLabel, Counter>,
    pub api_request_duration: Family<ApiRouteLabel, Histogram, fn() -> Histogram>,
    /// The message counters of each transport (by `Transport as usize`), looked up once:
    /// they are counted on every heartbeat, and a family lookup hashes its labels under a lock.
    counted_in: [Counter; 2],
    counted_out: [Counter; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("corral"),
            agents: Family::default(),
            admin_states: Default::default(),
            connections: Family::default(),
            messages_in: Family::default(),
            messages_out: Family::default(),
            decode_errors: Family::default(),
            rejected_requests: Family::default(),
            queue_overflows: Family::default(),
            connections_cut: Family::default(),
            store_flushes: Counter::default(),
            store_errors: Counter::default(),
            store_rows_set_aside: Counter::default(),
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(api_duration_histogram),
            counted_in: Default::default(),
            counted_out: Default::default(),
        };
        m.registry
            .register("agents", "Known agents by status", m.agents.clone());
        m.registry.register(
            "connections",
            "Open agent connections by transport (HTTP: agents polling)",
            m.connections.clone(),
        );
        m.registry.register(
            "messages_in",
            "AgentToServer messages received",
            m.messages_in.clone(),
        );
        m.registry.register(
            "messages_out",
            "ServerToAgent messages sent",
            m.messages_out.clone(),
        );
        m.registry.register(
            "decode_errors",
            "Inbound messages that could not be decoded, by kind",
            m.decode_errors.clone(),
        );
        m.registry.register(
            "rejected_requests",
            "OpAMP requests refused before decoding (size, content type, path, method)",
            m.rejected_requests.clone(),
        );
        m.registry.register(
            "queue_overflows",
            "Messages dropped because a bounded queue was full, by queue",
            m.queue_overflows.clone(),
        );
        m.registry.register(
            "connections_cut",
            "Connections closed or refused by a limit: max_connections, connection_rate and \
             pending_handshakes (refused), header_timeout, body_timeout, idle_timeout, \
             first_message_timeout and ping_timeout (closed)",
            m.connections_cut.clone(),
        );
        m.registry.register(
            "store_flushes",
            "Batches written to the store",
            m.store_flushes.clone(),
        );
        m.registry.register(
            "store_rows_set_aside",
            "Agent rows that could not be read at start, moved to agents_set_aside",
            m.store_rows_set_aside.clone(),
        );
        m.registry.register(
            "store_errors",
            "Store writes that failed (retried)",
            m.store_errors.clone(),
        );
        m.registry.register(
            "api_requests",
            "Admin API requests by route template, method and status",
            m.api_requests.clone(),
        );
        m.registry.register(
            "api_request_duration_seconds",
            "Time the admin API took to answer, by route template and method",
            m.api_request_duration.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        m.registry
            .register("build_info", "The running build: always 1", build_info);
        for status in Status::ALL {
            let _ = m.agents.get_or_create(&StatusLabel {
                status: status.as_str(),
            });
        }
        let by_admin_state = Family::<AdminStateLabel, Gauge>::default();
        m.registry.register(
            "agents_by_admin_state",
            "Known agents by admin state",
            by_admin_state.clone(),
        );
        for (i, name) in STATE_NAMES.into_iter().enumerate() {
            m.admin_states[i] = by_admin_state
                .get_or_create(&AdminStateLabel { admin_state: name })
                .clone();
        }
        for transport in Transport::ALL {
            let label = TransportLabel {
                transport: transport.as_str(),
            };
            let _ = m.connections.get_or_create(&label);
            m.counted_in[transport as usize] = m.messages_in.get_or_create(&label).clone();
            m.counted_out[transport as usize] = m.messages_out.get_or_create(&label).clone();
        }
        m
    }
}

impl Metrics {
    pub fn agents_with(&self, status: Status) -> i64 {
        self.agents
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .get()
    }

    pub fn move_agent(&self, from: Option<Status>, to: Option<Status>) {
        if let Some(from) = from {
            self.agents
                .get_or_create(&StatusLabel {
                    status: from.as_str(),
                })
                .dec();
        }
        if let Some(to) = to {
            self.agents
                .get_or_create(&StatusLabel {
                    status: to.as_str(),
                })
                .inc();
        }
    }

    pub fn move_admin(&self, from: Option<AdminState>, to: Option<AdminState>) {
        if let Some(from) = from {
            self.admin_states[from.index()].dec();
        }
        if let Some(to) = to {
            self.admin_states[to.index()].inc();
        }
    }

    pub fn agents_in(&self, state: AdminState) -> i64 {
        self.admin_states[state.index()].get()
    }

    pub fn connections(&self, transport: Transport) -> Gauge {
        self.connections
            .get_or_create(&TransportLabel {
                transport: transport.as_str(),
            })
            .clone()
    }

    pub fn message_in(&self, transport: Transport) {
        self.counted_in[transport as usize].inc();
    }

    pub fn message_out(&self, transport: Transport) {
        self.counted_out[transport as usize].inc();
    }

    pub fn decode_error(&self, kind: &'static str) {
        self.decode_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// A connection closed or refused by one of the listener's limits.
    pub fn cut(&self, listener: &'static str, reason: &'static str) {
        self.connections_cut
            .get_or_create(&CutLabel { listener, reason })
            .inc();
    }

    pub fn rejected(&self, kind: &'static str) {
        self.rejected_requests
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub fn overflow(&self, kind: &'static str) {
        self.queue_overflows
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// One admin API request, answered.
    pub fn api_request(
        &self,
        route: &str,
        method: &axum::http::Method,
        status: u16,
        took: std::time::Duration,
    ) {
        use axum::http::Method;
        // Only the standard methods: a client may send any token as a method.
        let method = match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        self.api_requests
            .get_or_create(&ApiRequestLabel {
                route: route.to_string(),
                method,
                status,
            })
            .inc();
        self.api_request_duration
            .get_or_create(&ApiRouteLabel {
                route: route.to_string(),
                method,
            })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.render_with(&[])
    }

    /// Every metric, and the rollouts as they are now (read at each scrape, so they are never
    /// stale): how many in each state, and each unfinished one's wave and errors.
    pub fn render_with(&self, rollouts: &[std::sync::Arc<Rollout>]) -> String {
        let mut now = Registry::with_prefix("corral");
        let by_state = Family::<RolloutStateLabel, Gauge>::default();
        for state in crate::core::rollout::State::ALL {
            let n = rollouts
                .iter()
                .filter(|r| r.progress.state == state)
                .count();
            by_state
                .get_or_create(&RolloutStateLabel {
                    state: state.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        now.register("rollouts", "Rollouts by state", by_state);
        let wave = Family::<RolloutLabel, Gauge>::default();
        let errors = Family::<RolloutLabel, Gauge>::default();
        for r in rollouts.iter().filter(|r| !r.progress.state.is_terminal()) {
            let label = RolloutLabel {
                rollout: r.id.clone(),
            };
            wave.get_or_create(&label).set(i64::from(r.progress.wave));
            errors
                .get_or_create(&label)
                .set(i64::from(r.progress.counts().errors));
        }
        now.register(
            "rollout_wave",
            "The wave each unfinished rollout (pending, started, paused, error) is at",
            wave,
        );
        now.register(
            "rollout_errors",
            "Agents each unfinished rollout counts as errors (failed or timed out)",
            errors,
        );
        let mut out = String::new();
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &now))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file or a journal.
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr must cost only the log lines: tracing-subscriber would otherwise
        // report the failed write with `eprintln!`, which panics the task that logged (the
        // signal handler, on its way to shut the server down).
        .log_internal_errors(false)
        .try_init();
}
