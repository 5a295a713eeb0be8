//! How an entry is stored: a 14-byte header, then the value as JSON.
//!
//! ```text
//! byte  0      format tag 0xFC (this layout, version 1)
//! byte  1      kind: 1 = value, 2 = "not found"
//! bytes 2..10  fresh until, Unix milliseconds, big-endian
//! bytes 10..14 δ: how long the load took, microseconds, big-endian (XFetch's input)
//! bytes 14..   the value as JSON (kind 1 only)
//! ```
//!
//! The header carries what every read needs without parsing the value: whether it is still
//! fresh, and δ for early refresh, in the one `GET` that fetches it. The value is JSON
//! (serde_json, already in the workspace): it is small next to a network round trip (a
//! catalog item decodes in about a microsecond, a Redis round trip costs tens), it stays
//! readable with `redis-cli`, and a change of shape is handled by the key's version, not by
//! the codec. Anything that does not match this layout decodes as [`Corrupt`].

use serde::Serialize;
use serde::de::DeserializeOwned;

const TAG: u8 = 0xFC;
const KIND_VALUE: u8 = 1;
const KIND_MISSING: u8 = 2;
pub(crate) const HEADER_BYTES: usize = 14;

/// A decoded entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry<V> {
    /// The value, or `None` for a cached "not found".
    pub(crate) value: Option<V>,
    /// Unix milliseconds until which it is fresh.
    pub(crate) fresh_until_ms: u64,
    /// How long loading it took, microseconds.
    pub(crate) delta_us: u32,
}

/// Bytes that are not an entry of this layout and value type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored entry cannot be decoded: {0}")]
pub(crate) struct Corrupt(pub(crate) String);

pub(crate) fn encode<V: Serialize>(
    value: Option<&V>,
    fresh_until_ms: u64,
    delta_us: u32,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + 128);
    bytes.push(TAG);
    bytes.push(if value.is_some() {
        KIND_VALUE
    } else {
        KIND_MISSING
    });
    bytes.extend_from_slice(&fresh_until_ms.to_be_bytes());
    bytes.extend_from_slice(&delta_us.to_be_bytes());
    if let Some(value) = value {
        serde_json::to_writer(&mut bytes, value)?;
    }
    Ok(bytes)
}

pub(crate) fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<Entry<V>, Corrupt> {
    let (header, body) = bytes
        .split_at_checked(HEADER_BYTES)
        .ok_or_else(|| Corrupt(format!("{} bytes, shorter than the header", bytes.len())))?;
    if header[0] != TAG {
        return Err(Corrupt(format!("unknown format tag {:#04x}", header[0])));
    }
    let mut until = [0_u8; 8];
    until.copy_from_slice(&header[2..10]);
    let mut delta = [0_u8; 4];
    delta.copy_from_slice(&header[10..14]);
    let value = match header[1] {
        KIND_VALUE => {
            Some(serde_json::from_slice(body).map_err(|e| Corrupt(format!("value: {e}")))?)
        }
        KIND_MISSING if body.is_empty() => None,
        KIND_MISSING => return Err(Corrupt("a \"not found\" with a body".into())),
        kind => return Err(Corrupt(format!("unknown kind {kind}"))),
    };
    Ok(Entry {
        value,
        fresh_until_ms: u64::from_be_bytes(until),
        delta_us: u32::from_be_bytes(delta),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Item {
        sku: String,
        price: i64,
    }

    #[test]
    fn values_and_not_found_round_trip() {
        let item = Item {
            sku: "LAMP-01".into(),
            price: 4_990,
        };
        let bytes = encode(Some(&item), 1_700_000_000_000, 1_234).unwrap();
        let entry: Entry<Item> = decode(&bytes).unwrap();
        assert_eq!(entry.value, Some(item));
        assert_eq!(entry.fresh_until_ms, 1_700_000_000_000);
        assert_eq!(entry.delta_us, 1_234);
        let missing = encode::<Item>(None, 5, 6).unwrap();
        assert_eq!(missing.len(), HEADER_BYTES);
        assert_eq!(decode::<Item>(&missing).unwrap().value, None);
    }

    #[test]
    fn other_shapes_and_garbage_are_corrupt() {
        let old = encode(Some(&serde_json::json!({"sku": "A"})), 1, 1).unwrap();
        assert!(decode::<Item>(&old).is_err());
        assert!(decode::<Item>(b"{\"sku\":\"A\",\"price\":1}").is_err());
        assert!(decode::<Item>(&[TAG, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut with_body = encode::<Item>(None, 1, 1).unwrap();
        with_body.push(b'1');
        assert!(decode::<Item>(&with_body).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<Item>(&bytes);
        }
    }
}
