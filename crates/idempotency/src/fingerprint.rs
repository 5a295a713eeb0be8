//! The request fingerprint: what makes two requests "the same request".
//!
//! The same key with a different fingerprint is a client bug (it reused a key for another
//! operation) and is refused, never replayed. JSON bodies are canonicalised first (object
//! keys sorted, insignificant whitespace dropped) so that two serialisations of one document
//! count as one request; other bodies are compared byte for byte.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// A SHA-256 over the parts that identify a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Hashes `parts` in order; each part is length-prefixed so that `("ab", "c")` and
    /// `("a", "bc")` differ.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    /// The fingerprint of an HTTP request: method, path and query, caller, and body
    /// (canonicalised if it is JSON).
    pub fn of_http(method: &str, path_and_query: &str, caller: &str, body: &[u8]) -> Self {
        let canonical = canonical_json(body);
        let body = canonical.as_deref().unwrap_or(body);
        Self::of(&[
            method.as_bytes(),
            path_and_query.as_bytes(),
            caller.as_bytes(),
            body,
        ])
    }
}

/// `body` re-serialised with sorted keys and no whitespace, if it is JSON.
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write_canonical(&value, &mut out);
    Some(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            // Sorted here rather than relying on serde_json's map type, which a feature
            // elsewhere in the build (`preserve_order`) could change.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            if let Ok(bytes) = serde_json::to_vec(scalar) {
                out.extend_from_slice(&bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = br#"{"customer_id":"c1","items":[{"sku":"A","quantity":1}]}"#;
        let b = br#"{ "items": [ {"quantity": 1, "sku": "A"} ],
                      "customer_id": "c1" }"#;
        assert_eq!(
            Fingerprint::of_http("POST", "/v1/orders", "anon", a),
            Fingerprint::of_http("POST", "/v1/orders", "anon", b)
        );
    }

    #[test]
    fn method_path_caller_and_content_all_count() {
        let body = br#"{"a":1}"#;
        let base = Fingerprint::of_http("POST", "/v1/orders", "anon", body);
        assert_ne!(
            base,
            Fingerprint::of_http("PUT", "/v1/orders", "anon", body)
        );
        assert_ne!(
            base,
            Fingerprint::of_http("POST", "/v1/other", "anon", body)
        );
        assert_ne!(
            base,
            Fingerprint::of_http("POST", "/v1/orders", "alice", body)
        );
        assert_ne!(
            base,
            Fingerprint::of_http("POST", "/v1/orders", "anon", br#"{"a":2}"#)
        );
        // Array order is meaning, not formatting.
        assert_ne!(
            Fingerprint::of_http("POST", "/", "x", b"[1,2]"),
            Fingerprint::of_http("POST", "/", "x", b"[2,1]")
        );
    }

    #[test]
    fn parts_are_delimited() {
        assert_ne!(
            Fingerprint::of(&[b"ab", b"c"]),
            Fingerprint::of(&[b"a", b"bc"])
        );
    }

    proptest! {
        #[test]
        fn canonical_json_is_stable(keys in prop::collection::btree_map("[a-z]{1,5}", 0i64..100, 0..8)) {
            let forward = serde_json::to_vec(&keys).unwrap();
            let mut reversed = String::from("{");
            for (i, (k, v)) in keys.iter().rev().enumerate() {
                if i > 0 { reversed.push_str(" , "); }
                reversed.push_str(&format!("\"{k}\" : {v}"));
            }
            reversed.push('}');
            prop_assert_eq!(canonical_json(&forward), canonical_json(reversed.as_bytes()));
        }
    }
}
