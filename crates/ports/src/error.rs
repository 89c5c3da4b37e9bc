//! The shared error classification every port error implements, and the macro that defines them.

pub use switchboard_core::ErrorClass;

/// Classifies an error into the shared [`ErrorClass`].
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

/// Builds a port error of a given class (used by adapters mapping driver errors, and by `Faulty<P>`).
pub trait FromClass {
    fn from_class(class: ErrorClass, message: impl Into<String>) -> Self;
}

/// Defines a port error enum with one variant per [`ErrorClass`], each carrying a human message.
#[macro_export]
macro_rules! port_error {
    ($(#[$doc:meta])* $name:ident, $port:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        pub enum $name {
            #[error("{}: not found: {}", $port, .0)]
            NotFound(String),
            #[error("{}: conflict: {}", $port, .0)]
            Conflict(String),
            #[error("{}: invalid: {}", $port, .0)]
            Invalid(String),
            #[error("{}: unauthorized: {}", $port, .0)]
            Unauthorized(String),
            #[error("{}: rate limited: {}", $port, .0)]
            RateLimited(String),
            #[error("{}: unavailable: {}", $port, .0)]
            Unavailable(String),
            #[error("{}: timed out: {}", $port, .0)]
            Timeout(String),
            #[error("{}: corrupt: {}", $port, .0)]
            Corrupt(String),
        }

        impl $crate::error::Classify for $name {
            fn class(&self) -> $crate::error::ErrorClass {
                use $crate::error::ErrorClass as C;
                match self {
                    $name::NotFound(_) => C::NotFound,
                    $name::Conflict(_) => C::Conflict,
                    $name::Invalid(_) => C::Invalid,
                    $name::Unauthorized(_) => C::Unauthorized,
                    $name::RateLimited(_) => C::RateLimited,
                    $name::Unavailable(_) => C::Unavailable,
                    $name::Timeout(_) => C::Timeout,
                    $name::Corrupt(_) => C::Corrupt,
                }
            }
        }

        impl $crate::error::FromClass for $name {
            fn from_class(class: $crate::error::ErrorClass, message: impl Into<String>) -> Self {
                use $crate::error::ErrorClass as C;
                let m = message.into();
                match class {
                    C::NotFound => $name::NotFound(m),
                    C::Conflict => $name::Conflict(m),
                    C::Invalid => $name::Invalid(m),
                    C::Unauthorized => $name::Unauthorized(m),
                    C::RateLimited => $name::RateLimited(m),
                    C::Unavailable => $name::Unavailable(m),
                    C::Timeout => $name::Timeout(m),
                    C::Corrupt => $name::Corrupt(m),
                }
            }
        }

        impl $name {
            /// The human message, without the class prefix.
            pub fn message(&self) -> &str {
                match self {
                    $name::NotFound(m)
                    | $name::Conflict(m)
                    | $name::Invalid(m)
                    | $name::Unauthorized(m)
                    | $name::RateLimited(m)
                    | $name::Unavailable(m)
                    | $name::Timeout(m)
                    | $name::Corrupt(m) => m,
                }
            }

            /// As the session machine's `PortFailure`.
            pub fn to_failure(&self) -> switchboard_core::session::PortFailure {
                switchboard_core::session::PortFailure::new($crate::error::Classify::class(self), self.to_string())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    crate::port_error!(
        /// A test error.
        DemoError,
        "demo"
    );

    #[test]
    fn classes_round_trip() {
        for c in ErrorClass::ALL {
            let e = DemoError::from_class(c, "m");
            assert_eq!(e.class(), c);
            assert_eq!(e.message(), "m");
            assert!(e.to_string().starts_with("demo: "));
            assert_eq!(e.to_failure().class, c);
        }
    }
}
