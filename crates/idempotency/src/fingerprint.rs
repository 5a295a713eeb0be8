//! The request fingerprint: what makes two requests "the same request".
//!
//! The same key with a different fingerprint is a client bug (it reused a key for another
//! operation) and is refused, never replayed. JSON bodies are canonicalised first (object
//! keys sorted, insignificant whitespace dropped, numbers kept exactly as written) so that two
//! serialisations of one document count as one request; other bodies are compared byte for
//! byte.

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
///
/// Numbers are kept exactly as written. Going through `serde_json::Value` would round every
/// number past the 64-bit integers, and every decimal with more digits than an `f64` holds,
/// to the nearest `f64`: `18446744073709551617` and `...616` would fingerprint alike, and one
/// request would be answered with the other's stored response. Comparing the text errs the
/// safe way: `1.5` and `1.50` count as two requests (a spurious mismatch a client fixes by
/// resending its bytes), never two numbers as one.
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    // serde_json decides what is JSON (one document, nothing after it, nesting within its
    // limit); the walk below only re-emits what it accepted.
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    let mut reader = Reader { bytes: body, at: 0 };
    reader.value(&mut out)?;
    Some(out)
}

/// A cursor over a document serde_json has already accepted.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    /// The next byte that is not insignificant whitespace.
    fn peek(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
        self.bytes.get(self.at).copied()
    }

    /// Consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        if next {
            self.at += 1;
        }
        next
    }

    fn value(&mut self, out: &mut Vec<u8>) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(out),
            b'[' => self.array(out),
            b'"' => write_string(&self.string()?, out),
            b't' => self.literal(b"true", out),
            b'f' => self.literal(b"false", out),
            b'n' => self.literal(b"null", out),
            _ => {
                let start = self.at;
                while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') =
                    self.bytes.get(self.at)
                {
                    self.at += 1;
                }
                out.extend_from_slice(self.bytes.get(start..self.at).filter(|n| !n.is_empty())?);
                Some(())
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.at += 1;
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        if !self.eat(b'}') {
            loop {
                let key = self.string()?;
                if !self.eat(b':') {
                    return None;
                }
                let mut value = Vec::new();
                self.value(&mut value)?;
                members.push((key, value));
                if self.eat(b'}') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        // Sorted here rather than relying on serde_json's map type, which a feature
        // elsewhere in the build (`preserve_order`) could change.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(b'{');
        for (i, (key, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(key, out)?;
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.push(b'}');
        Some(())
    }

    fn array(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.at += 1;
        out.push(b'[');
        if !self.eat(b']') {
            loop {
                self.value(out)?;
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
                out.push(b',');
            }
        }
        out.push(b']');
        Some(())
    }

    /// A string token, decoded (escapes resolved), so that two spellings of one string
    /// compare equal.
    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at;
        self.at += 1;
        loop {
            match self.bytes.get(self.at)? {
                b'\\' => self.at += 2,
                b'"' => break,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        serde_json::from_slice(self.bytes.get(start..self.at)?).ok()
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let end = self.at + word.len();
        if self.bytes.get(self.at..end)? != word {
            return None;
        }
        self.at = end;
        out.extend_from_slice(word);
        Some(())
    }
}

fn write_string(string: &str, out: &mut Vec<u8>) -> Option<()> {
    serde_json::to_writer(out, string).ok()
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

    fn body_fingerprint(body: &str) -> Fingerprint {
        Fingerprint::of_http("POST", "/v1/orders", "alice", body.as_bytes())
    }

    #[test]
    fn numbers_are_compared_exactly() {
        let pairs = [
            // Adjacent integers past 2^53, where an f64 can no longer tell them apart.
            ("9007199254740993", "9007199254740992"),
            // Past u64 and below i64: serde_json keeps these only as f64.
            ("18446744073709551617", "18446744073709551616"),
            ("-9223372036854775809", "-9223372036854775810"),
            // Decimals that round to the same f64.
            ("0.1", "0.10000000000000001"),
        ];
        for (a, b) in pairs {
            assert_ne!(
                body_fingerprint(&format!(r#"{{"quantity": {a}}}"#)),
                body_fingerprint(&format!(r#"{{"quantity": {b}}}"#)),
                "{a} and {b} are different requests"
            );
        }
    }

    #[test]
    fn spellings_of_one_document_agree() {
        let a = br#"{"b":[1, {"y": "\u0041", "x": null}], "a": true}"#;
        let b = b"{ \"a\" : true , \"b\" : [ 1 , { \"x\" : null , \"y\" : \"A\" } ] }";
        assert_eq!(canonical_json(a), canonical_json(b));
        assert_eq!(
            canonical_json(a).as_deref(),
            Some(br#"{"a":true,"b":[1,{"x":null,"y":"A"}]}"#.as_slice())
        );
        let not_json: [&[u8]; 5] = [b"{", b"[1,]", b"{\"a\":1} x", b"tru", b""];
        for not_json in not_json {
            assert_eq!(canonical_json(not_json), None, "{not_json:?}");
        }
    }

    proptest! {
        #[test]
        fn distinct_integers_never_share_a_fingerprint(
            a in any::<i128>(),
            delta in 1i128..1_000,
        ) {
            // Near neighbours: the pairs an f64 would round together.
            let b = a.wrapping_add(delta);
            prop_assert_ne!(
                body_fingerprint(&format!(r#"{{"sku": "A", "quantity": {a}}}"#)),
                body_fingerprint(&format!(r#"{{"quantity":{b},"sku":"A"}}"#))
            );
        }
    }
}
