//! Driver errors mapped at the seam: a sqlx error becomes an `ErrorClass`, then the port's own
//! error enum. Unique violation → conflict, pool timeout → unavailable, a dead backend →
//! unavailable, undecodable data → corrupt, a full or read-only database file → unavailable.

use switchboard_core::ErrorClass;
use switchboard_ports::FromClass;

/// SQLSTATEs (Postgres) and result codes (SQLite) that mean "the database is not there right now".
const UNAVAILABLE_CODES: &[&str] = &[
    "57P01", // admin_shutdown (pg_terminate_backend)
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now
    "53300", // too_many_connections
    "08000", "08003", "08006", "08001", "08004", // connection exceptions
    "53100", // disk_full
    "25006", // read_only_sql_transaction
    "5",     // SQLITE_BUSY
    "6",     // SQLITE_LOCKED
    "8",     // SQLITE_READONLY
    "10",    // SQLITE_IOERR
    "13",    // SQLITE_FULL
    "14",    // SQLITE_CANTOPEN
];

/// Codes that mean stored data failed an integrity check.
const CORRUPT_CODES: &[&str] = &["11", "26", "XX001", "XX002"]; // SQLITE_CORRUPT, SQLITE_NOTADB, data_corrupted, index_corrupted

/// Codes that mean a concurrent writer won: retryable conflicts.
const CONFLICT_CODES: &[&str] = &["40001", "40P01"]; // serialization_failure, deadlock_detected

/// The shared class of a sqlx error.
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    use sqlx::error::ErrorKind;
    match e {
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation | ErrorKind::ExclusionViolation => ErrorClass::Conflict,
            ErrorKind::ForeignKeyViolation => ErrorClass::NotFound,
            ErrorKind::NotNullViolation | ErrorKind::CheckViolation => ErrorClass::Invalid,
            _ => {
                let code = db.code();
                let code = code.as_deref().unwrap_or("");
                // SQLite extended codes carry the primary code in their low byte.
                let primary = code
                    .parse::<u32>()
                    .map(|c| (c & 0xff).to_string())
                    .unwrap_or_else(|_| code.to_string());
                if UNAVAILABLE_CODES.contains(&code)
                    || UNAVAILABLE_CODES.contains(&primary.as_str())
                {
                    ErrorClass::Unavailable
                } else if CORRUPT_CODES.contains(&code) || CORRUPT_CODES.contains(&primary.as_str())
                {
                    ErrorClass::Corrupt
                } else if CONFLICT_CODES.contains(&code) {
                    ErrorClass::Conflict
                } else if code.starts_with("22") || code.starts_with("42") {
                    // data exceptions and syntax/access rule violations: the request was unusable
                    ErrorClass::Invalid
                } else {
                    ErrorClass::Unavailable
                }
            }
        },
        sqlx::Error::RowNotFound => ErrorClass::NotFound,
        sqlx::Error::PoolTimedOut => ErrorClass::Unavailable,
        sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::BeginFailed => ErrorClass::Unavailable,
        sqlx::Error::Protocol(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => ErrorClass::Corrupt,
        sqlx::Error::Configuration(_)
        | sqlx::Error::InvalidArgument(_)
        | sqlx::Error::Encode(_) => ErrorClass::Invalid,
        _ => ErrorClass::Unavailable,
    }
}

/// A port error of `e`'s class, whose message says what was being done. The driver's own message
/// is kept (it names the constraint or the connection problem) but its type never crosses the port.
pub fn to_port<E: FromClass>(context: &str, e: sqlx::Error) -> E {
    E::from_class(classify(&e), format!("{context}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_decode_errors_classify() {
        assert_eq!(
            classify(&sqlx::Error::PoolTimedOut),
            ErrorClass::Unavailable
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::NotFound);
        assert_eq!(
            classify(&sqlx::Error::Protocol("garbage".into())),
            ErrorClass::Corrupt
        );
        assert_eq!(
            classify(&sqlx::Error::Io(std::io::Error::other("reset"))),
            ErrorClass::Unavailable
        );
    }
}
