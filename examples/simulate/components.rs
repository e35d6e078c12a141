//! The component sets agents report in available_components: parsed from the flags once,
//! shared by every agent that reports them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use corral::edge::protocol::proto;
use sha2::Digest as _;

use crate::options::Args;

/// A collector-contrib-like set: everything the built-in collector YAML uses, and more.
const DEFAULT_COMPONENTS: &str = "\
    receivers/otlp,receivers/hostmetrics,receivers/filelog,receivers/prometheus,\
    receivers/jaeger,receivers/zipkin,receivers/kafka,receivers/k8s_cluster,\
    processors/batch,processors/memory_limiter,processors/resourcedetection,\
    processors/attributes,processors/resource,processors/filter,processors/transform,\
    processors/k8sattributes,processors/tail_sampling,\
    exporters/otlp,exporters/otlphttp,exporters/debug,exporters/prometheus,exporters/kafka,\
    exporters/file,exporters/loadbalancing,\
    extensions/health_check,extensions/pprof,extensions/zpages,extensions/opamp,\
    extensions/file_storage,extensions/basicauth,\
    connectors/forward,connectors/spanmetrics,connectors/count,connectors/routing";

const COMPONENT_KINDS: [&str; 5] = [
    "receivers",
    "processors",
    "exporters",
    "extensions",
    "connectors",
];

/// One component set as the agents report it: the hash alone, or the full map on request.
pub struct Components {
    /// SHA-256 over the sorted "kind/type" lines.
    pub hash: Bytes,
    pub full: proto::AvailableComponents,
    pub count: usize,
}

/// What an agent reports (None: no components).
pub type Reported = Option<Arc<Components>>;

/// The sets of --components and, with the fraction of the agents that report it, of
/// --alt-components.
pub fn from_args(args: &Args) -> Result<(Reported, Option<(f64, Reported)>), String> {
    let components = parse_components(
        args.components.as_deref().unwrap_or(DEFAULT_COMPONENTS),
        "--components",
    )?;
    let alt_components = match (&args.alt_components, args.components_ratio) {
        (Some(list), Some(ratio)) => {
            if !(0.0..=1.0).contains(&ratio) {
                return Err("--components-ratio must be between 0 and 1".into());
            }
            Some((ratio, parse_components(list, "--alt-components")?))
        }
        _ => None,
    };
    Ok((components, alt_components))
}

/// Parses "kind/type,..." ("none": no components). Kinds may be singular ("receiver/otlp").
fn parse_components(list: &str, flag: &str) -> Result<Reported, String> {
    let list = list.trim();
    if list.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let mut set = BTreeSet::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (kind, type_) = item
            .split_once('/')
            .ok_or_else(|| format!("{flag}: {item:?} must be kind/type, e.g. receivers/otlp"))?;
        let kind = kind.trim();
        let type_ = type_.trim();
        let kind = COMPONENT_KINDS
            .iter()
            .find(|k| **k == kind || k.strip_suffix('s') == Some(kind))
            .ok_or_else(|| {
                format!(
                    "{flag}: unknown kind {kind:?} in {item:?} (one of {})",
                    COMPONENT_KINDS.join(", ")
                )
            })?;
        if type_.is_empty() || type_.contains('/') {
            return Err(format!(
                "{flag}: {item:?} needs one component type after the kind"
            ));
        }
        set.insert(((*kind).to_string(), type_.to_string()));
    }
    if set.is_empty() {
        return Err(format!(
            "{flag}: no components given (use \"none\" for none)"
        ));
    }
    let mut hasher = sha2::Sha256::new();
    let mut components: BTreeMap<String, proto::ComponentDetails> = BTreeMap::new();
    for (kind, type_) in &set {
        hasher.update(format!("{kind}/{type_}\n").as_bytes());
        components
            .entry(kind.clone())
            .or_default()
            .sub_component_map
            .insert(type_.clone(), proto::ComponentDetails::default());
    }
    let hash = Bytes::copy_from_slice(hasher.finalize().as_slice());
    Ok(Some(Arc::new(Components {
        full: proto::AvailableComponents {
            components,
            hash: hash.clone(),
        },
        hash,
        count: set.len(),
    })))
}

/// Whether agent `index` is one of the fraction `ratio` that reports the alternative set:
/// spread evenly, so any prefix of the fleet holds about that fraction.
pub fn is_alt(index: usize, ratio: f64) -> bool {
    ((index + 1) as f64 * ratio).floor() > (index as f64 * ratio).floor()
}

pub fn describe_components(c: Option<&Arc<Components>>) -> String {
    c.map_or_else(
        || "none".to_string(),
        |c| format!("{} components, hash {}", c.count, hex::encode(&c.hash[..6])),
    )
}
