//! Typed identifiers: one newtype per kind of id, so an org id can never be passed as a session id.

use serde::{Deserialize, Serialize};

/// An id string was empty, too long or held a character outside `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {value:?}: ids are 1-128 characters of [A-Za-z0-9_.-]")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses an id, refusing empty, over-long or oddly-charactered strings.
            pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                if valid_id(&s) {
                    Ok(Self(s))
                } else {
                    Err(InvalidId { kind: $kind, value: s })
                }
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }
    };
}

typed_id!(/// A tenant: an organisation.
    OrgId, "org");
typed_id!(/// A person within one or more orgs.
    UserId, "user");
typed_id!(/// An API key's public id (not the secret).
    ApiKeyId, "api key");
typed_id!(/// A session, unique within its org.
    SessionId, "session");
typed_id!(/// One prompt's execution within a session.
    RunId, "run");
typed_id!(/// A dev box, as named by its provider.
    SandboxId, "sandbox");
typed_id!(/// A permission request raised by an agent.
    RequestId, "request");
typed_id!(/// A tool call made by an agent within a run.
    CallId, "call");
typed_id!(/// A login session (not the token).
    LoginId, "login");
typed_id!(/// A client-chosen idempotency key for a prompt.
    ClientMsgId, "client message");

/// A connection to a session (client or sandbox), numbered by the shell that owns the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_empty_and_odd_characters() {
        assert!(OrgId::parse("").is_err());
        assert!(OrgId::parse("a:b").is_err());
        assert!(OrgId::parse("a/b").is_err());
        assert!(OrgId::parse("x".repeat(129)).is_err());
        assert_eq!(OrgId::parse("org_01-x.y").unwrap().as_str(), "org_01-x.y");
    }

    #[test]
    fn ids_deserialize_through_validation() {
        let bad: Result<SessionId, _> = serde_json::from_str("\"a:b\"");
        assert!(bad.is_err());
        let good: SessionId = serde_json::from_str("\"s1\"").unwrap();
        assert_eq!(serde_json::to_string(&good).unwrap(), "\"s1\"");
    }
}
