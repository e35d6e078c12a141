//! Agent packages (collector builds): their catalog entries and which variant fits an agent.
//! Their bytes live in the store's blob store (`crate::edge::store::BlobStore`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::core::domain::{AgentRecord, ContentHash};

/// Where the OpAMP listener serves package bytes: this path, then the lowercase hex SHA-256.
pub const DOWNLOAD_PATH: &str = "/v1/packages/";

/// Agent attributes a package's platform and architecture are matched against.
pub const PLATFORM_ATTRIBUTE: &str = "os.type";
pub const ARCH_ATTRIBUTE: &str = "host.arch";
const MAX_FIELD: usize = 128;

/// One uploaded artifact: a package name and version for one platform and architecture (empty:
/// any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub platform: String,
    pub arch: String,
    /// SHA-256 of the bytes.
    pub sha256: ContentHash,
    pub size: u64,
    pub created_at: DateTime<Utc>,
}

impl Package {
    /// The package hash agents report back: it changes with the name, version or bytes.
    pub fn hash(&self) -> ContentHash {
        let mut sha = Sha256::new();
        for part in [
            self.name.as_bytes(),
            self.version.as_bytes(),
            &self.sha256.0,
        ] {
            sha.update((part.len() as u64).to_be_bytes());
            sha.update(part);
        }
        ContentHash(sha.finalize().to_vec())
    }

    /// Whether it can run on `agent`: an empty platform or arch fits any.
    pub fn fits(&self, agent: &AgentRecord) -> bool {
        let matches = |want: &str, key: &str| {
            want.is_empty()
                || agent
                    .label(key)
                    .is_some_and(|have| have.eq_ignore_ascii_case(want))
        };
        matches(&self.platform, PLATFORM_ATTRIBUTE) && matches(&self.arch, ARCH_ATTRIBUTE)
    }

    /// How specific the variant is: exact platform and arch first.
    fn specificity(&self) -> u8 {
        u8::from(!self.platform.is_empty()) + u8::from(!self.arch.is_empty())
    }
}

/// Names, versions, platforms and architectures are path-safe and short.
pub fn validate_field(what: &str, value: &str, may_be_empty: bool) -> Result<(), String> {
    let ok = (may_be_empty || !value.is_empty())
        && value.len() <= MAX_FIELD
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} must be {}at most {MAX_FIELD} characters of letters, digits, '.', '_', '-', '+'",
            if may_be_empty { "" } else { "1 to " }
        ))
    }
}

/// The variant of `name` at `version` that fits `agent` best, if any fits.
pub fn choose<'a>(
    packages: &'a [Arc<Package>],
    name: &str,
    version: &str,
    agent: &AgentRecord,
) -> Option<&'a Arc<Package>> {
    packages
        .iter()
        .filter(|p| p.name == name && p.version == version && p.fits(agent))
        .max_by_key(|p| p.specificity())
}

#[cfg(test)]
mod tests {
    use crate::core::domain::StrMap;

    use super::*;
    use crate::core::domain::{AgentDescription, AttributeValue, InstanceUid};

    fn package(platform: &str, arch: &str) -> Arc<Package> {
        Arc::new(Package {
            name: String::new(),
            version: "v0.116.0".into(),
            platform: platform.into(),
            arch: arch.into(),
            sha256: ContentHash(vec![1; 32]),
            size: 10,
            created_at: Utc::now(),
        })
    }

    fn agent(os: &str, arch: &str) -> AgentRecord {
        let mut rec = AgentRecord::new(InstanceUid::new_v7(), Utc::now());
        rec.description = Arc::new(AgentDescription {
            identifying: StrMap::new(),
            non_identifying: StrMap::from_iter([
                (PLATFORM_ATTRIBUTE.into(), AttributeValue::String(os.into())),
                (ARCH_ATTRIBUTE.into(), AttributeValue::String(arch.into())),
            ]),
        });
        rec
    }

    #[test]
    fn the_most_specific_fitting_variant_wins() {
        let all = vec![
            package("", ""),
            package("linux", "amd64"),
            package("windows", ""),
        ];
        let linux = agent("linux", "amd64");
        assert_eq!(
            choose(&all, "", "v0.116.0", &linux).unwrap().platform,
            "linux"
        );
        let mac = agent("darwin", "arm64");
        assert_eq!(choose(&all, "", "v0.116.0", &mac).unwrap().platform, "");
        assert!(choose(&all, "", "v0.117.0", &linux).is_none());
        let only_windows = vec![package("windows", "")];
        assert!(
            choose(&only_windows, "", "v0.116.0", &linux).is_none(),
            "never the wrong platform"
        );
    }

    #[test]
    fn the_hash_follows_name_version_and_bytes() {
        let a = package("", "");
        let mut b = (*a).clone();
        b.version = "v0.117.0".into();
        assert_ne!(a.hash(), b.hash());
        let mut c = (*a).clone();
        c.platform = "linux".into();
        assert_eq!(a.hash(), c.hash(), "the same bytes, name and version");
    }
}
