use std::collections::BTreeMap;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::ContentHash;

/// One file of an agent configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    pub body: Bytes,
    pub content_type: String,
}

/// A set of named configuration files (OpAMP's AgentConfigMap). A single collector YAML
/// commonly sits under the empty name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigMap {
    pub files: BTreeMap<String, ConfigFile>,
}

impl ConfigMap {
    /// SHA-256 over the files in name order, each field length-prefixed so that no two
    /// different maps hash alike. The same content always has the same hash.
    pub fn hash(&self) -> ContentHash {
        let mut sha = Sha256::new();
        for (name, file) in &self.files {
            for part in [name.as_bytes(), file.content_type.as_bytes(), &file.body] {
                sha.update((part.len() as u64).to_be_bytes());
                sha.update(part);
            }
        }
        ContentHash(sha.finalize().to_vec())
    }

    pub fn total_bytes(&self) -> usize {
        self.files
            .iter()
            .map(|(name, f)| name.len() + f.content_type.len() + f.body.len())
            .sum()
    }
}

/// What is kept of an agent's effective config: all of it, or, past the server's limit, its
/// size alone (it is stored by its hash either way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeptConfig {
    Whole(ConfigMap),
    TooLarge { bytes: u64 },
}

impl KeptConfig {
    /// `config` if it is at most `max` bytes, else its size.
    pub fn within(config: &ConfigMap, max: usize) -> Self {
        match config.total_bytes() {
            bytes if bytes > max => KeptConfig::TooLarge {
                bytes: bytes as u64,
            },
            _ => KeptConfig::Whole(config.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(files: &[(&str, &str, &str)]) -> ConfigMap {
        ConfigMap {
            files: files
                .iter()
                .map(|(name, ct, body)| {
                    (
                        name.to_string(),
                        ConfigFile {
                            body: Bytes::copy_from_slice(body.as_bytes()),
                            content_type: ct.to_string(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn same_content_same_hash_whatever_the_insertion_order() {
        let a = map(&[
            ("a.yaml", "text/yaml", "x: 1"),
            ("b.yaml", "text/yaml", "y: 2"),
        ]);
        let b = map(&[
            ("b.yaml", "text/yaml", "y: 2"),
            ("a.yaml", "text/yaml", "x: 1"),
        ]);
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().0.len(), 32);
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        let a = map(&[("ab", "", "c")]);
        let b = map(&[("a", "", "bc")]);
        assert_ne!(a.hash(), b.hash());
        let c = map(&[("a", "text/yaml", "x")]);
        let d = map(&[("a", "text/yam", "lx")]);
        assert_ne!(c.hash(), d.hash());
    }
}
