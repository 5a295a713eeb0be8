//! What an `Idempotency-Key` may look like.
//!
//! The IETF draft makes the header a structured-field string (`"..."`); many clients send
//! the bare value. Both are accepted. The value itself is 1 to [`MAX_KEY_LEN`] characters of
//! the URI "unreserved" set plus `:`, which covers UUIDs, ULIDs and most home-grown schemes
//! and keeps keys safe to log and to put in URLs.

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// Why a key was refused; the message names the rule, for a 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The header is absent.
    #[error("the Idempotency-Key header is required for this request")]
    Missing,
    /// The header is present but empty.
    #[error("Idempotency-Key must not be empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("Idempotency-Key must be at most {MAX_KEY_LEN} characters, got {0}")]
    TooLong(usize),
    /// The key holds a character outside the allowed set.
    #[error(
        "Idempotency-Key may only contain letters, digits and - . _ ~ : (found {0:?} at position {1})"
    )]
    ForbiddenCharacter(char, usize),
}

/// A validated key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value: an optionally quoted key.
    pub fn parse(raw: &str) -> Result<Self, KeyError> {
        let raw = raw.trim();
        let value = raw
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(raw);
        if value.is_empty() {
            return Err(KeyError::Empty);
        }
        let length = value.chars().count();
        if length > MAX_KEY_LEN {
            return Err(KeyError::TooLong(length));
        }
        if let Some((position, c)) = value
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | ':')))
        {
            return Err(KeyError::ForbiddenCharacter(c, position));
        }
        Ok(Self(value.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bare_and_quoted_keys_are_the_same_key() {
        let bare = IdempotencyKey::parse("8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap();
        let quoted = IdempotencyKey::parse("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").unwrap();
        assert_eq!(bare, quoted);
    }

    #[test]
    fn each_rule_is_named() {
        assert_eq!(IdempotencyKey::parse(""), Err(KeyError::Empty));
        assert_eq!(IdempotencyKey::parse("\"\""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::parse(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(KeyError::TooLong(MAX_KEY_LEN + 1))
        );
        assert_eq!(
            IdempotencyKey::parse("order 1"),
            Err(KeyError::ForbiddenCharacter(' ', 5))
        );
        assert!(IdempotencyKey::parse("order:1_a.b~c-d").is_ok());
    }

    proptest! {
        #[test]
        fn accepted_keys_round_trip_and_stay_printable(raw in "\\PC{0,300}") {
            if let Ok(key) = IdempotencyKey::parse(&raw) {
                prop_assert!(key.as_str().len() <= MAX_KEY_LEN);
                prop_assert!(key.as_str().bytes().all(|b| b.is_ascii_graphic()));
                prop_assert_eq!(IdempotencyKey::parse(key.as_str()), Ok(key.clone()));
            }
        }
    }
}
