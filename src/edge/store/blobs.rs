//! The content-addressed blob store in the data directory that serves package bytes.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::core::domain::ContentHash;

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

    /// Removes the bytes with this hash; gone already is no error.
    pub async fn remove(&self, sha256: &ContentHash) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(sha256)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
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
    use super::*;

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
