//! A string that holds a secret: never printed, compared in constant time.

/// A secret (API key, token, password). `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }

    /// The secret itself. Call sites are where secrets leave their envelope: keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The last four characters, for display (`GET /v1/credentials`).
    pub fn last4(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        chars[chars.len().saturating_sub(4)..].iter().collect()
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &SecretString) -> bool {
        switchboard_core::crypto::constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = SecretString::new("sk-live-abcdef1234");
        assert_eq!(format!("{s:?}"), "SecretString(<redacted>)");
        assert_eq!(s.last4(), "1234");
        assert_eq!(SecretString::new("ab").last4(), "ab");
        assert!(s.ct_eq(&SecretString::new("sk-live-abcdef1234")));
    }
}
