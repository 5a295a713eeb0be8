//! A SKU: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, so it is safe in a URL path, a Kafka
//! key and a log line without escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidValue;

/// A product's stock-keeping unit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    /// Longest SKU.
    pub const MAX_LEN: usize = 64;

    /// `raw` if it is a SKU.
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidValue> {
        let raw = raw.into();
        if raw.is_empty() {
            return Err(InvalidValue("sku must not be empty".into()));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(InvalidValue(format!(
                "sku must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(InvalidValue(
                "sku may only contain letters, digits, '.', '_' and '-'".into(),
            ));
        }
        Ok(Self(raw))
    }

    /// The SKU as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = InvalidValue;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<Sku> for String {
    fn from(sku: Sku) -> Self {
        sku.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_rule_at_its_edges() {
        assert!(Sku::parse("LAMP-01").is_ok());
        assert!(Sku::parse("a.b_c-9").is_ok());
        assert!(Sku::parse("x".repeat(Sku::MAX_LEN)).is_ok());
        for bad in [
            "",
            "has space",
            "ünïcode",
            "a/b",
            &"x".repeat(Sku::MAX_LEN + 1),
        ] {
            assert!(Sku::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_parses_with_the_same_rule() {
        assert!(serde_json::from_str::<Sku>("\"LAMP-01\"").is_ok());
        assert!(serde_json::from_str::<Sku>("\"LAMP 01\"").is_err());
    }

    proptest! {
        #[test]
        fn a_sku_is_exactly_what_the_alphabet_allows(raw in "\\PC{0,70}") {
            let allowed = !raw.is_empty()
                && raw.len() <= Sku::MAX_LEN
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
            prop_assert_eq!(Sku::parse(raw.clone()).is_ok(), allowed);
        }
    }
}
