//! Ids and secrets the API hands out: UUIDv7 ids, `sk_` API keys and login tokens from the OS's
//! random source, stored only as SHA-256.

use sha2::{Digest, Sha256};
use switchboard_core::crypto::TokenHash;
use switchboard_ports::SecretString;

/// A fresh UUIDv7 string (time-ordered, unique).
pub fn uuid_v7() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A fresh secret: `prefix` followed by 32 random bytes in hex.
pub fn secret(prefix: &str) -> SecretString {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    SecretString::new(format!("{prefix}{}", hex::encode(bytes)))
}

/// SHA-256 of a secret as presented; the only form in which secrets are stored.
pub fn hash(secret: &SecretString) -> TokenHash {
    TokenHash(Sha256::digest(secret.expose().as_bytes()).into())
}

/// The visible prefix of an API key shown in listings (`sk_` and four more characters).
pub fn visible_prefix(key: &SecretString) -> String {
    key.expose().chars().take(7).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_prefixed_and_hash_stably() {
        let (a, b) = (secret("sk_"), secret("sk_"));
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("sk_") && a.expose().len() == 3 + 64);
        assert!(hash(&a).matches(&hash(&SecretString::new(a.expose()))));
        assert!(!hash(&a).matches(&hash(&b)));
        assert_eq!(visible_prefix(&a).len(), 7);
        assert_ne!(uuid_v7(), uuid_v7());
    }
}
