use std::fmt;

use super::{SharedStr, StrMap};

/// An attribute value as an agent reports it (OpAMP's AnyValue).
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    /// Shared: most values (`os.type`, a version, a cluster) are the same on many agents.
    String(SharedStr),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttributeValue>),
    Map(StrMap<AttributeValue>),
}

impl fmt::Display for AttributeValue {
    /// The form label selectors compare against: strings bare, scalars as written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttributeValue::String(s) => f.write_str(s),
            AttributeValue::Bool(b) => write!(f, "{b}"),
            AttributeValue::Int(i) => write!(f, "{i}"),
            AttributeValue::Double(d) => write!(f, "{d}"),
            AttributeValue::Bytes(b) => f.write_str(&hex::encode(b)),
            AttributeValue::Array(values) => {
                f.write_str("[")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            AttributeValue::Map(map) => {
                f.write_str("{")?;
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{k}={v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// Who the agent is (identifying) and where it runs (non-identifying).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentDescription {
    pub identifying: StrMap<AttributeValue>,
    pub non_identifying: StrMap<AttributeValue>,
}

impl AgentDescription {
    /// Looks a key up in both sets, identifying first.
    pub fn attribute(&self, key: &str) -> Option<&AttributeValue> {
        self.identifying
            .get(key)
            .or_else(|| self.non_identifying.get(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_scalars_bare_and_nests_containers() {
        let nested = AttributeValue::Array(vec![
            AttributeValue::Int(3),
            AttributeValue::Map(StrMap::from_iter([(
                "k".into(),
                AttributeValue::Bool(true),
            )])),
        ]);
        assert_eq!(nested.to_string(), "[3,{k=true}]");
        assert_eq!(AttributeValue::String("linux".into()).to_string(), "linux");
    }
}
