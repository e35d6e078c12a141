//! Label selectors in the Kubernetes syntax: `env=prod,tier!=edge,region in (eu,us),!canary`.
//!
//! A selector is a list of requirements that must all hold. As in Kubernetes, `!=` and `notin`
//! also hold when the key is absent, while `=` and `in` need it present.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

const MAX_KEY_LEN: usize = 128;
const MAX_VALUE_LEN: usize = 256;

/// A parsed label selector; the default (empty) selector matches every agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

// Sets keep `in` lists sorted and deduplicated, so equal selectors compare and print equal.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    NotExists,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("expected {expected} at column {column}, found {found}")]
    Unexpected {
        column: usize,
        expected: &'static str,
        found: String,
    },
    #[error("key at column {column} is {len} characters long, at most {max} allowed", max = MAX_KEY_LEN)]
    KeyTooLong { column: usize, len: usize },
    #[error("value at column {column} is {len} characters long, at most {max} allowed", max = MAX_VALUE_LEN)]
    ValueTooLong { column: usize, len: usize },
    #[error("empty value list at column {column}, expected at least one value")]
    EmptyList { column: usize },
    #[error("unclosed `(` at column {column}, expected `)`")]
    UnclosedParen { column: usize },
    #[error("a selector has at most {max} terms", max = MAX_TERMS)]
    TooManyTerms,
}

/// Every agent is matched against every term of the selectors in force, so they are few.
pub const MAX_TERMS: usize = 64;

impl Selector {
    /// An empty or all-whitespace selector parses to the empty selector, which matches everything.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let mut parser = Parser {
            chars: s.chars().collect(),
            pos: 0,
        };
        parser.skip_ws();
        let mut requirements = Vec::new();
        if parser.peek().is_none() {
            return Ok(Selector { requirements });
        }
        loop {
            if requirements.len() == MAX_TERMS {
                return Err(SelectorError::TooManyTerms);
            }
            requirements.push(parser.requirement()?);
            match parser.peek() {
                None => return Ok(Selector { requirements }),
                Some(',') => parser.pos += 1,
                Some(_) => return Err(parser.unexpected("`,` or end of selector")),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// `label(key)` gives the agent's value for a key, if any.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<Cow<'a, str>>) -> bool {
        self.requirements.iter().all(|r| {
            let value = label(&r.key);
            let value = value.as_deref();
            match &r.op {
                Op::Eq(v) => value == Some(v.as_str()),
                Op::NotEq(v) => value != Some(v.as_str()),
                Op::In(vs) => value.is_some_and(|x| vs.contains(x)),
                Op::NotIn(vs) => !value.is_some_and(|x| vs.contains(x)),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        })
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, Requirement { key, op }) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match op {
                Op::Eq(v) => write!(f, "{key}={v}")?,
                Op::NotEq(v) => write!(f, "{key}!={v}")?,
                Op::In(vs) => write!(f, "{key} in ({})", join(vs))?,
                Op::NotIn(vs) => write!(f, "{key} notin ({})", join(vs))?,
                Op::Exists => f.write_str(key)?,
                Op::NotExists => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

fn join(values: &BTreeSet<String>) -> String {
    values
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// A cursor over the selector's characters; positions are char indices, so columns count
/// characters even when the input has non-ASCII text in it.
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn column(&self) -> usize {
        self.pos + 1
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.pos += 1;
        }
        found
    }

    /// Consumes a run of key/value characters, possibly empty.
    fn word(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_label_char) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// An error at the current position naming the whole word there, not just its first char.
    fn unexpected(&self, expected: &'static str) -> SelectorError {
        let rest = &self.chars[self.pos..];
        let word_len = rest.iter().take_while(|c| is_label_char(**c)).count();
        let found = match rest.first() {
            None => "end of selector".to_owned(),
            Some(_) if word_len > 0 => format!("`{}`", rest[..word_len].iter().collect::<String>()),
            Some(c) => format!("`{c}`"),
        };
        SelectorError::Unexpected {
            column: self.column(),
            expected,
            found,
        }
    }

    /// One requirement, with the whitespace around it.
    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_ws();
        if self.eat('!') {
            self.skip_ws();
            let key = self.key()?;
            self.skip_ws();
            return Ok(Requirement {
                key,
                op: Op::NotExists,
            });
        }
        let key = self.key()?;
        self.skip_ws();
        let op = match self.peek() {
            None | Some(',') => Op::Exists,
            Some('=') => {
                self.pos += 1;
                self.eat('=');
                Op::Eq(self.value()?)
            }
            Some('!') if self.chars.get(self.pos + 1) == Some(&'=') => {
                self.pos += 2;
                Op::NotEq(self.value()?)
            }
            _ => {
                let start = self.pos;
                match self.word().as_str() {
                    "in" => Op::In(self.list()?),
                    "notin" => Op::NotIn(self.list()?),
                    _ => {
                        self.pos = start;
                        return Err(self
                            .unexpected("`=`, `==`, `!=`, `in`, `notin`, `,` or end of selector"));
                    }
                }
            }
        };
        self.skip_ws();
        Ok(Requirement { key, op })
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        let column = self.column();
        let key = self.word();
        match key.len() {
            0 => Err(self.unexpected("a key")),
            len if len > MAX_KEY_LEN => Err(SelectorError::KeyTooLong { column, len }),
            _ => Ok(key),
        }
    }

    /// The value after `=` or `!=`, which may be empty (`env=` matches an empty label).
    fn value(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let column = self.column();
        let value = self.word();
        match value.len() {
            len if len > MAX_VALUE_LEN => Err(SelectorError::ValueTooLong { column, len }),
            _ => Ok(value),
        }
    }

    /// `(a, b, ...)` after `in` or `notin`; list values must not be empty.
    fn list(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.skip_ws();
        let open = self.column();
        if !self.eat('(') {
            return Err(self.unexpected("`(` starting a value list"));
        }
        self.skip_ws();
        if self.peek() == Some(')') {
            return Err(SelectorError::EmptyList { column: open });
        }
        let mut values = BTreeSet::new();
        loop {
            let value = self.value()?;
            if value.is_empty() {
                return Err(match self.peek() {
                    None => SelectorError::UnclosedParen { column: open },
                    Some(_) => self.unexpected("a value"),
                });
            }
            values.insert(value);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    return Ok(values);
                }
                None => return Err(SelectorError::UnclosedParen { column: open }),
                Some(_) => return Err(self.unexpected("`,` or `)`")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a 10,000-term selector kept the controller busy matching it against every
    /// agent.
    #[test]
    fn a_selector_has_at_most_64_terms() {
        let terms = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            Selector::parse(&terms(MAX_TERMS))
                .unwrap()
                .requirements
                .len(),
            MAX_TERMS
        );
        assert_eq!(
            Selector::parse(&terms(10_000)),
            Err(SelectorError::TooManyTerms)
        );
    }
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn matches(selector: &str, pairs: &[(&str, &str)]) -> bool {
        let labels = labels(pairs);
        Selector::parse(selector)
            .unwrap()
            .matches(|k| labels.get(k).map(|v| Cow::Owned(v.clone())))
    }

    /// Parses `input` and checks its canonical form.
    fn check(input: &str, canonical: &str) {
        let selector = Selector::parse(input).unwrap();
        assert_eq!(selector.to_string(), canonical, "input: {input:?}");
        assert_eq!(Selector::parse(canonical).unwrap(), selector);
    }

    fn err(input: &str) -> String {
        Selector::parse(input).unwrap_err().to_string()
    }

    #[test]
    fn every_form_parses_to_its_canonical_form() {
        check("env=prod", "env=prod");
        check("env==prod", "env=prod");
        check("tier!=edge", "tier!=edge");
        check("region in (us,eu,us)", "region in (eu,us)");
        check("region notin (eu, us)", "region notin (eu,us)");
        check("canary", "canary");
        check("!canary", "!canary");
        check("env=", "env=");
        check("env!=", "env!=");
        check("in", "in");
        check("in in (in)", "in in (in)");
        check(
            "service.name=my-svc_1,k8s.io/zone in(a)",
            "service.name=my-svc_1,k8s.io/zone in (a)",
        );
        check(
            "env=prod,tier!=edge,region in (eu,us),!canary",
            "env=prod,tier!=edge,region in (eu,us),!canary",
        );
    }

    #[test]
    fn whitespace_around_tokens_is_allowed() {
        check(
            " \tenv = prod ,tier != edge, region  in  ( eu , us ) , ! canary , x ",
            "env=prod,tier!=edge,region in (eu,us),!canary,x",
        );
        check("a==  b", "a=b");
        check("a= ,b", "a=,b");
    }

    #[test]
    fn empty_selector_matches_everything() {
        for s in ["", "  ", "\t\n"] {
            let selector = Selector::parse(s).unwrap();
            assert!(selector.is_empty());
            assert_eq!(selector, Selector::default());
            assert_eq!(selector.to_string(), "");
            assert!(selector.matches(|_| None));
        }
        assert!(!Selector::parse("a").unwrap().is_empty());
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let prod = [("env", "prod"), ("region", "eu"), ("canary", "")];
        assert!(matches("env=prod", &prod));
        assert!(!matches("env=dev", &prod));
        assert!(!matches("missing=prod", &prod));
        assert!(matches("env!=dev", &prod));
        assert!(!matches("env!=prod", &prod));
        assert!(matches("region in (eu,us)", &prod));
        assert!(!matches("region in (us)", &prod));
        assert!(!matches("missing in (eu)", &prod));
        assert!(matches("region notin (us)", &prod));
        assert!(!matches("region notin (eu,us)", &prod));
        assert!(matches("canary", &prod));
        assert!(!matches("!canary", &prod));
        assert!(matches("canary=", &prod));
        assert!(matches("env=prod,region in (eu),canary", &prod));
        assert!(!matches("env=prod,region in (eu),!canary", &prod));
        assert!(matches("", &prod));
    }

    #[test]
    fn absent_keys_match_only_negative_requirements() {
        for s in ["tier!=edge", "tier notin (edge)", "!tier", "tier!="] {
            assert!(matches(s, &[]), "{s}");
        }
        for s in ["tier=edge", "tier in (edge)", "tier", "tier="] {
            assert!(!matches(s, &[]), "{s}");
        }
    }

    #[test]
    fn matches_takes_borrowed_labels() {
        let labels = labels(&[("env", "prod")]);
        let selector = Selector::parse("env=prod").unwrap();
        assert!(selector.matches(|k| labels.get(k).map(|v| Cow::Borrowed(v.as_str()))));
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        let cases = [
            (
                "region in (eu,us",
                "unclosed `(` at column 11, expected `)`",
            ),
            ("region in (eu,", "unclosed `(` at column 11, expected `)`"),
            ("region in (", "unclosed `(` at column 11, expected `)`"),
            (
                "region in ()",
                "empty value list at column 11, expected at least one value",
            ),
            (
                "region in ( ,eu)",
                "expected a value at column 13, found `,`",
            ),
            (
                "region in (eu,,us)",
                "expected a value at column 15, found `,`",
            ),
            (
                "region in (eu us)",
                "expected `,` or `)` at column 15, found `us`",
            ),
            (
                "region in",
                "expected `(` starting a value list at column 10, found end of selector",
            ),
            (
                "region notin eu",
                "expected `(` starting a value list at column 14, found `eu`",
            ),
            (
                "en$v=prod",
                "expected `=`, `==`, `!=`, `in`, `notin`, `,` or end of selector at column 3, found `$`",
            ),
            (
                "env is prod",
                "expected `=`, `==`, `!=`, `in`, `notin`, `,` or end of selector at column 5, found `is`",
            ),
            (
                "env!prod",
                "expected `=`, `==`, `!=`, `in`, `notin`, `,` or end of selector at column 4, found `!`",
            ),
            ("$env=prod", "expected a key at column 1, found `$`"),
            ("=prod", "expected a key at column 1, found `=`"),
            (
                "env=prod,",
                "expected a key at column 10, found end of selector",
            ),
            ("env=prod,,a", "expected a key at column 10, found `,`"),
            (",env=prod", "expected a key at column 1, found `,`"),
            ("!", "expected a key at column 2, found end of selector"),
            ("!!a", "expected a key at column 2, found `!`"),
            (
                "!a=b",
                "expected `,` or end of selector at column 3, found `=`",
            ),
            (
                "env=prod staging",
                "expected `,` or end of selector at column 10, found `staging`",
            ),
            (
                "env===prod",
                "expected `,` or end of selector at column 6, found `=`",
            ),
            (
                "env=pr*d",
                "expected `,` or end of selector at column 7, found `*`",
            ),
            ("é=1,x", "expected a key at column 1, found `é`"),
            (
                "a=é",
                "expected `,` or end of selector at column 3, found `é`",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(err(input), expected, "input: {input:?}");
        }
    }

    #[test]
    fn lengths_are_limited() {
        let key = "k".repeat(MAX_KEY_LEN);
        let value = "v".repeat(MAX_VALUE_LEN);
        check(&format!("{key}={value}"), &format!("{key}={value}"));
        assert_eq!(
            Selector::parse(&format!("a,{key}k")),
            Err(SelectorError::KeyTooLong {
                column: 3,
                len: MAX_KEY_LEN + 1
            })
        );
        assert_eq!(
            err(&format!("a in (b, {value}v)")),
            "value at column 10 is 257 characters long, at most 256 allowed"
        );
    }

    #[test]
    fn from_str_parses() {
        let selector: Selector = "env=prod".parse().unwrap();
        assert_eq!(selector, Selector::parse("env==prod").unwrap());
        assert!("env=(".parse::<Selector>().is_err());
    }

    fn label_text(max: usize, allow_empty: bool) -> impl Strategy<Value = String> {
        let min = usize::from(!allow_empty);
        proptest::collection::vec(
            prop_oneof![
                prop::char::range('a', 'z'),
                prop::char::range('A', 'Z'),
                prop::char::range('0', '9'),
                prop::sample::select(vec!['.', '_', '-', '/']),
            ],
            min..=max,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let values = || proptest::collection::btree_set(label_text(8, false), 1..4);
        let op = prop_oneof![
            label_text(8, true).prop_map(Op::Eq),
            label_text(8, true).prop_map(Op::NotEq),
            values().prop_map(Op::In),
            values().prop_map(Op::NotIn),
            Just(Op::Exists),
            Just(Op::NotExists),
        ];
        (label_text(12, false), op).prop_map(|(key, op)| Requirement { key, op })
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", " ", "  ", "\t"])
    }

    proptest! {
        #[test]
        fn display_round_trips(requirements in proptest::collection::vec(requirement(), 0..6)) {
            let selector = Selector { requirements };
            prop_assert_eq!(Selector::parse(&selector.to_string()).unwrap(), selector);
        }

        /// A selector written with arbitrary spacing, `==` and unsorted, repeated list values
        /// parses to the one it was generated from.
        #[test]
        fn spaced_forms_parse(
            requirements in proptest::collection::vec((requirement(), ws(), ws(), any::<bool>()), 1..6),
        ) {
            let text = requirements.iter().map(|(r, a, b, double)| {
                let key = &r.key;
                match &r.op {
                    Op::Eq(v) => format!("{a}{key}{b}{}{a}{v}{b}", if *double { "==" } else { "=" }),
                    Op::NotEq(v) => format!("{a}{key}{b}!={a}{v}{b}"),
                    Op::In(vs) | Op::NotIn(vs) => {
                        let op = if matches!(r.op, Op::In(_)) { "in" } else { "notin" };
                        let mut list: Vec<&str> = vs.iter().rev().map(String::as_str).collect();
                        if *double { list.push(list[0]); }
                        format!("{a}{key} {b}{op}{a}({b}{}{a}){b}", list.join(&format!("{a},{b}")))
                    }
                    Op::Exists => format!("{a}{key}{b}"),
                    Op::NotExists => format!("{a}!{b}{key}{a}"),
                }
            }).collect::<Vec<_>>().join(",");
            let expected = Selector { requirements: requirements.into_iter().map(|(r, ..)| r).collect() };
            prop_assert_eq!(Selector::parse(&text).unwrap(), expected);
        }

        /// Whatever the input, parsing neither panics nor yields a selector that prints differently
        /// from its reparse.
        #[test]
        fn arbitrary_input_is_handled(input in "[a-z=!,() \t.é$-]{0,40}") {
            if let Ok(selector) = Selector::parse(&input) {
                prop_assert_eq!(Selector::parse(&selector.to_string()).unwrap(), selector);
            }
        }
    }
}
