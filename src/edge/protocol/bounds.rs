//! What one AgentToServer may carry beyond its size in bytes, and how agent-supplied text is
//! cut before Corral keeps it. A message past a bound is refused whole (HTTP 400 with an
//! `error_response`, WebSocket close 1007), so every piece of per-report work stays linear in
//! what the bounds allow.

use super::proto;

pub use crate::core::domain::MAX_TEXT;
use crate::core::domain::cut_text as cut;
pub const MAX_HEALTH_DEPTH: usize = 16;
pub const MAX_HEALTH_NODES: usize = 1000;
pub const MAX_ATTRIBUTES: usize = 256;
/// Nesting of attribute values (arrays and key-value lists inside each other).
pub const MAX_VALUE_DEPTH: usize = 8;
pub const MAX_CONFIG_FILES: usize = 64;
pub const MAX_PACKAGES: usize = 256;
pub const MAX_CUSTOM_CAPABILITIES: usize = 64;

/// Why a message is refused, or nothing.
pub fn check(msg: &proto::AgentToServer) -> Result<(), String> {
    if let Some(d) = &msg.agent_description {
        let attributes = d.identifying_attributes.len() + d.non_identifying_attributes.len();
        if attributes > MAX_ATTRIBUTES {
            return Err(format!(
                "description has {attributes} attributes; at most {MAX_ATTRIBUTES}"
            ));
        }
        for kv in d
            .identifying_attributes
            .iter()
            .chain(&d.non_identifying_attributes)
        {
            check_value(kv, 1)?;
        }
    }
    if let Some(health) = &msg.health {
        check_health(health)?;
    }
    if let Some(files) = msg
        .effective_config
        .as_ref()
        .and_then(|ec| ec.config_map.as_ref())
        .map(|m| m.config_map.len())
        && files > MAX_CONFIG_FILES
    {
        return Err(format!(
            "effective config has {files} files; at most {MAX_CONFIG_FILES}"
        ));
    }
    if let Some(packages) = msg.package_statuses.as_ref().map(|p| p.packages.len())
        && packages > MAX_PACKAGES
    {
        return Err(format!(
            "{packages} package statuses; at most {MAX_PACKAGES}"
        ));
    }
    if let Some(custom) = msg
        .custom_capabilities
        .as_ref()
        .map(|c| c.capabilities.len())
        && custom > MAX_CUSTOM_CAPABILITIES
    {
        return Err(format!(
            "{custom} custom capabilities; at most {MAX_CUSTOM_CAPABILITIES}"
        ));
    }
    Ok(())
}

/// Depth and node count of the health tree, walked without recursion.
fn check_health(root: &proto::ComponentHealth) -> Result<(), String> {
    let mut stack = vec![(root, 1usize)];
    let mut nodes = 0usize;
    while let Some((node, depth)) = stack.pop() {
        nodes += 1;
        if nodes > MAX_HEALTH_NODES {
            return Err(format!(
                "health has more than {MAX_HEALTH_NODES} components"
            ));
        }
        if depth > MAX_HEALTH_DEPTH {
            return Err(format!(
                "health is nested more than {MAX_HEALTH_DEPTH} deep"
            ));
        }
        if node.attributes.len() > MAX_ATTRIBUTES {
            return Err(format!(
                "a health component has more than {MAX_ATTRIBUTES} attributes"
            ));
        }
        for kv in &node.attributes {
            check_value(kv, 1)?;
        }
        stack.extend(node.component_health_map.values().map(|c| (c, depth + 1)));
    }
    Ok(())
}

fn check_value(kv: &proto::KeyValue, depth: usize) -> Result<(), String> {
    match &kv.value {
        Some(value) => check_any(value, depth, &kv.key),
        None => Ok(()),
    }
}

fn check_any(value: &proto::AnyValue, depth: usize, key: &str) -> Result<(), String> {
    use proto::any_value::Value;
    if depth > MAX_VALUE_DEPTH {
        return Err(format!(
            "attribute {:?} is nested more than {MAX_VALUE_DEPTH} deep",
            cut(key, 64)
        ));
    }
    match &value.value {
        Some(Value::ArrayValue(array)) => {
            for inner in &array.values {
                check_any(inner, depth + 1, key)?;
            }
        }
        Some(Value::KvlistValue(list)) => {
            for inner in &list.values {
                check_value(inner, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Cuts a text in place to [`MAX_TEXT`].
pub fn bound(text: &mut String) {
    if text.len() > MAX_TEXT {
        *text = cut(text, MAX_TEXT);
    }
}

/// Cuts the errors, statuses and component names at every level of a health tree to
/// [`MAX_TEXT`].
pub fn bound_health(root: &mut proto::ComponentHealth) {
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        bound(&mut node.last_error);
        bound(&mut node.status);
        if node
            .component_health_map
            .keys()
            .any(|name| name.len() > MAX_TEXT)
        {
            node.component_health_map = std::mem::take(&mut node.component_health_map)
                .into_iter()
                .map(|(name, c)| (cut(&name, MAX_TEXT), c))
                .collect();
        }
        stack.extend(node.component_health_map.values_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(depth: usize) -> proto::ComponentHealth {
        let mut node = proto::ComponentHealth::default();
        for level in 0..depth {
            let mut parent = proto::ComponentHealth::default();
            parent
                .component_health_map
                .insert(format!("c{level}"), node);
            node = parent;
        }
        node
    }

    #[test]
    fn health_deeper_or_larger_than_allowed_is_refused() {
        let ok = proto::AgentToServer {
            health: Some(chain(MAX_HEALTH_DEPTH - 1)),
            ..Default::default()
        };
        assert_eq!(check(&ok), Ok(()));
        let deep = proto::AgentToServer {
            health: Some(chain(MAX_HEALTH_DEPTH)),
            ..Default::default()
        };
        assert!(check(&deep).unwrap_err().contains("nested"));
        let mut wide = proto::ComponentHealth::default();
        for i in 0..MAX_HEALTH_NODES {
            wide.component_health_map
                .insert(i.to_string(), proto::ComponentHealth::default());
        }
        let wide = proto::AgentToServer {
            health: Some(wide),
            ..Default::default()
        };
        assert!(check(&wide).unwrap_err().contains("components"));
    }

    #[test]
    fn nested_attribute_values_are_bounded() {
        let mut value = proto::AnyValue {
            value: Some(proto::any_value::Value::StringValue("x".into())),
        };
        for _ in 0..MAX_VALUE_DEPTH {
            value = proto::AnyValue {
                value: Some(proto::any_value::Value::ArrayValue(proto::ArrayValue {
                    values: vec![value],
                })),
            };
        }
        let msg = proto::AgentToServer {
            agent_description: Some(proto::AgentDescription {
                identifying_attributes: vec![proto::KeyValue {
                    key: "deep".into(),
                    value: Some(value),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check(&msg).unwrap_err().contains("nested"));
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(2000);
        let cut = cut(&long, MAX_TEXT);
        assert!(cut.len() <= MAX_TEXT);
        assert!(cut.ends_with('…'));
        let mut short = "fine".to_string();
        bound(&mut short);
        assert_eq!(short, "fine");
        let mut tree = chain(3);
        tree.last_error = "x".repeat(3 << 20);
        bound_health(&mut tree);
        assert!(tree.last_error.len() <= MAX_TEXT);
    }
}
