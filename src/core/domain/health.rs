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
    pub fn problem(&self) -> Option<String> {
        if !self.healthy {
            if let Some(inner) = self.first_unhealthy_component() {
                return Some(inner);
            }
            return Some(if self.last_error.is_empty() {
                "agent reports unhealthy".to_string()
            } else {
                self.last_error.clone()
            });
        }
        self.first_unhealthy_component()
    }

    fn first_unhealthy_component(&self) -> Option<String> {
        self.components.iter().find_map(|(name, child)| {
            let detail = child.problem()?;
            Some(
                if child.components.values().any(|c| c.problem().is_some()) {
                    format!("{name}/{detail}")
                } else {
                    format!("{name}: {detail}")
                },
            )
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
        assert_eq!(
            Health::default().problem().as_deref(),
            Some("agent reports unhealthy")
        );
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
