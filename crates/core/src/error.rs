//! The shared classification of every error that crosses a port or the wire.

use serde::{Deserialize, Serialize};

/// What kind of failure an error is, independent of which port or driver raised it.
///
/// Every port error classifies into exactly one of these; the HTTP layer maps them to status codes
/// and the disruption suite asserts on them instead of on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The thing asked for does not exist, or belongs to another tenant.
    NotFound,
    /// The request conflicts with current state (duplicate, wrong state).
    Conflict,
    /// The request is malformed or violates a rule.
    Invalid,
    /// No, bad, revoked or expired credential.
    Unauthorized,
    /// Too many requests; retry later.
    RateLimited,
    /// A dependency is down or refused; retry later.
    Unavailable,
    /// A dependency did not answer in time; the outcome may be unknown.
    Timeout,
    /// Stored or received data failed an integrity check.
    Corrupt,
}

impl ErrorClass {
    /// Every class, in a stable order.
    pub const ALL: [ErrorClass; 8] = [
        ErrorClass::NotFound,
        ErrorClass::Conflict,
        ErrorClass::Invalid,
        ErrorClass::Unauthorized,
        ErrorClass::RateLimited,
        ErrorClass::Unavailable,
        ErrorClass::Timeout,
        ErrorClass::Corrupt,
    ];

    /// The snake_case code used on the wire.
    pub fn code(self) -> &'static str {
        match self {
            ErrorClass::NotFound => "not_found",
            ErrorClass::Conflict => "conflict",
            ErrorClass::Invalid => "invalid",
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Corrupt => "corrupt",
        }
    }

    /// The HTTP status the API answers with for this class (PROTOCOL.md).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::NotFound => 404,
            ErrorClass::Conflict => 409,
            ErrorClass::Invalid => 400,
            ErrorClass::Unauthorized => 401,
            ErrorClass::RateLimited => 429,
            ErrorClass::Unavailable => 503,
            ErrorClass::Timeout => 503,
            ErrorClass::Corrupt => 500,
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited | ErrorClass::Unavailable | ErrorClass::Timeout
        )
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}
