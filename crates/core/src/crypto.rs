//! Pure rules for secrets: constant-time comparison and the hex form of token hashes.
//!
//! Hashing itself happens in the shell (the core has no crypto dependency); the core only compares.

use serde::{Deserialize, Serialize};

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the optimiser from short-circuiting on the accumulated value.
    std::hint::black_box(diff) == 0
}

/// SHA-256 of a secret token, as computed by the shell. Only the hash is stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenHash(#[serde(with = "hex32")] pub [u8; 32]);

impl TokenHash {
    /// Compares with another hash in constant time.
    pub fn matches(&self, other: &TokenHash) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes are not secrets, but a short form keeps logs readable.
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    /// Lowercase hex, written on the stack (hashes are in every snapshot).
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(v) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0f)];
        }
        s.serialize_str(std::str::from_utf8(&out).expect("hex digits are ASCII"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 64 {
            return Err(serde::de::Error::custom("token hash must be 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).map_err(serde::de::Error::custom)?;
            out[i] = u8::from_str_radix(hex, 16).map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let h = TokenHash([7; 32]);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<TokenHash>(&json).unwrap(), h);
        assert!(!h.matches(&TokenHash([8; 32])));
    }

    #[test]
    fn hashes_are_lowercase_hex_on_the_wire() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let json = serde_json::to_string(&TokenHash(bytes)).unwrap();
        assert_eq!(json, format!("\"{hex}\""));
        assert_eq!(
            serde_json::from_str::<TokenHash>(&json).unwrap(),
            TokenHash(bytes)
        );
    }
}
