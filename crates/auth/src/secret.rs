//! A value that must never be printed: keys, tokens, passwords.
//!
//! [`Secret`] shows `[REDACTED]` in `Debug`, `Display` and when serialized, so a secret held
//! in a config struct cannot leak through a log line, a panic message or a config dump.
//! Reading it takes an explicit, greppable [`Secret::expose`]. The value is zeroed when the
//! secret is dropped (best effort: copies made by whoever exposed it are theirs to clear).
//!
//! Deserialization reads the plain value, so config files and environment variables can set
//! it; the marker `[REDACTED]` itself is refused, so serializing a config and reading it back
//! fails loudly instead of silently replacing a password with the marker. For the same
//! reason, config structs should hold `Option<Secret<_>>` defaulting to `None` rather than a
//! `Secret` with a default value: `faultline_platform::config::load` serializes the defaults.

use std::fmt;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// What a secret shows instead of its value.
pub const REDACTED: &str = "[REDACTED]";

/// A value whose `Debug`, `Display` and serialization are redacted. See the module docs.
///
/// There is deliberately no `PartialEq`: comparing secrets with `==` would leak their
/// contents through timing. Compare what [`Secret::expose`] returns with a constant-time
/// comparison if you must.
#[derive(Clone, Default)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value. Every use is a place where the secret leaves its wrapper: keep them few.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Zeroize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de, T: Zeroize + DeserializeOwned> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a self-describing value so the marker can be recognised whatever `T` is.
        // Config formats (TOML, JSON, environment variables through figment) all are.
        let mut value = serde_json::Value::deserialize(deserializer)?;
        if value.as_str() == Some(REDACTED) {
            return Err(D::Error::custom(
                "a secret cannot be `[REDACTED]`: that is what a serialized secret shows, not a value",
            ));
        }
        let parsed = T::deserialize(&value).map_err(D::Error::custom);
        if let serde_json::Value::String(s) = &mut value {
            s.zeroize();
        }
        parsed.map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Database {
        url: String,
        password: Secret<String>,
    }

    #[test]
    fn debug_display_and_serialize_never_show_the_value() {
        let db = Database {
            url: "postgres://db".into(),
            password: Secret::new("hunter2".to_owned()),
        };
        let debug = format!("{db:?}");
        let pretty = format!("{db:#?}");
        let display = db.password.to_string();
        let json = serde_json::to_string(&db).unwrap();
        for shown in [&debug, &pretty, &display, &json] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
        assert_eq!(db.password.expose(), "hunter2");
    }

    #[test]
    fn deserializes_the_plain_value() {
        let db: Database =
            serde_json::from_str(r#"{"url": "postgres://db", "password": "hunter2"}"#).unwrap();
        assert_eq!(db.password.expose(), "hunter2");
    }

    #[test]
    fn refuses_the_redaction_marker_so_a_round_trip_cannot_replace_the_value() {
        let db = Database {
            url: "postgres://db".into(),
            password: Secret::new("hunter2".to_owned()),
        };
        let json = serde_json::to_string(&db).unwrap();
        let err = serde_json::from_str::<Database>(&json).unwrap_err();
        assert!(err.to_string().contains("cannot be `[REDACTED]`"), "{err}");
    }

    #[test]
    fn works_for_bytes_and_in_options() {
        let key: Option<Secret<Vec<u8>>> = serde_json::from_str("[1, 2, 3]").unwrap();
        let key = key.unwrap();
        assert_eq!(key.expose(), &vec![1, 2, 3]);
        assert_eq!(format!("{key:?}"), "Secret([REDACTED])");
        let none: Option<Secret<String>> = serde_json::from_str("null").unwrap();
        assert!(none.is_none());
    }
}
