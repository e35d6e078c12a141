//! Admin API keys: who may call the API, and with which role. A key is a random token shown
//! once; only its SHA-256 is kept, so the store never holds what would let someone in. The
//! caller supplies the randomness and the time: nothing here does IO.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// What every key starts with, so a leaked one is recognisable (secret scanners, logs).
pub const KEY_PREFIX: &str = "corral_";
/// Random bytes in a key: 256 bits, hex-encoded after the prefix.
pub const KEY_BYTES: usize = 32;
/// Longest key name.
pub const MAX_NAME: usize = 128;

/// What a key may do. Each role may do all that the roles before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, and changes to the fleet: rollouts, upgrades, restarts, lifecycle moves, labels,
    /// configurations, packages, bulk actions.
    Operator,
    /// Everything, keys included.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether a key with this role may do what `required` is needed for.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

/// The SHA-256 of a key: how the store and the server know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }
}

/// A new key from `random` bytes: the prefix and their hex.
pub fn new_key(random: &[u8; KEY_BYTES]) -> String {
    format!("{KEY_PREFIX}{}", hex::encode(random))
}

/// A stored key: everything but the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub hash: KeyHash,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Whether the key is expired at `now`: from its expiry on, it lets nobody in.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Why a key cannot be created as asked.
pub fn check_new(
    name: &str,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "name must be 1-{MAX_NAME} bytes, not blank, without control characters"
        ));
    }
    if expires_at.is_some_and(|at| at <= now) {
        return Err("expires_at must be in the future".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_may_do_what_the_roles_before_it_may() {
        for (i, role) in Role::ALL.into_iter().enumerate() {
            for (j, required) in Role::ALL.into_iter().enumerate() {
                assert_eq!(role.allows(required), i >= j, "{role:?} for {required:?}");
            }
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_key_is_prefixed_hex_and_known_by_its_hash() {
        let key = new_key(&[0xab; KEY_BYTES]);
        assert_eq!(key.len(), KEY_PREFIX.len() + 2 * KEY_BYTES);
        assert!(key.starts_with("corral_abab"));
        assert_eq!(KeyHash::of(&key), KeyHash::of(&key.clone()));
        assert_ne!(KeyHash::of(&key), KeyHash::of(&new_key(&[0xac; KEY_BYTES])));
    }

    #[test]
    fn expiry_and_names() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let key = ApiKey {
            id: "k".into(),
            name: "alice".into(),
            role: Role::Viewer,
            hash: KeyHash([0; 32]),
            created_at: now,
            expires_at: Some(now),
            last_used_at: None,
        };
        assert!(key.expired(now));
        assert!(!key.expired(now - chrono::Duration::seconds(1)));
        assert!(check_new("alice", None, now).is_ok());
        assert!(check_new(" ", None, now).is_err());
        assert!(check_new("a\nb", None, now).is_err());
        assert!(check_new(&"x".repeat(MAX_NAME + 1), None, now).is_err());
        assert!(check_new("alice", Some(now), now).is_err());
    }
}
