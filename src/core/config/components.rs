//! Component compatibility: which components a collector configuration uses, and which of those
//! an agent lacks.
//!
//! The reading mirrors how the collector itself loads a file (go-yaml into koanf): only the first
//! YAML document counts, merge keys (`<<`) are expanded, and a `::` in a key is a path separator.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;
use yaml_rust2::yaml::Hash;
use yaml_rust2::{ScanError, Yaml, YamlLoader};

/// The top-level keys of a collector configuration that declare components.
pub const KINDS: [&str; 5] = [
    "receivers",
    "processors",
    "exporters",
    "extensions",
    "connectors",
];

// yaml-rust2 loads recursively and copies a subtree for every alias, so a small hostile file
// could overflow the stack (deep nesting, or aliases nesting copies of deep nodes inside each
// other) or expand exponentially ("billion laughs"): all are bounded before loading. Real
// collector configurations stay far below these.
const MAX_DEPTH: usize = 100;
const MAX_ALIAS_NODES: usize = 100_000;

/// Component types by kind, e.g. `exporters` → {`kafka`, `otlp`}.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComponentSet {
    kinds: BTreeMap<String, BTreeSet<String>>,
}

impl ComponentSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, kind: &str, type_: &str) {
        self.kinds
            .entry(kind.to_owned())
            .or_default()
            .insert(type_.to_owned());
    }

    pub fn contains(&self, kind: &str, type_: &str) -> bool {
        self.kinds
            .get(kind)
            .is_some_and(|types| types.contains(type_))
    }

    /// `(kind, type)` pairs, ordered by kind then type.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.kinds
            .iter()
            .flat_map(|(kind, types)| types.iter().map(move |t| (kind.as_str(), t.as_str())))
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    pub fn len(&self) -> usize {
        self.kinds.values().map(BTreeSet::len).sum()
    }

    /// What `self` needs that `available` lacks, as "kind/type" strings in order, e.g. ["exporters/kafka"].
    pub fn missing_from(&self, available: &ComponentSet) -> Vec<String> {
        self.iter()
            .filter(|(kind, type_)| !available.contains(kind, type_))
            .map(|(kind, type_)| format!("{kind}/{type_}"))
            .collect()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for ComponentSet {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut set = Self::new();
        for (kind, type_) in iter {
            set.insert(kind, type_);
        }
        set
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComponentsError {
    #[error("{file}: not valid UTF-8 after byte {valid_up_to}")]
    NotUtf8 { file: String, valid_up_to: usize },
    #[error("{file}: invalid YAML at line {line} column {column}: {message}")]
    InvalidYaml {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {place} must be a mapping, found {found}")]
    NotAMapping {
        file: String,
        place: String,
        found: &'static str,
    },
    #[error("{file}: {place} has a key that is not a string: {key}")]
    NonStringKey {
        file: String,
        place: String,
        key: String,
    },
    #[error("{file}: {kind} has a component id without a type: `{id}`")]
    EmptyType {
        file: String,
        kind: String,
        id: String,
    },
}

/// The components a collector configuration uses. `files` is (file name, body bytes, content
/// type) of each file; YAML files are those whose content type mentions yaml or whose name ends
/// in .yaml/.yml, or an empty content type with an empty name (a single collector YAML); other
/// files are ignored. The union over all YAML files.
pub fn required_components<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8], &'a str)>,
) -> Result<ComponentSet, ComponentsError> {
    let mut set = ComponentSet::new();
    for (name, body, content_type) in files {
        if is_yaml(name, content_type) {
            let file = if name.is_empty() {
                "configuration"
            } else {
                name
            };
            File { name: file }.collect(body, &mut set)?;
        }
    }
    Ok(set)
}

fn is_yaml(name: &str, content_type: &str) -> bool {
    let name = name.to_ascii_lowercase();
    content_type.to_ascii_lowercase().contains("yaml")
        || name.ends_with(".yaml")
        || name.ends_with(".yml")
        || (name.is_empty() && content_type.is_empty())
}

/// One file being read; it names the file in every error.
struct File<'f> {
    name: &'f str,
}

impl File<'_> {
    fn collect(&self, body: &[u8], set: &mut ComponentSet) -> Result<(), ComponentsError> {
        let text = std::str::from_utf8(body).map_err(|e| ComponentsError::NotUtf8 {
            file: self.name.to_owned(),
            valid_up_to: e.valid_up_to(),
        })?;
        // yaml-rust2 does not skip a byte order mark; go-yaml does.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        prescan(text).map_err(|e| self.invalid_yaml(&e))?;
        let docs = YamlLoader::load_from_str(text).map_err(|e| self.invalid_yaml(&e))?;
        // The collector unmarshals a file with go-yaml, which reads the first document only.
        let top = match docs.first() {
            None | Some(Yaml::Null | Yaml::BadValue) => return Ok(()),
            Some(Yaml::Hash(top)) => top,
            Some(other) => return Err(self.not_a_mapping("the top level", other)),
        };
        for (key, value) in self.entries("the top level", top)? {
            // koanf unflattens `receivers::otlp: ...` into `receivers: {otlp: ...}`.
            let mut path = key.split("::");
            let kind = path.next().unwrap_or_default();
            if !KINDS.contains(&kind) {
                continue;
            }
            if let Some(id) = path.next() {
                self.insert(set, kind, id)?;
                continue;
            }
            match value {
                Yaml::Null => {}
                Yaml::Hash(components) => {
                    for (id, _) in self.entries(kind, components)? {
                        self.insert(set, kind, id)?;
                    }
                }
                other => return Err(self.not_a_mapping(kind, other)),
            }
        }
        Ok(())
    }

    /// Records the type of a `type/name` id.
    fn insert(&self, set: &mut ComponentSet, kind: &str, id: &str) -> Result<(), ComponentsError> {
        let id = id.split("::").next().unwrap_or_default();
        let type_ = id.split('/').next().unwrap_or_default().trim();
        if type_.is_empty() {
            return Err(ComponentsError::EmptyType {
                file: self.name.to_owned(),
                kind: kind.to_owned(),
                id: id.to_owned(),
            });
        }
        set.insert(kind, type_);
        Ok(())
    }

    /// The string-keyed entries of a mapping with merge keys (`<<`) expanded as go-yaml does:
    /// yaml-rust2 keeps `<<` as a plain key. Explicit keys win over merged ones, and earlier
    /// merge sources over later ones.
    fn entries<'y>(
        &self,
        place: &str,
        map: &'y Hash,
    ) -> Result<Vec<(&'y str, &'y Yaml)>, ComponentsError> {
        let mut entries = Vec::new();
        let mut sources = Vec::new();
        for (key, value) in map {
            match key {
                Yaml::String(key) if key == "<<" => sources.push(value),
                Yaml::String(key) => entries.push((key.as_str(), value)),
                other => {
                    return Err(ComponentsError::NonStringKey {
                        file: self.name.to_owned(),
                        place: place.to_owned(),
                        key: describe_key(other),
                    });
                }
            }
        }
        if sources.is_empty() {
            return Ok(entries);
        }
        let merge_place = format!("`<<` in {place}");
        let mut seen: HashSet<&str> = entries.iter().map(|(key, _)| *key).collect();
        for source in sources {
            let maps = match source {
                Yaml::Array(items) => items.iter().collect(),
                single => vec![single],
            };
            for map in maps {
                let Yaml::Hash(map) = map else {
                    return Err(self.not_a_mapping(&merge_place, map));
                };
                for (key, value) in self.entries(place, map)? {
                    if seen.insert(key) {
                        entries.push((key, value));
                    }
                }
            }
        }
        Ok(entries)
    }

    fn not_a_mapping(&self, place: &str, found: &Yaml) -> ComponentsError {
        ComponentsError::NotAMapping {
            file: self.name.to_owned(),
            place: place.to_owned(),
            found: describe(found),
        }
    }

    fn invalid_yaml(&self, e: &ScanError) -> ComponentsError {
        ComponentsError::InvalidYaml {
            file: self.name.to_owned(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_owned(),
        }
    }
}

/// Walks the event stream once, iteratively, and fails where nesting gets too deep (aliases
/// expanded), aliases expand to too many nodes or a mapping repeats a key (as go-yaml does;
/// yaml-rust2 would report it too, but at the end of the value and with a debug-formatted key).
fn prescan(text: &str) -> Result<(), ScanError> {
    let mut open: Vec<Open> = Vec::new();
    // The node count and the height (collections nested in it, itself included) of each
    // anchored node, aliases expanded: an alias puts a copy of its anchor where it stands, as
    // deep as it stands.
    let mut anchors: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut alias_nodes = 0usize;
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token()?;
        let (anchor, size, height, scalar) = match event {
            Event::StreamEnd => return Ok(()),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() >= MAX_DEPTH {
                    let message = format!("nesting deeper than {MAX_DEPTH} levels");
                    return Err(ScanError::new_string(mark, message));
                }
                let keys = matches!(event, Event::MappingStart(..)).then(HashSet::new);
                open.push(Open {
                    anchor,
                    size: 1,
                    height: 1,
                    keys,
                    at_key: true,
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match open.pop() {
                Some(node) => (node.anchor, node.size, node.height, None),
                None => continue,
            },
            Event::Scalar(value, style, anchor, _) => (anchor, 1, 0, Some((value, style))),
            Event::Alias(id) => {
                let (size, height) = anchors.get(&id).copied().unwrap_or((1, 0));
                alias_nodes = alias_nodes.saturating_add(size);
                if alias_nodes > MAX_ALIAS_NODES {
                    let message = format!("aliases expand to more than {MAX_ALIAS_NODES} nodes");
                    return Err(ScanError::new_string(mark, message));
                }
                if open.len() + height > MAX_DEPTH {
                    let message = format!("aliases nest deeper than {MAX_DEPTH} levels");
                    return Err(ScanError::new_string(mark, message));
                }
                (0, size, height, None)
            }
            _ => continue,
        };
        if anchor > 0 {
            anchors.insert(anchor, (size, height));
        }
        let Some(parent) = open.last_mut() else {
            continue;
        };
        parent.size = parent.size.saturating_add(size);
        parent.height = parent.height.max(height + 1);
        if let Some(keys) = &mut parent.keys {
            if let (true, Some((text, style))) = (parent.at_key, scalar) {
                // Typed as the loader types keys, so `1` and `'1'` stay different keys.
                let key = match style {
                    TScalarStyle::Plain => Yaml::from_str(&text),
                    _ => Yaml::String(text.clone()),
                };
                if !keys.insert(key) {
                    let message = format!("duplicated key `{text}` in mapping");
                    return Err(ScanError::new_string(mark, message));
                }
            }
            parent.at_key = !parent.at_key;
        }
    }
}

/// A collection still open during the prescan.
struct Open {
    anchor: usize,
    /// Nodes so far, aliases expanded.
    size: usize,
    /// Collections nested in it so far, itself included, aliases expanded.
    height: usize,
    /// A mapping's keys so far; `None` for a sequence.
    keys: Option<HashSet<Yaml>>,
    /// Whether the next node in a mapping is a key.
    at_key: bool,
}

fn describe(yaml: &Yaml) -> &'static str {
    match yaml {
        Yaml::Real(_) => "a float",
        Yaml::Integer(_) => "an integer",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Array(_) => "a sequence",
        Yaml::Hash(_) => "a mapping",
        Yaml::Null => "null",
        Yaml::Alias(_) | Yaml::BadValue => "an unresolved alias",
    }
}

fn describe_key(key: &Yaml) -> String {
    match key {
        Yaml::Real(v) => v.clone(),
        Yaml::Integer(v) => v.to_string(),
        Yaml::Boolean(v) => v.to_string(),
        other => describe(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components(yaml: &str) -> Result<ComponentSet, ComponentsError> {
        required_components([("collector.yaml", yaml.as_bytes(), "")])
    }

    /// The components of `yaml` as "kind/type" strings.
    fn check(yaml: &str, expected: &[&str]) {
        let set = components(yaml).unwrap();
        let got: Vec<String> = set.iter().map(|(k, t)| format!("{k}/{t}")).collect();
        assert_eq!(got, expected, "yaml:\n{yaml}");
    }

    fn err(yaml: &str) -> String {
        components(yaml).unwrap_err().to_string()
    }

    #[test]
    fn component_set_basics() {
        let mut set = ComponentSet::new();
        assert!(set.is_empty());
        set.insert("receivers", "otlp");
        set.insert("receivers", "otlp");
        set.insert("exporters", "kafka");
        set.insert("exporters", "debug");
        assert_eq!(set.len(), 3);
        assert!(!set.is_empty());
        assert!(set.contains("receivers", "otlp"));
        assert!(!set.contains("exporters", "otlp"));
        assert!(!set.contains("connectors", "otlp"));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [
                ("exporters", "debug"),
                ("exporters", "kafka"),
                ("receivers", "otlp")
            ]
        );
        let available: ComponentSet = [("receivers", "otlp"), ("exporters", "debug")]
            .into_iter()
            .collect();
        assert_eq!(set.missing_from(&available), ["exporters/kafka"]);
        assert!(available.missing_from(&set).is_empty());
        assert_eq!(
            ComponentSet::new().missing_from(&available),
            Vec::<String>::new()
        );
    }

    #[test]
    fn ids_reduce_to_their_type() {
        check(
            "receivers:\n  otlp:\n  otlp/2:\n  otlp/:\n  filelog/a/b:\n  ' hostmetrics / x':\n",
            &[
                "receivers/filelog",
                "receivers/hostmetrics",
                "receivers/otlp",
            ],
        );
        assert_eq!(
            err("receivers:\n  /x:\n"),
            "collector.yaml: receivers has a component id without a type: `/x`"
        );
        assert_eq!(
            err("exporters:\n  '':\n"),
            "collector.yaml: exporters has a component id without a type: ``"
        );
    }

    #[test]
    fn only_the_five_kinds_count() {
        check(
            "service:\n  pipelines:\n    traces:\n      receivers: [zipkin]\n\
             receivers: {otlp: {}}\nprocessors: {batch: null}\nexporters: {debug: }\n\
             extensions: {health_check: {}}\nconnectors: {spanmetrics: {}}\nother: {x: 1}\n",
            &[
                "connectors/spanmetrics",
                "exporters/debug",
                "extensions/health_check",
                "processors/batch",
                "receivers/otlp",
            ],
        );
    }

    #[test]
    fn empty_kinds_and_files_have_no_components() {
        for yaml in [
            "",
            "   \n",
            "# only a comment\n",
            "---\n",
            "~\n",
            "{}",
            "receivers:\nprocessors: {}\nexporters: ~\n",
        ] {
            assert!(components(yaml).unwrap().is_empty(), "{yaml:?}");
        }
    }

    #[test]
    fn shapes_that_are_not_mappings_are_errors() {
        assert_eq!(
            err("- receivers\n"),
            "collector.yaml: the top level must be a mapping, found a sequence"
        );
        assert_eq!(
            err("hello"),
            "collector.yaml: the top level must be a mapping, found a string"
        );
        assert_eq!(
            err("receivers: [otlp]\n"),
            "collector.yaml: receivers must be a mapping, found a sequence"
        );
        assert_eq!(
            err("exporters: 3\n"),
            "collector.yaml: exporters must be a mapping, found an integer"
        );
    }

    #[test]
    fn non_string_keys_are_errors() {
        assert_eq!(
            err("receivers:\n  1: {}\n"),
            "collector.yaml: receivers has a key that is not a string: 1"
        );
        assert_eq!(
            err("exporters:\n  true:\n"),
            "collector.yaml: exporters has a key that is not a string: true"
        );
        assert_eq!(
            err("exporters:\n  ~: x\n"),
            "collector.yaml: exporters has a key that is not a string: null"
        );
        assert_eq!(
            err("? [a]\n: x\n"),
            "collector.yaml: the top level has a key that is not a string: a sequence"
        );
        // Quoted, a number is a string, and a different key from the number.
        check("receivers:\n  '1': {}\n", &["receivers/1"]);
        assert!(components("x: {1: a, '1': b}\n").is_ok());
    }

    #[test]
    fn invalid_yaml_says_where() {
        assert_eq!(
            err("receivers:\n  otlp:\n    protocols: [grpc\nexporters: {}\n"),
            "collector.yaml: invalid YAML at line 4 column 10: illegal placement of ':' indicator"
        );
        assert_eq!(
            err("receivers:\n  otlp:\n  otlp:\n"),
            "collector.yaml: invalid YAML at line 3 column 3: duplicated key `otlp` in mapping"
        );
        assert_eq!(
            required_components([("a.yml", &b"x: \xff"[..], "")]),
            Err(ComponentsError::NotUtf8 {
                file: "a.yml".into(),
                valid_up_to: 3
            })
        );
    }

    #[test]
    fn only_the_first_document_counts() {
        check(
            "receivers: {otlp: }\n---\nexporters: {kafka: }\n",
            &["receivers/otlp"],
        );
        check("---\nreceivers: {otlp: }\n---\n", &["receivers/otlp"]);
        // A broken later document still makes the file invalid.
        assert!(err("receivers: {otlp: }\n---\n[\n").contains("invalid YAML"));
    }

    #[test]
    fn placeholders_in_values_do_not_matter() {
        check(
            "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: ${env:OTLP_ENDPOINT}\n\
             exporters:\n  otlphttp/${env:X}:\n    endpoint: \"${env:URL:-http://x}\"\n",
            &["exporters/otlphttp", "receivers/otlp"],
        );
    }

    #[test]
    fn merge_keys_and_aliases_are_followed() {
        check(
            "common: &common\n  otlp: {}\n  zipkin: {}\n\
             receivers:\n  <<: *common\n  filelog: {}\n\
             exporters:\n  <<: [{debug: }, {kafka: }]\n",
            &[
                "exporters/debug",
                "exporters/kafka",
                "receivers/filelog",
                "receivers/otlp",
                "receivers/zipkin",
            ],
        );
        // At the top level an explicit kind replaces the merged one, as in go-yaml.
        check(
            "base: &base\n  receivers: {otlp: }\n  exporters: {debug: }\n\
             <<: *base\nreceivers: {filelog: }\n",
            &["exporters/debug", "receivers/filelog"],
        );
        assert_eq!(
            err("receivers:\n  <<: 3\n"),
            "collector.yaml: `<<` in receivers must be a mapping, found an integer"
        );
    }

    #[test]
    fn double_colon_keys_are_paths() {
        check(
            "receivers::otlp/2::protocols::grpc::endpoint: x\nexporters:\n  debug::verbosity: detailed\n\
             service::telemetry::logs::level: debug\n",
            &["exporters/debug", "receivers/otlp"],
        );
    }

    #[test]
    fn hostile_yaml_is_bounded() {
        // yaml-rust2 limits flow nesting itself, but not block nesting.
        for deep in [
            format!("a: {}{}", "[".repeat(150), "]".repeat(150)),
            format!("{}x", "- ".repeat(100_000)),
        ] {
            assert!(err(&deep).contains("nesting deeper than 100 levels"));
        }
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        assert!(err(&laughs).contains("aliases expand to more than 100000 nodes"));
        // Modest reuse is fine.
        check(
            "x: &x {a: [1, 2, 3]}\nreceivers: {otlp: *x, zipkin: *x}\n",
            &["receivers/otlp", "receivers/zipkin"],
        );
    }

    /// Regression: aliases nest an anchored node as deep as the alias sits, so a chain of
    /// anchors, each under the previous one's nesting, made a 9 KB file over 4,000 levels deep
    /// once loaded; yaml-rust2 copies and drops that tree recursively, which overflowed a tokio
    /// worker's 2 MiB stack and aborted the server.
    #[test]
    fn aliases_do_not_nest_deeper_than_the_bound() {
        let nest = |levels: usize, inner: &str| {
            format!("{}{inner}{}", "[".repeat(levels), "]".repeat(levels))
        };
        let mut chain = format!("a0: &a0 {}\n", nest(97, "x"));
        for i in 1..44 {
            let link = nest(97, &format!("*a{}", i - 1));
            chain.push_str(&format!("a{i}: &a{i} {link}\n"));
        }
        chain.push_str("receivers: {otlp: *a43}\n");
        assert!(chain.len() < 10_000);
        // On a stack the size of a tokio worker's.
        let read = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || err(&chain))
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert!(
            read.contains("aliases nest deeper than 100 levels"),
            "{read}"
        );

        // The top level and `receivers` hold the alias two levels deep: 98 more are allowed.
        let anchored = format!("a: &a {}\n", nest(MAX_DEPTH - 2, "x"));
        check(
            &format!("{anchored}receivers: {{otlp: *a}}\n"),
            &["receivers/otlp"],
        );
        let past = format!("{anchored}receivers: {{otlp: [*a]}}\n");
        assert!(err(&past).contains("aliases nest deeper than 100 levels"));
    }

    #[test]
    fn which_files_are_yaml() {
        let otlp = b"receivers: {otlp: }".as_slice();
        let kafka = b"exporters: {kafka: }".as_slice();
        let json = b"{\"exporters\": {\"debug\": {}}}".as_slice();
        let broken = b"[".as_slice();
        let set = required_components([
            ("", otlp, ""),
            ("extra.YML", kafka, ""),
            ("base", kafka, "application/x-yaml"),
            ("notes.txt", broken, "text/plain"),
            ("collector", broken, ""),
            ("c.json", json, "application/json"),
        ])
        .unwrap();
        assert_eq!(
            set.missing_from(&ComponentSet::new()),
            ["exporters/kafka", "receivers/otlp"]
        );
        assert!(is_yaml("x", "Text/YAML"));
        assert!(is_yaml("x.yaml", "text/plain"));
        assert!(!is_yaml("", "text/plain"));
        assert_eq!(
            required_components([("", broken, "")])
                .unwrap_err()
                .to_string(),
            "configuration: invalid YAML at line 2 column 1: \
             while parsing a node, did not find expected node content"
        );
    }

    #[test]
    fn bom_is_skipped() {
        check("\u{feff}receivers: {otlp: }\n", &["receivers/otlp"]);
    }

    #[test]
    fn realistic_contrib_config() {
        let yaml = r#"
extensions:
  health_check:
    endpoint: 0.0.0.0:13133
  pprof:
  file_storage/queue:
    directory: /var/lib/otelcol/queue
  opamp:
    server:
      ws:
        endpoint: wss://corral.example:4320/v1/opamp

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
      http:
        endpoint: 0.0.0.0:4318
  hostmetrics:
    collection_interval: 30s
    scrapers: {cpu: {}, memory: {}, filesystem: {}}
  filelog/app:
    include: [/var/log/app/*.log]
    operators:
      - type: json_parser
  prometheus/self:
    config:
      scrape_configs:
        - job_name: otelcol
          static_configs: [{targets: ["127.0.0.1:8888"]}]

processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
  batch:
  resourcedetection/system:
    detectors: [env, system]
  k8sattributes:
  transform/redact:
    log_statements:
      - context: log
        statements:
          - replace_pattern(body, "token=\\S+", "token=***")

connectors:
  spanmetrics:
  forward/logs:

exporters:
  otlp/backend:
    endpoint: ${env:BACKEND_ENDPOINT}
    sending_queue:
      storage: file_storage/queue
  kafka:
    brokers: ["${env:KAFKA_BROKER}"]
  debug:
    verbosity: basic
  prometheusremotewrite:
    endpoint: https://prom.example/api/v1/write

service:
  extensions: [health_check, pprof, file_storage/queue, opamp]
  telemetry:
    logs:
      level: info
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, k8sattributes, batch]
      exporters: [otlp/backend, spanmetrics]
    metrics:
      receivers: [otlp, hostmetrics, prometheus/self, spanmetrics]
      processors: [memory_limiter, resourcedetection/system, batch]
      exporters: [prometheusremotewrite]
    logs/app:
      receivers: [filelog/app]
      processors: [transform/redact]
      exporters: [forward/logs]
    logs/out:
      receivers: [forward/logs]
      exporters: [kafka, debug]
"#;
        let required = components(yaml).unwrap();
        assert_eq!(required.len(), 19);
        let core: ComponentSet = [
            ("receivers", "otlp"),
            ("receivers", "hostmetrics"),
            ("receivers", "filelog"),
            ("receivers", "prometheus"),
            ("processors", "memory_limiter"),
            ("processors", "batch"),
            ("processors", "resourcedetection"),
            ("processors", "k8sattributes"),
            ("processors", "transform"),
            ("exporters", "otlp"),
            ("exporters", "debug"),
            ("exporters", "prometheusremotewrite"),
            ("extensions", "health_check"),
            ("extensions", "pprof"),
            ("extensions", "file_storage"),
            ("extensions", "opamp"),
            ("connectors", "spanmetrics"),
            ("connectors", "forward"),
        ]
        .into_iter()
        .collect();
        assert_eq!(required.missing_from(&core), ["exporters/kafka"]);
    }
}
