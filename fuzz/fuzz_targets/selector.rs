//! The label selector parser, then matching. The first line is the selector; each further
//! line is a `key=value` label of the agent it is matched against. A selector that parses
//! prints in its canonical form, which must parse back to the same selector.
#![no_main]

use std::borrow::Cow;
use std::collections::HashMap;

use corral::core::config::Selector;
use corral_fuzz::cap_stack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: cap_stack(), |data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let Ok(selector) = Selector::parse(lines.next().unwrap_or_default()) else {
        return;
    };
    let canonical = selector.to_string();
    let again = Selector::parse(&canonical)
        .unwrap_or_else(|e| panic!("canonical form {canonical:?} does not parse: {e}"));
    assert_eq!(
        again, selector,
        "canonical form {canonical:?} parses differently"
    );
    assert_eq!(again.to_string(), canonical);

    let labels: HashMap<&str, &str> = lines.filter_map(|line| line.split_once('=')).collect();
    let label = |key: &str| labels.get(key).map(|v| Cow::Owned(v.to_string()));
    assert_eq!(selector.matches(label), again.matches(label));
}
