//! A customer id: the authenticated caller's subject, 1 to 255 visible ASCII characters, so
//! it can key rows, policies and log lines as it is.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidValue;

/// Who orders and pays.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    /// Longest id.
    pub const MAX_LEN: usize = 255;

    /// `raw` if it is a customer id.
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidValue> {
        let raw = raw.into();
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(InvalidValue(format!(
                "a customer id must be 1 to {} visible ASCII characters",
                Self::MAX_LEN
            )));
        }
        Ok(Self(raw))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerId {
    type Error = InvalidValue;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<CustomerId> for String {
    fn from(id: CustomerId) -> Self {
        id.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ascii_up_to_the_limit() {
        assert!(CustomerId::parse("alice").is_ok());
        assert!(CustomerId::parse("auth0|5f7c8ec7").is_ok());
        assert!(CustomerId::parse("x".repeat(CustomerId::MAX_LEN)).is_ok());
        for bad in [
            "",
            " ",
            "ali ce",
            "tab\t",
            "é",
            &"x".repeat(CustomerId::MAX_LEN + 1),
        ] {
            assert!(CustomerId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
