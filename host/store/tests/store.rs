//! Every `TrustStore` behaviour, written once and run against the memory
//! store, SQLite in a temporary directory and PostgreSQL (see `support`),
//! then what only the SQL stores do: persistence, sharing, concurrency,
//! corrupt rows and connection errors.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ahv_core::{AgentId, SessionId};
use ahv_store::{
    MemoryStore, QuarantineRow, SqlStore, StoreError, TrustStore, VouchRow, open, sqlite_url,
};
use ahv_trust::{Admission, EntryKind, LedgerEntry, QuarantineReason, Severity};
use support::PgDatabase;

/// No test waits longer than this for its store.
const TEST_BOUND: Duration = Duration::from_secs(120);
/// A plausible wall time, so times look like the hypervisor's.
const EPOCH_2024: Duration = Duration::from_secs(1_704_067_200);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn bounded<F: Future>(f: F) -> F::Output {
    runtime().block_on(async {
        tokio::time::timeout(TEST_BOUND, f)
            .await
            .unwrap_or_else(|_| panic!("the test did not finish within {TEST_BOUND:?}"))
    })
}

fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn session(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

fn sev(x: f64) -> Severity {
    Severity::new(x).unwrap()
}

fn at(secs: u64) -> Duration {
    EPOCH_2024 + Duration::from_secs(secs)
}

fn entry(who: &str, kind: EntryKind, secs: u64) -> LedgerEntry {
    LedgerEntry {
        agent: agent(who),
        kind,
        at: at(secs),
    }
}

fn vouch(s: &str, id: u64, voucher: &str, vouchee: &str, created: u64) -> VouchRow {
    VouchRow {
        session: session(s),
        id,
        voucher: agent(voucher),
        vouchee: agent(vouchee),
        voucher_sigma: 0.9,
        pct: 0.2,
        bond: 0.18,
        created_at: at(created),
        released_at: None,
        released_because: None,
    }
}

fn quarantine(s: &str, who: &str, started: u64) -> QuarantineRow {
    QuarantineRow {
        session: session(s),
        agent: agent(who),
        reason: QuarantineReason::RingBreach,
        last_reason: QuarantineReason::RingBreach,
        started_at: at(started),
        ends_at: Some(at(started + 300)),
        escalations: 0,
        released_at: None,
        released_because: None,
    }
}

// ---- the behaviours, once ----

async fn entries_come_back_per_agent_in_append_order(store: Arc<dyn TrustStore>) {
    let (x, y) = (agent("did:example:x"), agent("did:example:y"));
    assert!(store.agents().await.unwrap().is_empty());
    let written = [
        entry("did:example:x", EntryKind::Slash { severity: sev(0.8) }, 3),
        entry("did:example:y", EntryKind::Fault { severity: sev(0.1) }, 1),
        // Earlier time, later append: append order wins.
        entry("did:example:x", EntryKind::CleanSession, 1),
        entry(
            "did:example:x",
            EntryKind::Quarantine { severity: sev(0.0) },
            2,
        ),
        entry("did:example:x", EntryKind::Fault { severity: sev(1.0) }, 9),
    ];
    for e in &written {
        store.append_entry(e.clone()).await.unwrap();
    }
    let xs: Vec<LedgerEntry> = written.iter().filter(|e| e.agent == x).cloned().collect();
    assert_eq!(store.entries_for(&x).await.unwrap(), xs);
    assert_eq!(
        store.entries_for(&y).await.unwrap(),
        vec![written[1].clone()]
    );
    assert!(
        store
            .entries_for(&agent("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.agents().await.unwrap(), vec![x, y]);
}

/// Entries without a severity interleaved with entries with one, starting
/// with one without, one by one and in batches: every connection of the
/// pool sees both shapes (sqlx's Any driver once typed a bound NULL severity
/// as `float4` on PostgreSQL, and the next slash on that connection failed).
async fn entries_with_and_without_a_severity_interleave(store: Arc<dyn TrustStore>) {
    let x = agent("did:example:x");
    let mut written = Vec::new();
    for i in 0..20 {
        let pair = [
            entry("did:example:x", EntryKind::CleanSession, 2 * i),
            entry(
                "did:example:x",
                EntryKind::Slash { severity: sev(0.5) },
                2 * i + 1,
            ),
        ];
        if i % 2 == 0 {
            for e in &pair {
                store.append_entry(e.clone()).await.unwrap();
            }
        } else {
            store.append_entries(pair.to_vec()).await.unwrap();
        }
        written.extend(pair);
    }
    assert_eq!(store.entries_for(&x).await.unwrap(), written);
}

async fn agents_are_sorted_by_id_bytes(store: Arc<dyn TrustStore>) {
    // Upper case sorts before lower case in byte order but not in most
    // locales' collations.
    for who in ["b", "a", "B", "a.1", "A", "b"] {
        store
            .append_entry(entry(who, EntryKind::CleanSession, 0))
            .await
            .unwrap();
    }
    let agents: Vec<String> = store
        .agents()
        .await
        .unwrap()
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(agents, ["A", "B", "a", "a.1", "b"]);
}

async fn assessment_is_the_risk_of_the_stored_entries(store: Arc<dyn TrustStore>) {
    let bob = agent("bob");
    let fresh = store.assess(&bob).await.unwrap();
    assert_eq!((fresh.risk, fresh.admission), (0.0, Admission::Admit));
    for i in 0..2 {
        store
            .append_entry(entry("bob", EntryKind::Slash { severity: sev(1.0) }, i))
            .await
            .unwrap();
    }
    let two = store.assess(&bob).await.unwrap();
    assert!((two.risk - 0.3).abs() < 1e-9, "{}", two.risk);
    assert_eq!(two.admission, Admission::Probation);
    for i in 2..4 {
        store
            .append_entry(entry("bob", EntryKind::Slash { severity: sev(1.0) }, i))
            .await
            .unwrap();
    }
    assert_eq!(store.assess(&bob).await.unwrap().admission, Admission::Deny);
    // Another agent's record does not count against Bob, nor his against it.
    assert_eq!(store.assess(&agent("alice")).await.unwrap().risk, 0.0);
}

async fn times_are_kept_to_the_microsecond(store: Arc<dyn TrustStore>) {
    let fine = EPOCH_2024 + Duration::new(0, 123_456_789);
    let mut e = entry("t", EntryKind::CleanSession, 0);
    e.at = fine;
    store.append_entry(e).await.unwrap();
    let back = store.entries_for(&agent("t")).await.unwrap();
    assert_eq!(back[0].at, EPOCH_2024 + Duration::from_micros(123_456));
    let mut v = vouch("s", 1, "a", "b", 0);
    v.created_at = fine;
    v.released_at = Some(fine + Duration::from_nanos(999));
    store.put_vouch(v).await.unwrap();
    let v = &store.vouches(None).await.unwrap()[0];
    assert_eq!(v.created_at, EPOCH_2024 + Duration::from_micros(123_456));
    assert_eq!(
        v.released_at,
        Some(EPOCH_2024 + Duration::from_micros(123_457))
    );
}

async fn vouches_upsert_by_session_and_id(store: Arc<dyn TrustStore>) {
    let first = vouch("s1", 1, "alice", "bob", 10);
    store.put_vouch(first.clone()).await.unwrap();
    // The same id in another session is another vouch.
    let other_session = vouch("s2", 1, "carol", "bob", 5);
    store.put_vouch(other_session.clone()).await.unwrap();
    let released = VouchRow {
        released_at: Some(at(20)),
        released_because: Some("slash of bob".to_owned()),
        bond: 0.0,
        ..first.clone()
    };
    store.put_vouch(released.clone()).await.unwrap();
    assert_eq!(
        store.vouches(None).await.unwrap(),
        vec![other_session, released]
    );
}

async fn vouches_are_found_by_either_side_in_order(store: Arc<dyn TrustStore>) {
    let rows = [
        vouch("s2", 7, "alice", "bob", 30),
        vouch("s1", 2, "carol", "alice", 10),
        vouch("s1", 1, "dave", "erin", 10),
        vouch("s0", 9, "alice", "erin", 10),
        vouch("s1", 3, "bob", "carol", 20),
    ];
    for r in &rows {
        store.put_vouch(r.clone()).await.unwrap();
    }
    let ids = |v: Vec<VouchRow>| -> Vec<(String, u64)> {
        v.into_iter()
            .map(|r| (r.session.to_string(), r.id))
            .collect()
    };
    let all = ids(store.vouches(None).await.unwrap());
    let expect: Vec<(String, u64)> = [("s0", 9), ("s1", 1), ("s1", 2), ("s1", 3), ("s2", 7)]
        .iter()
        .map(|(s, i)| (s.to_string(), *i))
        .collect();
    assert_eq!(all, expect);
    let alice = ids(store.vouches(Some(&agent("alice"))).await.unwrap());
    assert_eq!(
        alice,
        [("s0", 9), ("s1", 2), ("s2", 7)].map(|(s, i)| (s.to_string(), i))
    );
    assert!(store.vouches(Some(&agent("zed"))).await.unwrap().is_empty());
}

async fn quarantines_upsert_by_session_agent_and_start(store: Arc<dyn TrustStore>) {
    let held = quarantine("s1", "bob", 100);
    store.put_quarantine(held.clone()).await.unwrap();
    let escalated = QuarantineRow {
        last_reason: QuarantineReason::CascadeSlash,
        ends_at: Some(at(700)),
        escalations: 1,
        ..held.clone()
    };
    store.put_quarantine(escalated.clone()).await.unwrap();
    // Held again later, until released by hand.
    let again = QuarantineRow {
        reason: QuarantineReason::Manual,
        last_reason: QuarantineReason::Manual,
        ends_at: None,
        ..quarantine("s1", "bob", 50)
    };
    store.put_quarantine(again.clone()).await.unwrap();
    let carol = quarantine("s2", "carol", 75);
    store.put_quarantine(carol.clone()).await.unwrap();
    assert_eq!(
        store.quarantines(Some(&agent("bob"))).await.unwrap(),
        vec![again.clone(), escalated.clone()]
    );
    let released = QuarantineRow {
        released_at: Some(at(60)),
        released_because: Some("operator".to_owned()),
        escalations: u32::MAX,
        ..again
    };
    store.put_quarantine(released.clone()).await.unwrap();
    assert_eq!(
        store.quarantines(None).await.unwrap(),
        vec![released, carol, escalated]
    );
    assert!(
        store
            .quarantines(Some(&agent("zed")))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn every_reason_and_kind_round_trips(store: Arc<dyn TrustStore>) {
    for (i, reason) in QuarantineReason::ALL.into_iter().enumerate() {
        let row = QuarantineRow {
            reason,
            last_reason: reason,
            ..quarantine("s", "did:web:example.com:agent-1_x", i as u64)
        };
        store.put_quarantine(row).await.unwrap();
    }
    let back: Vec<QuarantineReason> = store
        .quarantines(None)
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.reason)
        .collect();
    assert_eq!(back, QuarantineReason::ALL);
}

async fn unstorable_values_are_refused_and_nothing_is_written(store: Arc<dyn TrustStore>) {
    let mut e = entry("x", EntryKind::CleanSession, 0);
    e.at = Duration::MAX;
    let err = store.append_entry(e).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unstorable {
                table: "ledger_entries",
                column: "at_us",
                ..
            }
        ),
        "{err}"
    );
    let err = store
        .put_vouch(vouch("s", u64::MAX, "a", "b", 0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unstorable { column: "id", .. }),
        "{err}"
    );
    let nan = VouchRow {
        bond: f64::NAN,
        ..vouch("s", 1, "a", "b", 0)
    };
    let err = store.put_vouch(nan).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unstorable { column: "bond", .. }),
        "{err}"
    );
    let forever = QuarantineRow {
        ends_at: Some(Duration::MAX),
        ..quarantine("s", "x", 0)
    };
    let err = store.put_quarantine(forever).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unstorable {
                column: "ends_at_us",
                ..
            }
        ),
        "{err}"
    );
    assert!(store.agents().await.unwrap().is_empty());
    assert!(store.vouches(None).await.unwrap().is_empty());
    assert!(store.quarantines(None).await.unwrap().is_empty());
}

// ---- the runners ----

fn on_memory<F, Fut>(behaviour: F)
where
    F: FnOnce(Arc<dyn TrustStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    let store = Arc::new(MemoryStore::new());
    assert_eq!(store.backend(), "memory");
    bounded(behaviour(store));
}

fn on_url<F, Fut>(url: &str, backend: &str, behaviour: F)
where
    F: FnOnce(Arc<dyn TrustStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    bounded(async {
        let store = Arc::new(SqlStore::connect(url).await.unwrap());
        assert_eq!(store.backend(), backend);
        behaviour(store).await;
    });
}

fn on_sqlite<F, Fut>(behaviour: F)
where
    F: FnOnce(Arc<dyn TrustStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    on_url(&sqlite_url(dir.path()), "sqlite", behaviour);
}

fn on_postgres<F, Fut>(behaviour: F)
where
    F: FnOnce(Arc<dyn TrustStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = PgDatabase::create();
    on_url(&db.url, "postgres", behaviour);
}

macro_rules! on_every_backend {
    ($($behaviour:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $behaviour() { super::on_memory(super::$behaviour) } )*
        }
        mod sqlite {
            $( #[test] fn $behaviour() { super::on_sqlite(super::$behaviour) } )*
        }
        mod postgres {
            $( #[test] fn $behaviour() { super::on_postgres(super::$behaviour) } )*
        }
    };
}

on_every_backend!(
    entries_come_back_per_agent_in_append_order,
    entries_with_and_without_a_severity_interleave,
    agents_are_sorted_by_id_bytes,
    assessment_is_the_risk_of_the_stored_entries,
    times_are_kept_to_the_microsecond,
    vouches_upsert_by_session_and_id,
    vouches_are_found_by_either_side_in_order,
    quarantines_upsert_by_session_agent_and_start,
    every_reason_and_kind_round_trips,
    unstorable_values_are_refused_and_nothing_is_written,
);

// ---- what only the SQL stores do, once, run on SQLite and PostgreSQL ----

async fn records_survive_reopening(url: String) {
    let e = entry("bob", EntryKind::Slash { severity: sev(0.5) }, 1);
    let v = vouch("s", 4, "alice", "bob", 2);
    let q = quarantine("s", "bob", 3);
    {
        let store = SqlStore::connect(&url).await.unwrap();
        store.append_entry(e.clone()).await.unwrap();
        store.put_vouch(v.clone()).await.unwrap();
        store.put_quarantine(q.clone()).await.unwrap();
    }
    let store = ahv_store::open(&url).unwrap();
    assert_eq!(store.entries_for(&agent("bob")).await.unwrap(), vec![e]);
    assert_eq!(store.vouches(None).await.unwrap(), vec![v]);
    assert_eq!(store.quarantines(None).await.unwrap(), vec![q]);
}

async fn two_stores_see_each_others_records(url: String) {
    let (a, b) = (
        SqlStore::connect(&url).await.unwrap(),
        SqlStore::connect(&url).await.unwrap(),
    );
    a.append_entry(entry("bob", EntryKind::CleanSession, 1))
        .await
        .unwrap();
    assert_eq!(b.entries_for(&agent("bob")).await.unwrap().len(), 1);
    b.put_vouch(vouch("s", 1, "alice", "bob", 1)).await.unwrap();
    assert_eq!(a.vouches(Some(&agent("bob"))).await.unwrap().len(), 1);
    b.put_quarantine(quarantine("s", "bob", 1)).await.unwrap();
    assert_eq!(a.quarantines(None).await.unwrap().len(), 1);
}

async fn concurrent_appends_from_two_pools_are_all_kept(url: String) {
    const EACH: u64 = 40;
    let (a, b) = (
        Arc::new(SqlStore::connect(&url).await.unwrap()),
        Arc::new(SqlStore::connect(&url).await.unwrap()),
    );
    let writer = |store: Arc<SqlStore>, who: &'static str| {
        tokio::spawn(async move {
            for i in 0..EACH {
                let kind = EntryKind::Fault { severity: sev(0.1) };
                // Both writers append for "shared"; each also for itself.
                store.append_entry(entry("shared", kind, i)).await.unwrap();
                store.append_entry(entry(who, kind, i)).await.unwrap();
            }
        })
    };
    let (ra, rb) = tokio::join!(writer(a.clone(), "a"), writer(b.clone(), "b"));
    ra.unwrap();
    rb.unwrap();
    let shared = a.entries_for(&agent("shared")).await.unwrap();
    assert_eq!(shared.len() as u64, 2 * EACH);
    for who in ["a", "b"] {
        let own = b.entries_for(&agent(who)).await.unwrap();
        let times: Vec<Duration> = own.iter().map(|e| e.at).collect();
        let expect: Vec<Duration> = (0..EACH).map(at).collect();
        assert_eq!(times, expect, "{who}'s entries in its append order");
    }
}

async fn stores_opening_a_new_database_together_both_migrate(url: String) {
    let (a, b) = tokio::join!(SqlStore::connect(&url), SqlStore::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    a.append_entry(entry("x", EntryKind::CleanSession, 0))
        .await
        .unwrap();
    assert_eq!(b.agents().await.unwrap(), vec![agent("x")]);
}

async fn corrupt_rows_are_typed_errors(url: String) {
    let store = SqlStore::connect(&url).await.unwrap();
    // Written behind the store's back, as a hand edit or another program would.
    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    let bob = agent("bob");
    let cases: [(&str, &str, &str); 9] = [
        (
            "INSERT INTO ledger_entries (agent, kind, severity, at_us) VALUES ('-bob', 'slash', 0.5, 0)",
            "ledger_entries",
            "agent",
        ),
        (
            "INSERT INTO ledger_entries (agent, kind, severity, at_us) VALUES ('bob', 'bribe', 0.5, 0)",
            "ledger_entries",
            "kind",
        ),
        (
            "INSERT INTO ledger_entries (agent, kind, severity, at_us) VALUES ('bob', 'fault', 1.5, 0)",
            "ledger_entries",
            "severity",
        ),
        (
            "INSERT INTO ledger_entries (agent, kind, severity, at_us) VALUES ('bob', 'slash', NULL, 0)",
            "ledger_entries",
            "severity",
        ),
        (
            "INSERT INTO ledger_entries (agent, kind, severity, at_us) VALUES ('bob', 'clean_session', NULL, -5)",
            "ledger_entries",
            "at_us",
        ),
        (
            "INSERT INTO vouches (session, id, voucher, vouchee, voucher_sigma, pct, bond, created_at_us) \
             VALUES ('s', -1, 'alice', 'bob', 0.9, 0.2, 0.18, 0)",
            "vouches",
            "id",
        ),
        (
            "INSERT INTO vouches (session, id, voucher, vouchee, voucher_sigma, pct, bond, created_at_us) \
             VALUES ('s s', 1, 'alice', 'bob', 0.9, 0.2, 0.18, 0)",
            "vouches",
            "session",
        ),
        (
            "INSERT INTO quarantines (session, agent, reason, last_reason, started_at_us, escalations) \
             VALUES ('s', 'bob', 'nap', 'manual', 0, 0)",
            "quarantines",
            "reason",
        ),
        (
            "INSERT INTO quarantines (session, agent, reason, last_reason, started_at_us, escalations) \
             VALUES ('s', 'bob', 'manual', 'manual', 0, -1)",
            "quarantines",
            "escalations",
        ),
    ];
    for (insert, table, column) in cases {
        sqlx::query(insert).execute(&raw).await.unwrap();
        let err = match table {
            "ledger_entries" if column == "agent" => store.agents().await.unwrap_err(),
            "ledger_entries" => store.entries_for(&bob).await.unwrap_err(),
            "vouches" => store.vouches(Some(&bob)).await.unwrap_err(),
            _ => store.quarantines(None).await.unwrap_err(),
        };
        match &err {
            StoreError::CorruptRow {
                table: t,
                column: c,
                ..
            } => assert_eq!((*t, *c), (table, column), "{insert}: {err}"),
            other => panic!("{insert}: expected a corrupt row, got {other}"),
        }
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&raw)
            .await
            .unwrap();
    }
    raw.close().await;
}

macro_rules! on_sql_backends {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite_only_sql {
            $( #[test] fn $behaviour() {
                let dir = tempfile::tempdir().unwrap();
                super::bounded(super::$behaviour(ahv_store::sqlite_url(dir.path())));
            } )*
        }
        mod postgres_only_sql {
            $( #[test] fn $behaviour() {
                let db = super::PgDatabase::create();
                super::bounded(super::$behaviour(db.url.clone()));
            } )*
        }
    };
}

on_sql_backends!(
    records_survive_reopening,
    two_stores_see_each_others_records,
    concurrent_appends_from_two_pools_are_all_kept,
    stores_opening_a_new_database_together_both_migrate,
    corrupt_rows_are_typed_errors,
);

// ---- URLs and connections ----

#[test]
fn open_picks_the_backend_by_url_without_io() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(open("memory").unwrap().backend(), "memory");
    let url = sqlite_url(dir.path());
    assert_eq!(open(&url).unwrap().backend(), "sqlite");
    assert_eq!(open("sqlite:relative.db").unwrap().backend(), "sqlite");
    let pg = open("postgresql://u:pw@localhost/db").unwrap();
    assert_eq!(pg.backend(), "postgres");
    assert!(
        !dir.path().join(ahv_store::SQLITE_FILE).exists(),
        "opening is lazy: no file until the first operation"
    );
}

#[test]
fn a_lazy_sqlite_store_creates_its_file_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::connect_lazy(&sqlite_url(dir.path())).unwrap();
    bounded(async {
        assert!(store.agents().await.unwrap().is_empty());
    });
    assert!(dir.path().join(ahv_store::SQLITE_FILE).is_file());
}

#[test]
fn bad_urls_are_typed_errors_naming_the_url_without_its_password() {
    let err = open("mysql://root:hunter2@db/ahv").err().unwrap();
    assert!(
        matches!(&err, StoreError::UnsupportedScheme { scheme, .. } if scheme == "mysql"),
        "{err}"
    );
    let err = open("postgres://ahv:hunter2@db:notaport/ahv")
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::BadUrl { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("postgres://ahv:***@db:notaport/ahv"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    let err = open("/var/lib/ahv/liability.sqlite").err().unwrap();
    assert!(matches!(err, StoreError::BadUrl { .. }), "{err}");
    let err = SqlStore::connect_lazy("memory").unwrap_err();
    assert!(matches!(err, StoreError::BadUrl { .. }), "{err}");
}

#[test]
fn an_unreachable_database_is_a_connect_error_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    // A socket directory with no server in it: refused at once.
    let url = format!(
        "postgres://ahv:hunter2@localhost/ahv?host={}",
        dir.path().display()
    );
    let store = SqlStore::connect_lazy(&url).unwrap();
    assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
    let err = bounded(store.agents()).unwrap_err();
    match &err {
        StoreError::Connect { backend, url, .. } => {
            assert_eq!(*backend, "postgres");
            assert!(url.contains("ahv:***@localhost"), "{url}");
        }
        other => panic!("expected a connect error, got {other}"),
    }
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let missing = format!("sqlite://{}/no/such/dir/x.sqlite", dir.path().display());
    let err = bounded(SqlStore::connect(&missing)).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Connect {
                backend: "sqlite",
                ..
            }
        ),
        "{err}"
    );
}
