//! What went wrong in a store, naming the backend, the operation and the
//! subject. URLs in messages are always [`redact`](crate::redact)ed.

use thiserror::Error;

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database URL could not be parsed.
    #[error("bad database URL {url}: {reason}")]
    BadUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL names a database this build does not support.
    #[error(
        "unsupported database {scheme:?} in {url}: use \"memory\", \"sqlite:PATH\" or \"postgres://…\""
    )]
    UnsupportedScheme {
        /// The scheme (the text before the first `:`).
        scheme: String,
        /// The URL, password redacted.
        url: String,
    },
    /// The database could not be reached or opened.
    #[error("could not connect to the {backend} database at {url}: {source}")]
    Connect {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The schema migrations failed.
    #[error("migrating the {backend} database at {url} failed: {source}")]
    Migration {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The URL, password redacted.
        url: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("{backend} store failed to {operation} for {subject}: {source}")]
    Query {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// What the store was doing (`append an entry`, `read vouches`, …).
        operation: &'static str,
        /// Whom it was for: an agent, a session, or `all agents`.
        subject: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A row read back does not hold a valid record (edited by hand, or
    /// written by something else).
    #[error("corrupt row in {table}.{column}: {value:?} ({reason})")]
    CorruptRow {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// The value found (truncated to 64 characters).
        value: String,
        /// Why it is not valid.
        reason: String,
    },
    /// A record cannot be stored as given: a time or id past the 64-bit
    /// range of the columns, or a non-finite number.
    #[error("cannot store {value} in {table}.{column}: {reason}")]
    Unstorable {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// The value given.
        value: String,
        /// Why it does not fit.
        reason: &'static str,
    },
}
