use super::{ContentHash, StrMap};

/// Where an agent is with one package (OpAMP's PackageStatusEnum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackageState {
    Installed,
    InstallPending,
    Installing,
    InstallFailed,
    Downloading,
}

impl PackageState {
    pub const ALL: [PackageState; 5] = [
        PackageState::Installed,
        PackageState::InstallPending,
        PackageState::Installing,
        PackageState::InstallFailed,
        PackageState::Downloading,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PackageState::Installed => "installed",
            PackageState::InstallPending => "install_pending",
            PackageState::Installing => "installing",
            PackageState::InstallFailed => "install_failed",
            PackageState::Downloading => "downloading",
        }
    }

    /// Downloading, waiting to install, or installing.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            PackageState::Downloading | PackageState::InstallPending | PackageState::Installing
        )
    }
}

/// One package as the agent reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct PackageReport {
    pub agent_has_version: String,
    pub agent_has_hash: ContentHash,
    pub server_offered_version: String,
    pub server_offered_hash: ContentHash,
    pub state: PackageState,
    pub error: String,
    pub download_percent: Option<f64>,
}

/// Every package the agent has, by name (the top-level package has the empty name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackageReports {
    pub packages: StrMap<PackageReport>,
    pub server_provided_all_packages_hash: ContentHash,
    pub error: String,
}

/// A package the server offers an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageOffer {
    pub name: String,
    pub version: String,
    /// The server's hash of the package (what the agent reports back as offered/has).
    pub hash: ContentHash,
    /// SHA-256 of the artifact's bytes.
    pub content_hash: ContentHash,
    pub download_url: String,
}

impl PackageOffer {
    /// The hash of everything offered: here, the one package.
    pub fn all_packages_hash(&self) -> ContentHash {
        use sha2::{Digest, Sha256};
        let mut sha = Sha256::new();
        for part in [self.name.as_bytes(), &self.hash.0] {
            sha.update((part.len() as u64).to_be_bytes());
            sha.update(part);
        }
        ContentHash(sha.finalize().to_vec())
    }
}
