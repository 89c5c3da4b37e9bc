//! `InMemoryMinter`: deterministic tokens, run ids and connection numbers from one counter, with
//! real SHA-256 hashes, so tests can predict every minted value.

use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard_core::crypto::TokenHash;
use switchboard_core::{ConnId, RunId};
use switchboard_ports::runtime::Minter;
use switchboard_ports::SecretString;

/// Mints `sbx_test_<n>` tokens, `run-<n>` ids and `ConnId(n)` from one counter starting at 1.
#[derive(Debug, Default)]
pub struct InMemoryMinter {
    next: AtomicU64,
}

impl InMemoryMinter {
    pub fn new() -> Self {
        Self::default()
    }

    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// SHA-256 of a token, as every minter hashes it.
pub fn sha256_token(token: &SecretString) -> TokenHash {
    TokenHash(Sha256::digest(token.expose().as_bytes()).into())
}

impl Minter for InMemoryMinter {
    fn sandbox_token(&self) -> (SecretString, TokenHash) {
        let token = SecretString::new(format!("sbx_test_{:08}", self.next()));
        let hash = sha256_token(&token);
        (token, hash)
    }

    fn hash_token(&self, token: &SecretString) -> TokenHash {
        sha256_token(token)
    }

    fn run_id(&self) -> RunId {
        RunId::parse(format!("run-{}", self.next())).expect("run-N is a valid run id")
    }

    fn conn_id(&self) -> ConnId {
        ConnId(self.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mints_distinct_values_and_hashes_consistently() {
        let minter = InMemoryMinter::new();
        let (a, hash_a) = minter.sandbox_token();
        let (b, hash_b) = minter.sandbox_token();
        assert_ne!(a.expose(), b.expose());
        assert!(!hash_a.matches(&hash_b));
        assert!(minter.hash_token(&a).matches(&hash_a));
        assert_ne!(minter.run_id(), minter.run_id());
        assert_ne!(minter.conn_id(), minter.conn_id());
    }
}
