//! The SQL store: one sqlx `Any` pool and one set of queries for SQLite and
//! PostgreSQL. The two migration files differ only in how the ledger's
//! sequence column is declared.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use ahv_core::AgentId;
use ahv_trust::LedgerEntry;
use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{Any, Executor, Row};
use tokio::sync::OnceCell;

use crate::rows::{
    LEDGER, QUARANTINES, VOUCHES, kind_columns, micros, normalize_entry, normalize_quarantine,
    normalize_vouch, opt_micros, read_agent, read_escalations, read_finite, read_kind,
    read_opt_time, read_reason, read_session, read_time, read_vouch_id, vouch_id,
};
use crate::url::{Backend, redact, with_create_mode};
use crate::{QuarantineRow, StoreError, StoreFuture, TrustStore, VouchRow};

/// Connections per pool: a hypervisor's writes are small and serialised by
/// the database anyway; this bounds what one process takes from a shared
/// PostgreSQL server (whose default limit is 100).
const MAX_CONNECTIONS: u32 = 4;
/// How long an operation waits for a connection (or for the server to
/// answer a new one) before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long SQLite waits on another process's write lock.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;
/// SQLite has no advisory lock: when two processes migrate a new file at
/// once, the loser fails on the migrations table and succeeds on a retry,
/// which finds the work done.
const SQLITE_MIGRATION_ATTEMPTS: u32 = 3;

const INSERT_ENTRY: &str =
    "INSERT INTO ledger_entries (agent, kind, severity, at_us) VALUES ($1, $2, $3, $4)";
/// An entry without a severity: its NULL is written in the SQL, never bound.
/// sqlx 0.8.6's Any driver sends a NULL `Option<f64>` to PostgreSQL typed as
/// `float4` (its `Double`/`Real` cases are swapped), and whichever statement
/// a pooled connection prepares first fixes the parameter's type: a
/// connection that first wrote a clean session then refused every slash
/// ("incorrect binary data format in bind parameter 3").
const INSERT_ENTRY_NO_SEVERITY: &str =
    "INSERT INTO ledger_entries (agent, kind, severity, at_us) VALUES ($1, $2, NULL, $3)";
const SELECT_ENTRIES: &str =
    "SELECT agent, kind, severity, at_us FROM ledger_entries WHERE agent = $1 ORDER BY seq";
const SELECT_AGENTS: &str = "SELECT DISTINCT agent FROM ledger_entries";
const UPSERT_VOUCH: &str = "INSERT INTO vouches \
    (session, id, voucher, vouchee, voucher_sigma, pct, bond, created_at_us, released_at_us, released_because) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
    ON CONFLICT (session, id) DO UPDATE SET voucher = excluded.voucher, vouchee = excluded.vouchee, \
    voucher_sigma = excluded.voucher_sigma, pct = excluded.pct, bond = excluded.bond, \
    created_at_us = excluded.created_at_us, released_at_us = excluded.released_at_us, \
    released_because = excluded.released_because";
const ALL_VOUCHES: &str = "SELECT session, id, voucher, vouchee, voucher_sigma, pct, bond, \
    created_at_us, released_at_us, released_because FROM vouches";
const VOUCHES_OF: &str = "SELECT session, id, voucher, vouchee, voucher_sigma, pct, bond, \
    created_at_us, released_at_us, released_because FROM vouches WHERE voucher = $1 OR vouchee = $2";
const UPSERT_QUARANTINE: &str = "INSERT INTO quarantines \
    (session, agent, reason, last_reason, started_at_us, ends_at_us, escalations, released_at_us, released_because) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (session, agent, started_at_us) DO UPDATE SET reason = excluded.reason, \
    last_reason = excluded.last_reason, ends_at_us = excluded.ends_at_us, \
    escalations = excluded.escalations, released_at_us = excluded.released_at_us, \
    released_because = excluded.released_because";
const ALL_QUARANTINES: &str = "SELECT session, agent, reason, last_reason, started_at_us, \
    ends_at_us, escalations, released_at_us, released_because FROM quarantines";
const QUARANTINES_OF: &str = "SELECT session, agent, reason, last_reason, started_at_us, \
    ends_at_us, escalations, released_at_us, released_because FROM quarantines WHERE agent = $1";

/// A [`TrustStore`] in SQLite or PostgreSQL, through sqlx's `Any` driver.
pub struct SqlStore {
    backend: Backend,
    /// The URL with its password redacted: the only form messages show.
    url: String,
    options: AnyConnectOptions,
    pool: OnceCell<AnyPool>,
}

impl fmt::Debug for SqlStore {
    // By hand: the connect options hold the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend.name())
            .field("url", &self.url)
            .field("connected", &self.pool.initialized())
            .finish()
    }
}

impl SqlStore {
    /// Connects to `url` and brings its schema up to date.
    ///
    /// # Errors
    /// [`StoreError::BadUrl`] or [`StoreError::UnsupportedScheme`] for a URL
    /// that is not SQLite or PostgreSQL, [`StoreError::Connect`] if the
    /// database cannot be opened, [`StoreError::Migration`] if its schema
    /// cannot be brought up to date.
    pub async fn connect(url: &str) -> Result<SqlStore, StoreError> {
        let store = SqlStore::connect_lazy(url)?;
        store.pool().await?;
        Ok(store)
    }

    /// Checks `url` without I/O; the first operation connects and migrates
    /// (once; a failed attempt is retried by the next operation).
    ///
    /// # Errors
    /// [`StoreError::BadUrl`] or [`StoreError::UnsupportedScheme`] for a URL
    /// that is not a valid SQLite or PostgreSQL URL.
    pub fn connect_lazy(url: &str) -> Result<SqlStore, StoreError> {
        let backend = Backend::of(url)?;
        let bad = |reason: String| StoreError::BadUrl {
            url: redact(url),
            reason,
        };
        let url_for_sqlx = match backend {
            Backend::Memory => {
                return Err(bad(
                    "\"memory\" is not a SQL database (ahv_store::open gives a MemoryStore)"
                        .to_owned(),
                ));
            }
            Backend::Sqlite => {
                let with_mode = with_create_mode(url);
                sqlx::sqlite::SqliteConnectOptions::from_str(&with_mode)
                    .map_err(|e| bad(e.to_string()))?;
                with_mode
            }
            Backend::Postgres => {
                sqlx::postgres::PgConnectOptions::from_str(url).map_err(|e| bad(e.to_string()))?;
                url.to_owned()
            }
        };
        install_drivers();
        let options = AnyConnectOptions::from_str(&url_for_sqlx).map_err(|e| bad(e.to_string()))?;
        Ok(SqlStore {
            backend,
            url: redact(url),
            options,
            pool: OnceCell::new(),
        })
    }

    /// The pool, connected and migrated on first use.
    async fn pool(&self) -> Result<&AnyPool, StoreError> {
        self.pool.get_or_try_init(|| self.open_pool()).await
    }

    async fn open_pool(&self) -> Result<AnyPool, StoreError> {
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT);
        if self.backend == Backend::Sqlite {
            // Several processes may share the file: WAL lets readers run
            // beside a writer, the busy timeout makes writers queue instead
            // of failing, and FULL sync makes a commit durable on return.
            pool_options = pool_options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str(),
                    )
                    .await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options
            .connect_with(self.options.clone())
            .await
            .map_err(|source| StoreError::Connect {
                backend: self.backend.name(),
                url: self.url.clone(),
                source,
            })?;
        self.migrate(&pool).await?;
        Ok(pool)
    }

    async fn migrate(&self, pool: &AnyPool) -> Result<(), StoreError> {
        let failed = |source| StoreError::Migration {
            backend: self.backend.name(),
            url: self.url.clone(),
            source,
        };
        // On PostgreSQL the migrator holds an advisory lock (sqlx's Any
        // driver hands `lock` to the PostgreSQL connection), so processes
        // starting together migrate one after the other.
        let migrator = Migrator::new(Embedded(self.backend))
            .await
            .map_err(failed)?;
        let attempts = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATION_ATTEMPTS,
            _ => 1,
        };
        let mut attempt = 1;
        loop {
            match migrator.run(pool).await {
                Ok(()) => return Ok(()),
                Err(_) if attempt < attempts => attempt += 1,
                Err(e) => return Err(failed(e)),
            }
        }
    }

    fn query_failed(
        &self,
        operation: &'static str,
        subject: impl fmt::Display,
    ) -> impl FnOnce(sqlx::Error) -> StoreError {
        let backend = self.backend.name();
        let subject = subject.to_string();
        move |source| StoreError::Query {
            backend,
            operation,
            subject,
            source,
        }
    }
}

/// Registers the two drivers with sqlx's `Any` (once per process; a second
/// registration is refused by sqlx and harmless).
fn install_drivers() {
    let _already_installed =
        sqlx::any::install_drivers(&[sqlx::postgres::any::DRIVER, sqlx::sqlite::any::DRIVER]);
}

/// The migrations, compiled in so the binary needs no files beside it.
#[derive(Debug)]
struct Embedded(Backend);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>> {
        Box::pin(async move {
            let sql = match self.0 {
                Backend::Postgres => include_str!("../migrations/postgres/0001_liability.sql"),
                _ => include_str!("../migrations/sqlite/0001_liability.sql"),
            };
            Ok(vec![Migration::new(
                1,
                "liability".into(),
                MigrationType::Simple,
                sql.into(),
                false,
            )])
        })
    }
}

/// A column, or a typed error naming it if the row does not hold one.
fn col<'r, T>(row: &'r AnyRow, table: &'static str, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column).map_err(|e| StoreError::CorruptRow {
        table,
        column,
        value: "(undecodable)".to_owned(),
        reason: e.to_string(),
    })
}

fn entry_from(row: &AnyRow) -> Result<LedgerEntry, StoreError> {
    Ok(LedgerEntry {
        agent: read_agent(LEDGER, "agent", col(row, LEDGER, "agent")?)?,
        kind: read_kind(col(row, LEDGER, "kind")?, col(row, LEDGER, "severity")?)?,
        at: read_time(LEDGER, "at_us", col(row, LEDGER, "at_us")?)?,
    })
}

fn vouch_from(row: &AnyRow) -> Result<VouchRow, StoreError> {
    let t = VOUCHES;
    Ok(VouchRow {
        session: read_session(t, "session", col(row, t, "session")?)?,
        id: read_vouch_id(col(row, t, "id")?)?,
        voucher: read_agent(t, "voucher", col(row, t, "voucher")?)?,
        vouchee: read_agent(t, "vouchee", col(row, t, "vouchee")?)?,
        voucher_sigma: read_finite(t, "voucher_sigma", col(row, t, "voucher_sigma")?)?,
        pct: read_finite(t, "pct", col(row, t, "pct")?)?,
        bond: read_finite(t, "bond", col(row, t, "bond")?)?,
        created_at: read_time(t, "created_at_us", col(row, t, "created_at_us")?)?,
        released_at: read_opt_time(t, "released_at_us", col(row, t, "released_at_us")?)?,
        released_because: col(row, t, "released_because")?,
    })
}

fn quarantine_from(row: &AnyRow) -> Result<QuarantineRow, StoreError> {
    let t = QUARANTINES;
    Ok(QuarantineRow {
        session: read_session(t, "session", col(row, t, "session")?)?,
        agent: read_agent(t, "agent", col(row, t, "agent")?)?,
        reason: read_reason(t, "reason", col(row, t, "reason")?)?,
        last_reason: read_reason(t, "last_reason", col(row, t, "last_reason")?)?,
        started_at: read_time(t, "started_at_us", col(row, t, "started_at_us")?)?,
        ends_at: read_opt_time(t, "ends_at_us", col(row, t, "ends_at_us")?)?,
        escalations: read_escalations(col(row, t, "escalations")?)?,
        released_at: read_opt_time(t, "released_at_us", col(row, t, "released_at_us")?)?,
        released_because: col(row, t, "released_because")?,
    })
}

fn subject(agent: Option<&AgentId>) -> String {
    agent.map_or_else(|| "all agents".to_owned(), |a| format!("agent {a}"))
}

/// The statement that appends one ledger entry (see [`INSERT_ENTRY_NO_SEVERITY`]).
fn insert_entry<'q>(
    agent: &'q str,
    kind: &'q str,
    severity: Option<f64>,
    at: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match severity {
        Some(severity) => sqlx::query(INSERT_ENTRY)
            .bind(agent)
            .bind(kind)
            .bind(severity)
            .bind(at),
        None => sqlx::query(INSERT_ENTRY_NO_SEVERITY)
            .bind(agent)
            .bind(kind)
            .bind(at),
    }
}

impl TrustStore for SqlStore {
    fn backend(&self) -> &'static str {
        self.backend.name()
    }

    fn append_entry(&self, entry: LedgerEntry) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let entry = normalize_entry(entry)?;
            let (kind, severity) = kind_columns(entry.kind);
            let at = micros(LEDGER, "at_us", entry.at)?;
            let pool = self.pool().await?;
            insert_entry(entry.agent.as_str(), kind, severity, at)
                .execute(pool)
                .await
                .map_err(self.query_failed("append a ledger entry", subject(Some(&entry.agent))))?;
            Ok(())
        })
    }

    fn append_entries(&self, entries: Vec<LedgerEntry>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Checked before anything is written: all or none.
            let mut rows = Vec::with_capacity(entries.len());
            for entry in entries {
                let entry = normalize_entry(entry)?;
                let (kind, severity) = kind_columns(entry.kind);
                let at = micros(LEDGER, "at_us", entry.at)?;
                rows.push((entry.agent, kind, severity, at));
            }
            let pool = self.pool().await?;
            let failed = |what: &'static str| self.query_failed(what, subject(None));
            let mut tx = pool
                .begin()
                .await
                .map_err(failed("begin a batch of ledger entries"))?;
            for (agent, kind, severity, at) in &rows {
                insert_entry(agent.as_str(), kind, *severity, *at)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.query_failed("append a ledger entry", subject(Some(agent))))?;
            }
            tx.commit()
                .await
                .map_err(failed("commit a batch of ledger entries"))?;
            Ok(())
        })
    }

    fn entries_for<'a>(&'a self, agent: &'a AgentId) -> StoreFuture<'a, Vec<LedgerEntry>> {
        Box::pin(async move {
            let pool = self.pool().await?;
            let rows = sqlx::query(SELECT_ENTRIES)
                .bind(agent.as_str())
                .fetch_all(pool)
                .await
                .map_err(self.query_failed("read ledger entries", subject(Some(agent))))?;
            rows.iter().map(entry_from).collect()
        })
    }

    fn agents(&self) -> StoreFuture<'_, Vec<AgentId>> {
        Box::pin(async move {
            let pool = self.pool().await?;
            let rows = sqlx::query(SELECT_AGENTS)
                .fetch_all(pool)
                .await
                .map_err(self.query_failed("list ledger agents", subject(None)))?;
            // Sorted here, not by the database: PostgreSQL would order by
            // its collation, which need not be AgentId's byte order.
            let mut agents = rows
                .iter()
                .map(|row| read_agent(LEDGER, "agent", col(row, LEDGER, "agent")?))
                .collect::<Result<Vec<_>, _>>()?;
            agents.sort();
            Ok(agents)
        })
    }

    fn put_vouch(&self, row: VouchRow) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let row = normalize_vouch(row)?;
            let pool = self.pool().await?;
            sqlx::query(UPSERT_VOUCH)
                .bind(row.session.as_str())
                .bind(vouch_id(row.id)?)
                .bind(row.voucher.as_str())
                .bind(row.vouchee.as_str())
                .bind(row.voucher_sigma)
                .bind(row.pct)
                .bind(row.bond)
                .bind(micros(VOUCHES, "created_at_us", row.created_at)?)
                .bind(opt_micros(VOUCHES, "released_at_us", row.released_at)?)
                .bind(row.released_because.as_deref())
                .execute(pool)
                .await
                .map_err(self.query_failed(
                    "store a vouch",
                    format_args!("vouch {} in session {}", row.id, row.session),
                ))?;
            Ok(())
        })
    }

    fn vouches<'a>(&'a self, agent: Option<&'a AgentId>) -> StoreFuture<'a, Vec<VouchRow>> {
        Box::pin(async move {
            let pool = self.pool().await?;
            let rows = match agent {
                Some(a) => {
                    sqlx::query(VOUCHES_OF)
                        .bind(a.as_str())
                        .bind(a.as_str())
                        .fetch_all(pool)
                        .await
                }
                None => sqlx::query(ALL_VOUCHES).fetch_all(pool).await,
            }
            .map_err(self.query_failed("read vouches", subject(agent)))?;
            let mut vouches = rows.iter().map(vouch_from).collect::<Result<Vec<_>, _>>()?;
            crate::sort_vouches(&mut vouches);
            Ok(vouches)
        })
    }

    fn put_quarantine(&self, row: QuarantineRow) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let row = normalize_quarantine(row)?;
            let pool = self.pool().await?;
            sqlx::query(UPSERT_QUARANTINE)
                .bind(row.session.as_str())
                .bind(row.agent.as_str())
                .bind(row.reason.as_str())
                .bind(row.last_reason.as_str())
                .bind(micros(QUARANTINES, "started_at_us", row.started_at)?)
                .bind(opt_micros(QUARANTINES, "ends_at_us", row.ends_at)?)
                .bind(i64::from(row.escalations))
                .bind(opt_micros(QUARANTINES, "released_at_us", row.released_at)?)
                .bind(row.released_because.as_deref())
                .execute(pool)
                .await
                .map_err(self.query_failed(
                    "store a quarantine",
                    format_args!("agent {} in session {}", row.agent, row.session),
                ))?;
            Ok(())
        })
    }

    fn quarantines<'a>(
        &'a self,
        agent: Option<&'a AgentId>,
    ) -> StoreFuture<'a, Vec<QuarantineRow>> {
        Box::pin(async move {
            let pool = self.pool().await?;
            let rows = match agent {
                Some(a) => {
                    sqlx::query(QUARANTINES_OF)
                        .bind(a.as_str())
                        .fetch_all(pool)
                        .await
                }
                None => sqlx::query(ALL_QUARANTINES).fetch_all(pool).await,
            }
            .map_err(self.query_failed("read quarantines", subject(agent)))?;
            let mut records = rows
                .iter()
                .map(quarantine_from)
                .collect::<Result<Vec<_>, _>>()?;
            crate::sort_quarantines(&mut records);
            Ok(records)
        })
    }
}
