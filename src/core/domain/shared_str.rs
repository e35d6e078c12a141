use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use internment::ArcIntern;

/// A string that many agents report alike (attribute keys, most attribute values, package
/// names), kept once for the whole process: every holder shares one reference-counted copy,
/// freed when the last one lets go. Two bytes-equal strings are the same copy, so equality is
/// a pointer comparison; order and hashing follow the text, as a `String`'s do.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedStr(ArcIntern<str>);

impl SharedStr {
    pub fn new(text: &str) -> Self {
        Self(ArcIntern::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for SharedStr {
    fn default() -> Self {
        Self::new("")
    }
}

impl Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Hash for SharedStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&str> for SharedStr {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for SharedStr {
    fn from(text: String) -> Self {
        Self::new(&text)
    }
}

impl From<&String> for SharedStr {
    fn from(text: &String) -> Self {
        Self::new(text)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_text_is_one_copy_and_compares_as_text() {
        let a = SharedStr::new("service.name");
        let b = SharedStr::from(String::from("service.name"));
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "one copy");
        assert_eq!(a, b);
        assert!(SharedStr::new("a") < SharedStr::new("b"));
        assert_eq!(a, "service.name");
        let map = litemap::LiteMap::<SharedStr, u8>::from_iter([(a, 1)]);
        assert_eq!(map.get("service.name"), Some(&1), "looked up by &str");
    }
}
