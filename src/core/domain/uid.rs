use std::fmt;

/// An agent's 16-byte instance uid, shown as a canonical UUID string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceUid([u8; 16]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("instance uid must be 16 bytes, got {0}")]
pub struct InvalidInstanceUid(pub usize);

impl InstanceUid {
    /// A fresh time-ordered uid, as the spec recommends.
    pub fn new_v7() -> Self {
        Self(*uuid::Uuid::now_v7().as_bytes())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidInstanceUid> {
        <[u8; 16]>::try_from(bytes)
            .map(Self)
            .map_err(|_| InvalidInstanceUid(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Accepts the canonical hyphenated form and the simple (32 hex digits) form.
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s).ok().map(|u| Self(*u.as_bytes()))
    }
}

impl fmt::Display for InstanceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl fmt::Debug for InstanceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceUid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_canonical_string() {
        let uid = InstanceUid::new_v7();
        assert_eq!(InstanceUid::parse(&uid.to_string()), Some(uid));
        assert_eq!(uid.to_string().len(), 36);
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert_eq!(
            InstanceUid::from_bytes(&[1; 15]),
            Err(InvalidInstanceUid(15))
        );
        assert_eq!(InstanceUid::from_bytes(&[]), Err(InvalidInstanceUid(0)));
        assert!(InstanceUid::from_bytes(&[7; 16]).is_ok());
        assert_eq!(InstanceUid::parse("not-a-uuid"), None);
    }
}
