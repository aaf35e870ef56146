//! # ahv-store: where the liability records live
//!
//! The ledger entries, vouches (with their bonds) and quarantine records of
//! ahv-trust, kept across sessions and processes behind one trait,
//! [`TrustStore`]:
//!
//! - [`MemoryStore`]: in memory (tests, `--database memory`).
//! - [`SqlStore`] on SQLite: the default, `<state dir>/liability.sqlite`
//!   ([`sqlite_url`]), no server to start; WAL and a busy timeout so several
//!   processes can share the file.
//! - [`SqlStore`] on PostgreSQL (`--database postgres://…`): processes that
//!   share a database see each other's records.
//!
//! [`open`] picks one from a URL. Times in the records are wall time since
//! the Unix epoch, kept as whole microseconds (finer parts are dropped by
//! every backend alike).
//!
//! ## Why sqlx's `Any` driver
//! One code path for both databases: the same runtime queries (bound
//! parameters, `$N` placeholders, which SQLite also reads) and the same
//! pool run against SQLite and PostgreSQL, chosen by the URL at run time.
//! Queries are checked by the tests against both backends, not by macros
//! that need a live database at compile time. sqlx brings versioned,
//! checksummed migrations (under PostgreSQL's advisory lock, so processes
//! starting together migrate one at a time), a bounded async pool on tokio,
//! and it is widely used and maintained. The two migration files differ in
//! one line: how the ledger's sequence column is declared.
//!
//! ```
//! use std::time::Duration;
//! use ahv_core::AgentId;
//! use ahv_store::{MemoryStore, TrustStore};
//! use ahv_trust::{Admission, EntryKind, LedgerEntry, Severity};
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     // `ahv_store::open("sqlite:…")` or `open("postgres://…")` give the same API.
//!     let store = MemoryStore::new();
//!     let bob = AgentId::new("did:example:bob")?;
//!     for (kind, secs) in [
//!         (EntryKind::Slash { severity: Severity::new(1.0)? }, 10),
//!         (EntryKind::Quarantine { severity: Severity::new(0.5)? }, 20),
//!     ] {
//!         let at = Duration::from_secs(1_700_000_000 + secs);
//!         store.append_entry(LedgerEntry { agent: bob.clone(), kind, at }).await?;
//!     }
//!     assert_eq!(store.entries_for(&bob).await?.len(), 2);
//!     let assessment = store.assess(&bob).await?;
//!     assert!((assessment.risk - 0.2).abs() < 1e-9);
//!     assert_eq!(assessment.admission, Admission::Admit);
//!     assert_eq!(store.agents().await?, vec![bob]);
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// Rows come from a file or server others can write: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod error;
mod memory;
mod rows;
mod sql;
mod url;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ahv_core::AgentId;
use ahv_trust::{Admission, Assessment, LedgerEntry, risk_score};

pub use error::StoreError;
pub use memory::MemoryStore;
pub use rows::{QuarantineRow, VouchRow};
pub use sql::SqlStore;
pub use url::{Backend, SQLITE_FILE, redact, sqlite_url};

/// What every store operation returns: a boxed future, so [`TrustStore`] can
/// be used as `dyn TrustStore`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where the liability records live. Appends/puts are durable when the future resolves.
pub trait TrustStore: Send + Sync + std::fmt::Debug {
    /// `"memory"`, `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Appends one ledger entry (its time floored to the microsecond).
    ///
    /// # Errors
    /// [`StoreError::Unstorable`] for a time past the 64-bit column, or a
    /// connection, migration or query error.
    fn append_entry(&self, entry: LedgerEntry) -> StoreFuture<'_, ()>;

    /// Appends several entries, in order, all or none where the backend
    /// has transactions (one commit, one sync for the lot). The default
    /// appends them one by one.
    ///
    /// # Errors
    /// As [`TrustStore::append_entry`]; on an error none of the entries
    /// is stored by a transactional backend.
    fn append_entries(&self, entries: Vec<LedgerEntry>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            for e in entries {
                self.append_entry(e).await?;
            }
            Ok(())
        })
    }

    /// `agent`'s entries in append order (empty if unknown).
    ///
    /// # Errors
    /// [`StoreError::CorruptRow`] for a row that is not a valid entry, or a
    /// connection, migration or query error.
    fn entries_for<'a>(&'a self, agent: &'a AgentId) -> StoreFuture<'a, Vec<LedgerEntry>>;

    /// `agent`'s risk and admission decision from its entries.
    ///
    /// # Errors
    /// As [`TrustStore::entries_for`].
    fn assess<'a>(&'a self, agent: &'a AgentId) -> StoreFuture<'a, Assessment> {
        Box::pin(async move {
            let risk = risk_score(&self.entries_for(agent).await?);
            Ok(Assessment {
                risk,
                admission: Admission::for_risk(risk),
            })
        })
    }

    /// Every agent with a ledger entry, sorted.
    ///
    /// # Errors
    /// As [`TrustStore::entries_for`].
    fn agents(&self) -> StoreFuture<'_, Vec<AgentId>>;

    /// Inserts or replaces the vouch with this `(session, id)`.
    ///
    /// # Errors
    /// [`StoreError::Unstorable`] for an id above `i64::MAX`, a non-finite
    /// number or a time past the column, or a connection, migration or query
    /// error.
    fn put_vouch(&self, row: VouchRow) -> StoreFuture<'_, ()>;

    /// The vouches `agent` made or received (`None`: all), ordered by
    /// `created_at`, then session, then id.
    ///
    /// # Errors
    /// As [`TrustStore::entries_for`].
    fn vouches<'a>(&'a self, agent: Option<&'a AgentId>) -> StoreFuture<'a, Vec<VouchRow>>;

    /// Inserts or replaces the quarantine with this `(session, agent, started_at)`.
    ///
    /// # Errors
    /// As [`TrustStore::put_vouch`].
    fn put_quarantine(&self, row: QuarantineRow) -> StoreFuture<'_, ()>;

    /// `agent`'s quarantines (`None`: all), ordered by `started_at`, then
    /// session, then agent.
    ///
    /// # Errors
    /// As [`TrustStore::entries_for`].
    fn quarantines<'a>(&'a self, agent: Option<&'a AgentId>)
    -> StoreFuture<'a, Vec<QuarantineRow>>;
}

/// The store a `--database` value names: `"memory"` gives a [`MemoryStore`];
/// `"sqlite://…"`/`"sqlite:…"` and `"postgres://…"`/`"postgresql://…"` a
/// [`SqlStore`] that connects and migrates on its first operation.
///
/// # Errors
/// [`StoreError::BadUrl`] or [`StoreError::UnsupportedScheme`], naming the
/// URL with its password redacted.
pub fn open(url: &str) -> Result<Arc<dyn TrustStore>, StoreError> {
    match Backend::of(url)? {
        Backend::Memory => Ok(Arc::new(MemoryStore::new())),
        Backend::Sqlite | Backend::Postgres => Ok(Arc::new(SqlStore::connect_lazy(url)?)),
    }
}

/// The order [`TrustStore::vouches`] promises.
fn sort_vouches(rows: &mut [VouchRow]) {
    rows.sort_by(|a, b| (a.created_at, &a.session, a.id).cmp(&(b.created_at, &b.session, b.id)));
}

/// The order [`TrustStore::quarantines`] promises.
fn sort_quarantines(rows: &mut [QuarantineRow]) {
    rows.sort_by(|a, b| {
        (a.started_at, &a.session, &a.agent).cmp(&(b.started_at, &b.session, &b.agent))
    });
}
