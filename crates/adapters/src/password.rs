//! Password hashing for users: argon2id PHC strings with a random salt, verified in constant time.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use switchboard_ports::SecretString;

/// Hashes `password` with argon2id (the crate's default parameters: 19 MiB, 2 passes, 1 lane) and
/// a fresh 16-byte salt from the OS, as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
///
/// Panics only if the OS random source fails, which leaves nothing safe to do.
pub fn hash_password(password: &SecretString) -> String {
    Argon2::default()
        .hash_password(password.expose().as_bytes())
        .expect("argon2id with default parameters hashes any password given an OS random source")
        .to_string()
}

/// Whether `password` matches the PHC string `phc`. The parameters and salt come from `phc`; the
/// comparison of the outputs is constant-time. A malformed or foreign PHC string never matches.
pub fn verify_password(password: &SecretString, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.expose().as_bytes(), phc)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let pw = SecretString::new("correct horse battery staple");
        let phc = hash_password(&pw);
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(
            !phc.contains("correct horse"),
            "the password is not in the hash"
        );
        assert!(verify_password(&pw, &phc));
        assert!(!verify_password(
            &SecretString::new("correct horse battery stapl"),
            &phc
        ));
        assert!(!verify_password(&SecretString::new(""), &phc));
    }

    #[test]
    fn every_hash_has_its_own_salt() {
        let pw = SecretString::new("hunter42");
        let (a, b) = (hash_password(&pw), hash_password(&pw));
        assert_ne!(a, b, "two hashes of one password differ by their salt");
        assert!(verify_password(&pw, &a) && verify_password(&pw, &b));
    }

    #[test]
    fn malformed_or_tampered_hashes_never_match() {
        let pw = SecretString::new("hunter42");
        let phc = hash_password(&pw);
        // Flip one character of the output (the last field).
        let mut tampered = phc.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        for bad in ["", "hunter42", "$argon2id$", "$md5$x", tampered.as_str()] {
            assert!(!verify_password(&pw, bad), "{bad:?}");
        }
    }
}
