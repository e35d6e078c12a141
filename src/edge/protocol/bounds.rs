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
/// Available components, sub-components included (a real collector reports a few hundred),
/// and how deep sub-components nest.
pub const MAX_COMPONENTS: usize = 10_000;
pub const MAX_COMPONENT_DEPTH: usize = 8;
/// What the parts of a report the API shows may take there, in bytes of JSON (text after its
/// cuts, escapes and structure counted at their largest): with the history and the rest, an
/// agent's JSON stays under 256 KiB whatever it sends.
pub const MAX_SHOWN_DESCRIPTION: usize = 24 * 1024;
pub const MAX_SHOWN_HEALTH: usize = 96 * 1024;
pub const MAX_SHOWN_PACKAGES: usize = 48 * 1024;
/// JSON around one health component at most: its fields' names, booleans and times.
const HEALTH_NODE_JSON: usize = 180;
/// JSON around one package status at most, its hashes included.
const PACKAGE_JSON: usize = 140;
/// JSON around one attribute or value.
const VALUE_JSON: usize = 8;

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
    if let Some(d) = &msg.agent_description {
        let shown: usize = d
            .identifying_attributes
            .iter()
            .chain(&d.non_identifying_attributes)
            .map(shown_kv)
            .sum();
        within("description", shown, MAX_SHOWN_DESCRIPTION)?;
    }
    if let Some(health) = &msg.health {
        check_health(health)?;
        within("health", shown_health(health), MAX_SHOWN_HEALTH)?;
    }
    if let Some(packages) = &msg.package_statuses {
        let shown: usize = packages
            .packages
            .iter()
            .map(|(name, p)| {
                PACKAGE_JSON
                    + shown_str(name)
                    + shown_str(&p.agent_has_version)
                    + shown_str(&p.server_offered_version)
                    + shown_cut(&p.error_message)
            })
            .sum();
        within("package statuses", shown, MAX_SHOWN_PACKAGES)?;
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
    if let Some(available) = &msg.available_components {
        check_components(available)?;
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

fn within(what: &str, shown: usize, max: usize) -> Result<(), String> {
    if shown > max {
        return Err(format!(
            "{what} would take {shown} bytes to show; at most {max}"
        ));
    }
    Ok(())
}

/// The bytes of a JSON string holding `text`: quotes, and escapes at their longest.
fn shown_str(text: &str) -> usize {
    2 + text
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// [`shown_str`] of a text Corral cuts to [`MAX_TEXT`] and cleans of control characters.
fn shown_cut(text: &str) -> usize {
    2 + text.len().min(MAX_TEXT) * 2
}

fn shown_kv(kv: &proto::KeyValue) -> usize {
    VALUE_JSON + shown_str(&kv.key) + kv.value.as_ref().map_or(4, shown_any)
}

fn shown_any(value: &proto::AnyValue) -> usize {
    use proto::any_value::Value;
    VALUE_JSON
        + match &value.value {
            Some(Value::StringValue(s)) => shown_str(s),
            Some(Value::BytesValue(b)) => 2 + 2 * b.len(),
            Some(Value::ArrayValue(array)) => array.values.iter().map(shown_any).sum(),
            Some(Value::KvlistValue(list)) => list.values.iter().map(shown_kv).sum(),
            Some(Value::BoolValue(_) | Value::IntValue(_) | Value::DoubleValue(_)) | None => 24,
        }
}

/// The health tree's JSON at its largest, walked without recursion (its depth and size are
/// checked first).
fn shown_health(root: &proto::ComponentHealth) -> usize {
    let mut shown = 0;
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        shown += HEALTH_NODE_JSON + shown_cut(&node.last_error) + shown_cut(&node.status);
        shown += node.attributes.iter().map(shown_kv).sum::<usize>();
        shown += node
            .component_health_map
            .keys()
            .map(|name| shown_cut(name))
            .sum::<usize>();
        stack.extend(node.component_health_map.values());
    }
    shown
}

/// How many available components a report names and how deep they nest, walked without
/// recursion; each one's metadata is bounded like attributes.
fn check_components(available: &proto::AvailableComponents) -> Result<(), String> {
    let mut stack: Vec<(&proto::ComponentDetails, usize)> =
        available.components.values().map(|c| (c, 1)).collect();
    let mut count = stack.len();
    while let Some((component, depth)) = stack.pop() {
        if count > MAX_COMPONENTS {
            return Err(format!("more than {MAX_COMPONENTS} available components"));
        }
        if depth > MAX_COMPONENT_DEPTH {
            return Err(format!(
                "available components nested more than {MAX_COMPONENT_DEPTH} deep"
            ));
        }
        if component.metadata.len() > MAX_ATTRIBUTES {
            return Err(format!(
                "a component has more than {MAX_ATTRIBUTES} metadata attributes"
            ));
        }
        for kv in &component.metadata {
            check_value(kv, 1)?;
        }
        count += component.sub_component_map.len();
        stack.extend(component.sub_component_map.values().map(|c| (c, depth + 1)));
    }
    if count > MAX_COMPONENTS {
        return Err(format!("more than {MAX_COMPONENTS} available components"));
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

/// Cuts a text in place to [`MAX_TEXT`] and replaces its control characters (but line
/// breaks and tabs), which would only garble logs and terminals that show it.
pub fn bound(text: &mut String) {
    if text.len() > MAX_TEXT {
        *text = cut(text, MAX_TEXT);
    }
    if text.chars().any(is_garbling) {
        *text = text
            .chars()
            .map(|c| if is_garbling(c) { '\u{FFFD}' } else { c })
            .collect();
        // The replacement is longer than what it replaces.
        if text.len() > MAX_TEXT {
            *text = cut(text, MAX_TEXT);
        }
    }
}

fn is_garbling(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
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
            .any(|name| name.len() > MAX_TEXT || name.chars().any(is_garbling))
        {
            node.component_health_map = std::mem::take(&mut node.component_health_map)
                .into_iter()
                .map(|(mut name, c)| {
                    bound(&mut name);
                    (name, c)
                })
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

    #[test]
    fn control_characters_are_replaced_and_the_text_stays_within_its_cut() {
        let mut text = "red\u{1b}[31m\nline\ttab".to_string();
        bound(&mut text);
        assert_eq!(text, "red\u{FFFD}[31m\nline\ttab");
        let mut long = "\u{1}".repeat(5000);
        bound(&mut long);
        assert!(long.len() <= MAX_TEXT, "{}", long.len());
    }

    #[test]
    fn what_the_api_would_show_is_bounded_per_part() {
        let attribute = |n: usize| proto::KeyValue {
            key: format!("k{n}"),
            value: Some(proto::AnyValue {
                value: Some(proto::any_value::Value::StringValue("\"".repeat(200))),
            }),
        };
        let description = |count: usize| proto::AgentToServer {
            agent_description: Some(proto::AgentDescription {
                non_identifying_attributes: (0..count).map(attribute).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check(&description(10)), Ok(()));
        let err = check(&description(100)).unwrap_err();
        assert!(err.contains("description would take"), "{err}");

        let mut health = proto::ComponentHealth::default();
        for n in 0..100 {
            let node = proto::ComponentHealth {
                last_error: "e".repeat(5000),
                ..Default::default()
            };
            health.component_health_map.insert(n.to_string(), node);
        }
        let msg = proto::AgentToServer {
            health: Some(health),
            ..Default::default()
        };
        let err = check(&msg).unwrap_err();
        assert!(err.contains("health would take"), "{err}");
    }

    #[test]
    fn available_components_are_bounded_in_number_and_depth() {
        let many = proto::AvailableComponents {
            components: (0..MAX_COMPONENTS + 1)
                .map(|n| (format!("receiver/{n}"), proto::ComponentDetails::default()))
                .collect(),
            ..Default::default()
        };
        let msg = |available| proto::AgentToServer {
            available_components: Some(available),
            ..Default::default()
        };
        assert!(
            check(&msg(many))
                .unwrap_err()
                .contains("available components")
        );
        let mut deep = proto::ComponentDetails::default();
        for _ in 0..MAX_COMPONENT_DEPTH {
            let mut parent = proto::ComponentDetails::default();
            parent.sub_component_map.insert("c".into(), deep);
            deep = parent;
        }
        let nested = proto::AvailableComponents {
            components: [("receivers".to_string(), deep)].into_iter().collect(),
            ..Default::default()
        };
        assert!(check(&msg(nested)).unwrap_err().contains("nested"));
        let fine = proto::AvailableComponents {
            components: (0..300)
                .map(|n| (format!("receiver/{n}"), proto::ComponentDetails::default()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(check(&msg(fine)), Ok(()));
    }
}
