//! What admin commands print: tables that fit the terminal, or the API's objects as JSON or
//! YAML (`-o`); and printing that ends quietly when the reader goes away
//! (`corral agents list | head -1`).

use std::io::{IsTerminal, Write};

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

/// How a command shows what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table that fits the terminal
    Table,
    /// A table with more columns
    Wide,
    /// The API's objects as JSON
    Json,
    /// The API's objects as YAML
    Yaml,
}

/// `-o table|wide|json|yaml`, for any command that shows something.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArg {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Prints one line to stdout (`println!` would panic when the reader has gone).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::line(&format!($($arg)*))?
    };
}
pub(crate) use out;

/// Writes `text` and a newline to stdout. A reader that went away is an error that
/// [`is_closed_pipe`] recognizes, and the command then ends quietly.
pub fn line(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.write_all(b"\n")?;
    Ok(())
}

/// Writes a line to stderr, for what goes beside the output (a warning); a closed stderr
/// is no reason to stop.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Writes bytes to stdout as they are.
pub fn write_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

/// Whether a command failed only because whoever reads its output stopped reading.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Ends the process quietly when a `println!` finds stdout closed, instead of the panic
/// message and exit code 101: a backstop for output not written through [`line`].
pub fn quiet_when_the_reader_leaves() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        // std's message: "failed printing to stdout: Broken pipe (os error 32)".
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// A table with `header`: at a terminal it fits the terminal's width (wrapping the widest
/// cells); into a pipe or a file nothing is cut or wrapped.
pub fn table<I, T>(header: I) -> Table
where
    I: IntoIterator<Item = T>,
    T: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    if std::io::stdout().is_terminal() {
        table.set_content_arrangement(ContentArrangement::Dynamic);
    } else {
        table.set_content_arrangement(ContentArrangement::Disabled);
    }
    table
}

/// Keeps these columns whole (an id cut over lines cannot be copied); the others wrap to fit.
pub fn keep_whole(table: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(column) = table.column_mut(i) {
            column.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
        }
    }
}

/// Prints `value` as JSON or YAML if that is the format asked for; `false` for a table, which
/// is the caller's to draw.
pub fn structured(format: Format, value: &Value) -> anyhow::Result<bool> {
    match format {
        Format::Json => line(&serde_json::to_string_pretty(value)?)?,
        Format::Yaml => write_bytes(to_yaml(value).as_bytes())?,
        Format::Table | Format::Wide => return Ok(false),
    }
    Ok(true)
}

/// `value` as a YAML document. Strings that a YAML reader could take for anything else (a
/// number, a boolean, null, a date, something with `:` or `#`) are double-quoted, with JSON's
/// escapes, which YAML's double-quoted style shares.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize, inline: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if !(inline && i == 0) {
            pad(out, indent);
        }
        out.push_str(&string(key));
        out.push(':');
        write_nested(out, value, indent);
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        match item {
            Value::Object(map) if !map.is_empty() => {
                out.push_str("- ");
                write_map(out, map, indent + 2, true);
            }
            other => {
                out.push('-');
                write_nested(out, other, indent);
            }
        }
    }
}

/// A value after `key:` or `-`: on the same line if it is a scalar or empty, else below it.
fn write_nested(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2, false);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// A string as a YAML scalar: plain when it can only be read back as this string.
fn string(s: &str) -> String {
    // Words YAML 1.1 or 1.2 readers take for booleans or null.
    const WORDS: [&str; 12] = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf", "nil",
    ];
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        && !WORDS.iter().any(|w| w.eq_ignore_ascii_case(s));
    if plain {
        s.to_string()
    } else {
        // Serializing a string cannot fail.
        serde_json::to_string(s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;
    use yaml_rust2::{Yaml, YamlLoader};

    /// What a YAML reader makes of the document, as JSON.
    fn read_back(text: &str) -> Value {
        fn convert(y: &Yaml) -> Value {
            match y {
                Yaml::Null => Value::Null,
                Yaml::Boolean(b) => json!(b),
                Yaml::Integer(i) => json!(i),
                Yaml::Real(r) => json!(r.parse::<f64>().unwrap()),
                Yaml::String(s) => json!(s),
                Yaml::Array(items) => Value::Array(items.iter().map(convert).collect()),
                Yaml::Hash(map) => Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.as_str().unwrap().to_string(), convert(v)))
                        .collect(),
                ),
                other => panic!("unexpected {other:?}"),
            }
        }
        let docs = YamlLoader::load_from_str(text).unwrap();
        assert_eq!(docs.len(), 1, "{text}");
        convert(&docs[0])
    }

    fn check(value: Value) {
        let text = to_yaml(&value);
        assert_eq!(read_back(&text), value, "{text}");
    }

    #[test]
    fn yaml_reads_back_as_the_json_it_was_made_from() {
        check(json!({
            "agents": [{
                "instance_uid": "0193b8a1-7c2e-7d41-9a6b-3f1e2d4c5b6a",
                "status": "error",
                "status_reason": "exporter:otlp: connection refused # really",
                "labels": {"env": "prod", "yes": "no", "k/8s.io-x": "true"},
                "identifying_attributes": {"service.version": "0.116.0", "n": 3, "f": 1.5},
                "health": null,
                "capabilities": [],
                "packages": [{"name": "", "download_percent": 42.0, "nested": [[1, "2"], []]}],
                "multi": "line one\nline two\t\"quoted\" \\ \u{1} é",
                "empty": {},
                " spaced key ": "- dash",
                "null": "~",
                "on": "NULL",
            }],
            "total": 1,
            "next_cursor": null,
        }));
    }

    #[test]
    fn scalars_and_empty_documents() {
        for value in [
            json!(null),
            json!("x"),
            json!("2026-11-22T10:20:31Z"),
            json!(12),
            json!([]),
            json!({}),
            json!([{"a": 1}, {"b": {"c": [true, false]}}]),
        ] {
            check(value);
        }
    }

    #[test]
    fn strings_that_could_read_as_something_else_are_quoted() {
        for s in [
            "true", "No", "1", "1.5", "0x1f", "", " a", "a: b", "#c", "-", "~", "*x",
        ] {
            assert!(string(s).starts_with('"'), "{s}");
        }
        for s in ["prod", "service.name", "exporters/otlp", "a-b_c"] {
            assert_eq!(string(s), s);
        }
    }

    #[test]
    fn a_closed_pipe_is_recognized_through_context() {
        use anyhow::Context;
        let e: anyhow::Result<()> =
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context("printing");
        assert!(is_closed_pipe(&e.unwrap_err()));
        assert!(!is_closed_pipe(&anyhow::anyhow!("other")));
    }
}
