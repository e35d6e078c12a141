//! Which components a collector configuration uses, as a configuration version is made from
//! it: the YAML prescan (depth, alias expansion, duplicate keys), loading, and reading the keys
//! of the five component kinds, merge keys and `::` paths included. The input is the body of a
//! single-file configuration.
#![no_main]

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use corral::core::config::{ComponentSet, ConfigVersion};
use corral::core::domain::{ConfigFile, ConfigMap};
use corral_fuzz::cap_stack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: cap_stack(), |data: &[u8]| run(data));

fn run(data: &[u8]) {
    let files = ConfigMap {
        files: BTreeMap::from([(
            String::new(),
            ConfigFile {
                body: Bytes::copy_from_slice(data),
                content_type: "text/yaml".into(),
            },
        )]),
    };
    let at = Utc.timestamp_opt(0, 0).single().expect("the epoch");
    if let Ok(version) = ConfigVersion::new(1, files, at) {
        let missing = version.components.missing_from(&ComponentSet::new());
        assert_eq!(missing.len(), version.components.len());
    }
}
