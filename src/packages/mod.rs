//! Agent packages (collector builds): their catalog entries, which variant fits an agent, and
//! the content-addressed blob store in the data directory that serves their bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::domain::{AgentRecord, ContentHash};

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

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("upload exceeds {0} bytes")]
    TooLarge(u64),
    #[error("upload failed: {0}")]
    Body(String),
    #[error("cannot store package: {0}")]
    Io(#[from] std::io::Error),
}

/// Artifacts on disk, one file per SHA-256, written once.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("packages");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn path(&self, sha256: &ContentHash) -> PathBuf {
        self.dir.join(sha256.to_hex())
    }

    /// Streams an upload to disk while hashing it; identical bytes are kept once.
    pub async fn put<S, E>(&self, mut body: S, max: u64) -> Result<(ContentHash, u64), BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let temp = self.dir.join(format!(".upload-{}", uuid::Uuid::now_v7()));
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let mut sha = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > max {
                    return Err(BlobError::TooLarge(max));
                }
                sha.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            Ok((ContentHash(sha.finalize().to_vec()), size))
        }
        .await;
        match result {
            Ok((hash, size)) => {
                tokio::fs::rename(&temp, self.path(&hash)).await?;
                Ok((hash, size))
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::StrMap;

    use super::*;
    use crate::domain::{AgentDescription, AttributeValue, InstanceUid};

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

    #[tokio::test]
    async fn blobs_are_content_addressed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let chunks = || {
            futures_util::stream::iter(vec![
                Ok::<_, std::io::Error>(Bytes::from_static(b"hello ")),
                Ok(Bytes::from_static(b"world")),
            ])
        };
        let (hash, size) = store.put(chunks(), 100).await.unwrap();
        assert_eq!(size, 11);
        assert_eq!(hash.0, Sha256::digest(b"hello world").to_vec());
        assert_eq!(std::fs::read(store.path(&hash)).unwrap(), b"hello world");
        let (again, _) = store.put(chunks(), 100).await.unwrap();
        assert_eq!(again, hash);
        assert!(matches!(
            store.put(chunks(), 5).await,
            Err(BlobError::TooLarge(5))
        ));
        let leftovers = std::fs::read_dir(dir.path().join("packages"))
            .unwrap()
            .count();
        assert_eq!(
            leftovers, 1,
            "one file for identical uploads, no temp files left"
        );
    }
}
