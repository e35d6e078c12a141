use bytes::Bytes;

use super::{AttributeValue, StrMap};

/// An agent's health as the fleet keeps it: the tree in its wire encoding (an OpAMP
/// ComponentHealth message, which the protocol module reads and writes) and the one thing
/// every status derivation needs from it. Every agent holds one; the tree itself is read only
/// when someone looks, and kept this way it takes a few hundred bytes instead of a few
/// kilobytes of nodes and strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    pub encoded: Bytes,
    /// [`Health::problem`] of the tree.
    pub problem: Option<Box<str>>,
}

/// An agent's health report, a tree of components (OpAMP's ComponentHealth).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    pub healthy: bool,
    pub start_time_unix_nano: u64,
    pub last_error: String,
    pub status: String,
    pub status_time_unix_nano: u64,
    pub components: StrMap<Health>,
    pub attributes: StrMap<AttributeValue>,
}

impl Health {
    /// The first reason this tree is unhealthy, depth first: the agent's own error, or the
    /// path of the first unhealthy component with its error. `None` when all is healthy.
    /// Each node is looked at once at most: the cost is linear in the tree.
    /// A node that is starting, stopping, stopped or not ready without an error is no problem:
    /// the collector reports `StatusStarting`, `StatusStopping` and `StatusStopped` as
    /// unhealthy (at shutdown its pipelines stop before its opamp extension says goodbye),
    /// and its opamp extension a bare `healthy: false` (no status, error or components) while
    /// it is not ready, at start and at shutdown; every restart would otherwise pass through
    /// Error.
    pub fn problem(&self) -> Option<String> {
        self.first_unhealthy_component()
            .or_else(|| self.is_bad().then(|| self.own_error()))
    }

    /// Unhealthy, and not merely starting, stopping, stopped or not ready.
    fn is_bad(&self) -> bool {
        let not_ready = self.status.is_empty() && self.components.is_empty();
        let passing = self.last_error.is_empty()
            && (not_ready
                || matches!(
                    self.status.as_str(),
                    "StatusStarting" | "StatusStopping" | "StatusStopped"
                ));
        !self.healthy && !passing
    }

    fn own_error(&self) -> String {
        if self.last_error.is_empty() {
            "agent reports unhealthy".to_string()
        } else {
            self.last_error.clone()
        }
    }

    /// The path to the first unhealthy component below this node, with its error. A component
    /// whose own components are unhealthy is named with `/` before theirs; one that is
    /// unhealthy itself with `: ` before its error.
    fn first_unhealthy_component(&self) -> Option<String> {
        self.components
            .iter()
            .find_map(|(name, child)| match child.first_unhealthy_component() {
                Some(inner) => Some(format!("{name}/{inner}")),
                None if child.is_bad() => Some(format!("{name}: {}", child.own_error())),
                None => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Health {
        Health {
            healthy: true,
            ..Health::default()
        }
    }

    #[test]
    fn healthy_tree_has_no_problem() {
        let mut h = healthy();
        h.components.insert("receiver:otlp".into(), healthy());
        assert_eq!(h.problem(), None);
    }

    #[test]
    fn unhealthy_agent_without_message_gets_a_reason() {
        let failing = Health {
            status: "StatusRecoverableError".into(),
            ..Health::default()
        };
        assert_eq!(
            failing.problem().as_deref(),
            Some("agent reports unhealthy")
        );
        assert_eq!(
            Health::default().problem(),
            None,
            "a bare report: not ready yet"
        );
    }

    /// Regression: a collector stopping with a pipeline already `StatusStopped` (it stops
    /// pipelines before its opamp extension says goodbye) passed through Error.
    #[test]
    fn starting_or_stopping_without_an_error_is_no_problem() {
        let passing = |status: &str, error: &str| Health {
            status: status.into(),
            last_error: error.into(),
            ..Health::default()
        };
        let mut root = passing("StatusStarting", "");
        root.components
            .insert("extension:opamp".into(), passing("StatusStopping", ""));
        let mut pipeline = healthy();
        pipeline
            .components
            .insert("exporter:nop".into(), passing("StatusStopped", ""));
        root.components.insert("pipeline:traces".into(), pipeline);
        assert_eq!(root.problem(), None);
        root.components.insert(
            "receiver:otlp".into(),
            passing("StatusStarting", "port in use"),
        );
        assert_eq!(
            root.problem().as_deref(),
            Some("receiver:otlp: port in use")
        );
        assert!(passing("StatusPermanentError", "").problem().is_some());
    }

    /// A chain of unhealthy components, `depth` deep.
    fn chain(depth: usize) -> Health {
        let mut node = Health {
            last_error: "bottom".into(),
            ..Health::default()
        };
        for level in 0..depth {
            let mut parent = Health::default();
            parent
                .components
                .insert(format!("c{level}").as_str().into(), node);
            node = parent;
        }
        node
    }

    /// Regression: the walk looked again below every node, so its cost doubled about every
    /// 1.5 levels and this test never ended (64 levels: about 2^43 visits). Linear now.
    #[test]
    fn the_walk_is_linear_in_the_depth_of_the_tree() {
        let deep = chain(64);
        let problem = deep.problem().expect("unhealthy");
        assert!(problem.starts_with("c63/c62/"), "{problem}");
        assert!(problem.ends_with("c0: bottom"), "{problem}");
    }

    #[test]
    fn names_the_unhealthy_component_path() {
        let mut exporter = Health {
            last_error: "connection refused".into(),
            ..Health::default()
        };
        exporter.components.insert("inner".into(), healthy());
        let mut pipeline = healthy();
        pipeline.components.insert("exporter:otlp".into(), exporter);
        let mut root = Health {
            last_error: "pipeline failed".into(),
            ..Health::default()
        };
        root.components.insert("pipeline:traces".into(), pipeline);
        assert_eq!(
            root.problem().as_deref(),
            Some("pipeline:traces/exporter:otlp: connection refused")
        );
    }
}
