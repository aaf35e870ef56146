//! Joint liability at run time: the rules of `ahv-trust` applied to live
//! sessions, and the ledger kept in a database (`ahv-store`).
//!
//! - **Vouches** change the vouchee's effective score σ_eff, and with it the
//!   ring its *next* host call is judged at: a vouch can lift an agent from
//!   ring 3 to ring 2, a release or a slash takes it back (the gate reads
//!   the participant's [`Standing`](ahv_core::standing::Standing)). Each
//!   agent has a *ceiling* set when it joined (ring 3 on probation, a child's
//!   assigned ring, ring 2 otherwise) and lowered by breaches and operator
//!   demotions: a vouch never lifts an agent above it.
//! - **Slashes** cut σ by `ahv_trust::slash` (vouchee to 0, vouchers by ω,
//!   cascade of two hops), write the new scores into the session, release
//!   the bonds, quarantine the agents the cascade reached, and re-judge
//!   every agent touched.
//! - **Quarantine** records escalate (`ahv_trust::Quarantine`) and the
//!   gate refuses a quarantined agent's calls but `context` and `log`.
//! - **The ledger** is fed by slashes, quarantines, ring breaches,
//!   rate-limit floods, fault attributions and clean sessions, and is
//!   consulted at every join: deny, probation (ring 3 at most) or admit.
//! - **Escalated sagas** are attributed (Shapley by default) and the
//!   agents with at least [`LiabilityPolicy::slash_share`] of the blame are
//!   slashed; a failed saga's blame goes to the ledger as faults.
//!
//! Store writes go, in order, to one thread that owns the store and its own
//! runtime, so that a gate callback never waits for a database and a
//! blocking wait (at shutdown) can never deadlock the caller's runtime.
//! [`Hypervisor::flush_liability`] waits until every write so far is stored.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError, channel, sync_channel,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ahv_core::event::EventPayload;
use ahv_core::{AgentId, Clock, Ring, SessionId, ring_for_score};
use ahv_governance::session::SessionError;
use ahv_saga::{SagaId, SagaState};
use ahv_store::{QuarantineRow, StoreError, TrustStore, VouchRow};
use ahv_trust::{
    Admission, Assessment, AttributionPolicy, ChangeCause, EntryKind, LedgerEntry, Quarantine,
    QuarantineReason, QuarantineRecord, Scores, Severity, SlashReport, Vouch, VouchBook, VouchId,
};

use crate::{Hypervisor, HypervisorError, SessionEntry, lock};

/// The liability settings of a hypervisor.
#[derive(Debug, Clone)]
pub struct LiabilityPolicy {
    /// ω: how much of a voucher's bond counts for the vouchee's effective
    /// score, and how much of a voucher's σ a slash of its vouchee takes.
    pub omega: f64,
    /// The share of its σ a voucher bonds when none is given.
    pub vouch_pct: f64,
    /// After an escalated saga, agents with at least this share of the
    /// blame are slashed (with the share as severity).
    pub slash_share: f64,
    /// How a failed or escalated saga's blame is split.
    pub attribution: AttributionPolicy,
    /// Refused calls in one streak that count as a rate-limit flood (one
    /// ledger fault per streak).
    pub flood_refusals: u64,
    /// How long admission trusts what it last read of an agent's ledger
    /// before reading the store again (hypervisor clock). This process's
    /// own entries count at once whatever this is; entries other processes
    /// make (a shared PostgreSQL) are seen at most this late. Zero: read
    /// the store at every join.
    pub ledger_refresh: Duration,
}

impl Default for LiabilityPolicy {
    fn default() -> Self {
        LiabilityPolicy {
            omega: 0.5,
            vouch_pct: ahv_trust::DEFAULT_BOND_PCT,
            slash_share: 0.5,
            attribution: AttributionPolicy::default(),
            flood_refusals: 100,
            ledger_refresh: Duration::from_secs(1),
        }
    }
}

impl LiabilityPolicy {
    /// Checks every number is in range.
    ///
    /// # Errors
    /// [`HypervisorError::Security`] naming the field and the value.
    pub fn validate(&self) -> Result<(), HypervisorError> {
        for (name, v) in [("omega", self.omega), ("slash_share", self.slash_share)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(HypervisorError::Security(format!(
                    "liability policy: {name} must be in [0, 1], got {v}"
                )));
            }
        }
        if !(self.vouch_pct > 0.0 && self.vouch_pct <= 1.0) {
            return Err(HypervisorError::Security(format!(
                "liability policy: vouch_pct must be in (0, 1], got {}",
                self.vouch_pct
            )));
        }
        if self.flood_refusals == 0 {
            return Err(HypervisorError::Security(
                "liability policy: flood_refusals must be at least 1".into(),
            ));
        }
        if let AttributionPolicy::Shapley(p) = &self.attribution {
            p.validate()?;
        }
        Ok(())
    }
}

/// What a vouch did.
#[derive(Debug, Clone, PartialEq)]
pub struct VouchReceipt {
    /// The vouch's id in its session.
    pub vouch: VouchId,
    /// The bonded amount.
    pub bond: f64,
    /// The vouchee's effective score now.
    pub effective: f64,
    /// The vouchee's base ring now.
    pub ring: Ring,
}

/// What a slash did: the rules' report and where each touched agent's base
/// ring is now.
#[derive(Debug, Clone, PartialEq)]
pub struct SlashOutcome {
    /// Every σ change, released bond and cascaded agent.
    pub report: SlashReport,
    /// Each touched agent still in the session, with its base ring now.
    pub rings: Vec<(AgentId, Ring)>,
}

/// A session's liability records.
pub(crate) struct SessionLiability {
    book: VouchBook,
    quarantine: Quarantine,
    /// Caps: the most privileged ring an agent may hold by its score or ask
    /// for by elevation (probation, a child's assigned ring, a breach's or an
    /// operator's demotion). No entry: no cap (a score earns ring 2 at most).
    ceilings: HashMap<AgentId, Ring>,
    /// Agents killed in this session: they may not join it again.
    killed: HashSet<AgentId>,
    /// Wall time each active vouch was made (for its stored row).
    vouched_at: HashMap<VouchId, Duration>,
    /// Wall time each live quarantine record started (its stored row's key).
    quarantined_at: HashMap<AgentId, Duration>,
    /// Agents with something against them in this session (no clean-session credit).
    marked: HashSet<AgentId>,
    /// Agents whose current rate-limit streak was already booked as a flood.
    flooded: HashSet<AgentId>,
    /// Whether ending this session credits its participants' ledgers.
    credits: bool,
}

impl SessionLiability {
    /// Whether `agent` has something against it in this session.
    #[cfg(test)]
    pub(crate) fn is_marked(&self, agent: &AgentId) -> bool {
        self.marked.contains(agent)
    }

    /// Bars `agent` from joining the session again: a kill's first step,
    /// taken before its children are looked up, so that a child joins only
    /// while its parent is not being killed (`join_as`) or is found by the
    /// kill as a participant.
    pub(crate) fn bar(&mut self, agent: &AgentId) {
        self.killed.insert(agent.clone());
    }

    /// Whether `agent` was killed in this session, or is being killed.
    pub(crate) fn is_barred(&self, agent: &AgentId) -> bool {
        self.killed.contains(agent)
    }

    pub(crate) fn new(clock: Arc<dyn Clock>) -> SessionLiability {
        SessionLiability {
            book: VouchBook::new(),
            quarantine: Quarantine::new(clock),
            ceilings: HashMap::new(),
            killed: HashSet::new(),
            vouched_at: HashMap::new(),
            quarantined_at: HashMap::new(),
            marked: HashSet::new(),
            flooded: HashSet::new(),
            credits: true,
        }
    }
}

/// Wall time since the Unix epoch: ledger rows outlive the process, so they
/// are not stamped with the (monotonic, per-process) hypervisor clock.
fn wall_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// A severity from a number the host computed (clamped; NaN counts as the
/// worst), so never refused.
fn severity(v: f64) -> Severity {
    let v = if v.is_nan() { 1.0 } else { v.clamp(0.0, 1.0) };
    match Severity::new(v) {
        Ok(s) => s,
        Err(_) => Severity::FULL,
    }
}

fn method_name(m: &ahv_trust::AttributionMethod) -> &'static str {
    match m {
        ahv_trust::AttributionMethod::NoHarm => "no_harm",
        ahv_trust::AttributionMethod::Exact => "exact",
        ahv_trust::AttributionMethod::Sampled { .. } => "sampled",
        ahv_trust::AttributionMethod::Heuristic => "heuristic",
    }
}

/// How much a quarantine weighs in the ledger, by its reason.
pub fn quarantine_severity(reason: QuarantineReason) -> f64 {
    match reason {
        QuarantineReason::Manual => 0.5,
        QuarantineReason::BehavioralDrift => 0.5,
        QuarantineReason::RateLimitExceeded => 0.4,
        QuarantineReason::CascadeSlash => 0.6,
        QuarantineReason::RingBreach => 0.7,
        QuarantineReason::LiabilityViolation => 0.8,
    }
}

/// How much a ring breach weighs in the ledger (as a fault), by the breach
/// detector's severity.
pub(crate) fn breach_severity(name: &str) -> f64 {
    match name {
        "low" => 0.25,
        "medium" => 0.5,
        "high" => 0.75,
        _ => 1.0,
    }
}

// ---------------------------------------------------------------------------
// The store thread.

/// One write, in the order it was made.
enum Write {
    Entry(LedgerEntry),
    // Boxed: rare, and the queue holds room for `QUEUE` jobs of the
    // largest variant from the start (136 bytes a job unboxed, 9.4 MB).
    Vouch(Box<VouchRow>),
    Quarantine(Box<QuarantineRow>),
}

impl Write {
    /// What it records, for the message that reports it lost.
    fn describe(&self) -> String {
        match self {
            Write::Entry(e) => format!("ledger entry {:?} of {}", e.kind, e.agent),
            Write::Vouch(v) => format!("vouch {} of session {}", v.id, v.session),
            Write::Quarantine(q) => format!("quarantine of {} in {}", q.agent, q.session),
        }
    }
}

// The queue allocates `QUEUE` slots of a job up front: keep a job small
// (a ledger entry is the largest payload; box anything bigger).
const _: () = assert!(std::mem::size_of::<Job>() <= 48);

enum Job {
    Write(Write),
    Entries(
        AgentId,
        tokio::sync::oneshot::Sender<Result<Vec<LedgerEntry>, StoreError>>,
    ),
    /// Answers with the first write error since the last flush.
    Flush(FlushReply),
}

/// Why the store thread did not take a job, or a drain did not hear back.
#[derive(Debug, Clone, Copy)]
enum DrainError {
    /// No room in its queue, or no answer, before the deadline: it is far
    /// behind or hung.
    TimedOut,
    /// It ended without answering: it died.
    Ended,
}

/// Where a flush's answer goes: a task awaiting it, or a thread blocked on
/// it (without a runtime's help, and with a bound on the wait).
enum FlushReply {
    Task(tokio::sync::oneshot::Sender<()>),
    Thread(SyncSender<()>),
}

impl FlushReply {
    /// Tells the caller everything queued before its flush is handled; a
    /// caller that stopped waiting is no error.
    fn done(self) {
        let _ = match self {
            FlushReply::Task(tx) => tx.send(()),
            FlushReply::Thread(tx) => tx.send(()).map_err(drop),
        };
    }
}

/// Where the store comes from.
#[derive(Clone)]
pub(crate) enum StoreSource {
    /// A URL for `ahv_store::open` (`memory`, `sqlite://…`, `postgres://…`).
    Url(String),
    /// A store the embedder built.
    Store(Arc<dyn TrustStore>),
}

/// The store, owned by one thread with its own runtime; writes are queued
/// in order, reads and flushes answer on a channel of their own.
pub(crate) struct Records {
    /// A write lost after its retries; admission refuses joins until a
    /// flush ([`Hypervisor::flush_liability`], `shutdown`) reports it.
    loss: Arc<Loss>,
    tx: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    backend: &'static str,
    url: String,
    /// [`SEND_WAIT`] (shorter in tests).
    send_wait: Duration,
    /// Set when a job found the queue full for its whole wait; cleared by
    /// the next that finds room. While set, jobs do not wait for room: a
    /// reader or writer that waits does so holding the liability cache's
    /// lock, so each wait would hold up everyone else's records in turn.
    stalled: AtomicBool,
}

/// The first write the store thread lost since the last report of one.
/// Kept here, not in the thread's answer to a flush, so that an answer
/// nobody receives (its caller stopped waiting) cannot take it along.
#[derive(Default)]
struct Loss {
    /// Set with `first`; read by admission without the lock.
    lost: AtomicBool,
    /// The first unreported loss, and how many there were since.
    first: Mutex<(Option<String>, u64)>,
}

impl Loss {
    /// Keeps `message` unless an earlier loss is still unreported, and
    /// counts it either way.
    fn record(&self, message: String) {
        let mut first = lock(&self.first);
        first.0.get_or_insert(message);
        first.1 += 1;
        self.lost.store(true, Ordering::SeqCst);
    }

    /// The unreported loss, if any, now reported (with how many more there
    /// were since): joins are admitted again.
    fn report(&self) -> Option<String> {
        let mut first = lock(&self.first);
        let taken = first.0.take().map(|m| match first.1 {
            0 | 1 => m,
            n => format!("{m} (and {} more record(s) lost since)", n - 1),
        });
        first.1 = 0;
        if taken.is_some() {
            self.lost.store(false, Ordering::SeqCst);
        }
        taken
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

/// How long a build waits for the store thread to open its store.
const OPEN_WAIT: Duration = Duration::from_secs(30);
/// How long shutdown waits for the queued writes.
const FLUSH_WAIT: Duration = Duration::from_secs(60);
/// Most jobs queued for the store thread: past that, whoever records waits
/// for the store (backpressure, like the audit log's; at most
/// [`SEND_WAIT`]), so a flood of sessions cannot grow the queue without
/// bound.
const QUEUE: usize = 65_536;
/// Most ledger entries the store thread writes in one transaction.
const BATCH: usize = 4096;
/// How long a read or a flush waits for the store thread.
const STORE_WAIT: Duration = Duration::from_secs(60);
/// How long a write, a read or a flush waits for room in a full queue (a
/// store far behind or hung: 65,536 jobs wait) before it gives up: a write
/// is then counted lost, which refuses joins until a flush reports it, and
/// a read or a flush fails. Once one has given up, the next do not wait
/// until one finds room again ([`Records::stalled`]): the store is known to
/// be taking nothing.
const SEND_WAIT: Duration = Duration::from_secs(5);

impl Records {
    /// Starts the store thread and opens the store in it.
    pub(crate) fn start(source: StoreSource) -> Result<Records, HypervisorError> {
        let url = match &source {
            StoreSource::Url(u) => ahv_store::redact(u),
            StoreSource::Store(s) => s.backend().to_string(),
        };
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let loss = Arc::new(Loss::default());
        let (opened_tx, opened_rx) = channel::<Result<&'static str, String>>();
        let thread = std::thread::Builder::new()
            .name("ahv-liability-store".into())
            .spawn({
                let loss = loss.clone();
                move || store_thread(source, loss, rx, opened_tx)
            })
            .map_err(|e| HypervisorError::Setup(format!("liability store thread: {e}")))?;
        let backend = match opened_rx.recv_timeout(OPEN_WAIT) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return Err(HypervisorError::Setup(format!(
                    "liability store {url}: {e}"
                )));
            }
            Err(_) => {
                return Err(HypervisorError::Setup(format!(
                    "liability store {url}: not opened within {OPEN_WAIT:?}"
                )));
            }
        };
        Ok(Records {
            loss,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            backend,
            url,
            send_wait: SEND_WAIT,
            stalled: AtomicBool::new(false),
        })
    }

    /// Queues `job`, waiting at most `send_wait` for room in a full queue
    /// (not at all while [`Records::stalled`]); gives it back with why it
    /// was not queued.
    fn send(&self, job: Job) -> Result<(), (Job, HypervisorError)> {
        let wait = self.wait();
        let sent = self.send_by(job, std::time::Instant::now() + wait);
        self.sent(sent, wait)
    }

    /// [`Records::send`] for a task: it waits for room without blocking
    /// its thread.
    async fn send_async(&self, mut job: Job) -> Result<(), (Job, HypervisorError)> {
        let wait = self.wait();
        let deadline = std::time::Instant::now() + wait;
        loop {
            match self.try_queue(job) {
                Err((back, DrainError::TimedOut)) if std::time::Instant::now() < deadline => {
                    job = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                sent => return self.sent(sent, wait),
            }
        }
    }

    /// How long the next job may wait for room.
    fn wait(&self) -> Duration {
        if self.stalled.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            self.send_wait
        }
    }

    /// What [`Records::send_by`] did, as [`Records::send`] answers.
    fn sent(
        &self,
        sent: Result<Option<Job>, (Job, DrainError)>,
        wait: Duration,
    ) -> Result<(), (Job, HypervisorError)> {
        let stalled = matches!(sent, Err((_, DrainError::TimedOut)));
        // Written only when it changes: every ledger write passes here.
        if self.stalled.load(Ordering::Relaxed) != stalled {
            self.stalled.store(stalled, Ordering::Relaxed);
        }
        match sent {
            Ok(None) => Ok(()),
            Ok(Some(job)) => Err((job, self.closed())),
            Err((job, DrainError::TimedOut)) => {
                let waited = if wait.is_zero() {
                    format!(
                        "an earlier job found it full for {:?}, so nothing waits for room now",
                        self.send_wait
                    )
                } else {
                    format!("it took none within {wait:?}")
                };
                Err((
                    job,
                    HypervisorError::Ledger(format!(
                        "the liability store {} has {QUEUE} jobs waiting and {waited} (it is \
                         far behind or hung)",
                        self.url
                    )),
                ))
            }
            Err((job, e @ DrainError::Ended)) => Err((job, self.drain_error(e))),
        }
    }

    /// Queues a write; one that cannot be queued is lost, and kept for the
    /// next flush to report (joins are refused until then).
    fn write(&self, w: Write) {
        if let Err((job, e)) = self.send(Job::Write(w)) {
            let what = match &job {
                Job::Write(w) => w.describe(),
                _ => "record".into(),
            };
            tracing::error!(error = %e, "the {what} was not stored");
            self.loss.record(format!("the {what} was not stored: {e}"));
        }
    }

    /// Waits until every write queued so far is stored; the first write
    /// lost since the last report of one, if any (reported now).
    pub(crate) async fn flush(&self) -> Result<(), HypervisorError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err((_, e)) = self.send_async(Job::Flush(FlushReply::Task(tx))).await {
            return Err(e);
        }
        match tokio::time::timeout(STORE_WAIT, rx).await {
            Ok(Ok(())) => self.reported(),
            Ok(Err(_)) => Err(self.closed()),
            Err(_) => Err(self.timed_out("flushing")),
        }
    }

    /// The unreported lost write as an error, now reported; `Ok` if none.
    fn reported(&self) -> Result<(), HypervisorError> {
        self.loss
            .report()
            .map_or(Ok(()), |e| Err(HypervisorError::Ledger(e)))
    }

    fn timed_out(&self, what: &str) -> HypervisorError {
        HypervisorError::Ledger(format!(
            "{what}: the liability store {} did not answer within {STORE_WAIT:?}",
            self.url
        ))
    }

    fn closed(&self) -> HypervisorError {
        HypervisorError::Ledger(format!("the liability store {} is closed", self.url))
    }

    /// Waits (blocking, bounded) until everything queued is stored; with
    /// `stop`, the thread then ends.
    pub(crate) fn drain(&self, stop: bool) -> Result<(), HypervisorError> {
        let deadline = std::time::Instant::now() + FLUSH_WAIT;
        // A std channel: this may run inside a task (tokio's blocking
        // receive would panic there), and it wakes when the answer comes
        // rather than at the next poll of a sleeping loop (a poll every
        // millisecond made every shutdown take at least one).
        let (tx, rx) = sync_channel(1);
        let sent = self.send_by(Job::Flush(FlushReply::Thread(tx)), deadline);
        if stop {
            // Closing the channel ends the thread once the queue is drained.
            lock(&self.tx).take();
        }
        let result = match sent {
            // Stopped by an earlier drain: nothing is queued.
            Ok(Some(_)) => Ok(()),
            // No room until the deadline: the store is hung, and joining
            // its thread would wait for good.
            Err((_, e @ DrainError::TimedOut)) => return Err(self.drain_error(e)),
            Err((_, e @ DrainError::Ended)) => Err(self.drain_error(e)),
            Ok(None) => {
                match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                {
                    Ok(()) => self.reported(),
                    // It ends only once every sender is gone, after
                    // answering a flush queued before: it died.
                    Err(RecvTimeoutError::Disconnected) => Err(self.drain_error(DrainError::Ended)),
                    Err(RecvTimeoutError::Timeout) => {
                        return Err(self.drain_error(DrainError::TimedOut));
                    }
                }
            }
        };
        if stop && let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
        result
    }

    /// Queues `job`, waiting for room in a full queue until `deadline`:
    /// `None` once queued, the job back if the store was stopped by an
    /// earlier drain, or the job back with why it was not queued.
    fn send_by(
        &self,
        mut job: Job,
        deadline: std::time::Instant,
    ) -> Result<Option<Job>, (Job, DrainError)> {
        loop {
            match self.try_queue(job) {
                // Only while 65,536 jobs wait for a store that is slow or
                // hung.
                Err((back, DrainError::TimedOut)) if std::time::Instant::now() < deadline => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                queued => return queued,
            }
        }
    }

    /// One attempt to queue `job`, answered as [`Records::send_by`]
    /// answers, a full queue as [`DrainError::TimedOut`].
    fn try_queue(&self, job: Job) -> Result<Option<Job>, (Job, DrainError)> {
        // Cloned out of the lock: a full queue holds up only this sender.
        let Some(tx) = lock(&self.tx).clone() else {
            return Ok(Some(job));
        };
        match tx.try_send(job) {
            Ok(()) => Ok(None),
            Err(TrySendError::Disconnected(back)) => Err((back, DrainError::Ended)),
            Err(TrySendError::Full(back)) => Err((back, DrainError::TimedOut)),
        }
    }

    fn drain_error(&self, e: DrainError) -> HypervisorError {
        HypervisorError::Ledger(match e {
            DrainError::TimedOut => format!(
                "the liability store {} did not store its queued records within {FLUSH_WAIT:?}",
                self.url
            ),
            DrainError::Ended => format!(
                "the liability store {}'s thread ended (it panicked): records queued for it were not stored",
                self.url
            ),
        })
    }

    /// The store's backend (`memory`, `sqlite`, `postgres`).
    pub(crate) fn backend(&self) -> &'static str {
        self.backend
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        if let Err(e) = self.drain(true) {
            tracing::error!(error = %e, "closing the liability store");
        }
    }
}

fn store_thread(
    source: StoreSource,
    loss: Arc<Loss>,
    rx: Receiver<Job>,
    opened: Sender<Result<&'static str, String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = opened.send(Err(format!("its runtime: {e}")));
            return;
        }
    };
    let store = {
        let _in = rt.enter();
        match source {
            StoreSource::Url(u) => ahv_store::open(&u),
            StoreSource::Store(s) => Ok(s),
        }
    };
    let store = match store {
        Ok(s) => {
            let _ = opened.send(Ok(s.backend()));
            s
        }
        Err(e) => {
            let _ = opened.send(Err(e.to_string()));
            return;
        }
    };
    // A SQL store connects and migrates on its first operation: do it now,
    // in the background, rather than in the first join's ledger read (a new
    // SQLite file's schema takes a dozen syncs: 8-450 ms measured). A
    // failure is left for that first operation to retry and report.
    if let Ok(nobody) = AgentId::new("did:ahv:store-warm-up")
        && let Err(e) = rt.block_on(store.entries_for(&nobody))
    {
        tracing::debug!(error = %e, "liability store warm-up; the first operation retries");
    }
    let mut entries: Vec<LedgerEntry> = Vec::new();
    while let Ok(job) = rx.recv() {
        // Whatever else is queued goes with it: consecutive ledger entries
        // are stored in one transaction (one sync), in order.
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Write(Write::Entry(e)) => entries.push(e),
                other => {
                    store_entries(&rt, &store, &mut entries, &loss);
                    match other {
                        Job::Write(w) => {
                            let what = w.describe();
                            let result = match w {
                                // Gathered above.
                                Write::Entry(_) => Ok(()),
                                Write::Vouch(v) => with_retries(&rt, || {
                                    let (store, v) = (store.clone(), VouchRow::clone(&v));
                                    Box::pin(async move { store.put_vouch(v).await })
                                }),
                                Write::Quarantine(q) => with_retries(&rt, || {
                                    let (store, q) = (store.clone(), QuarantineRow::clone(&q));
                                    Box::pin(async move { store.put_quarantine(q).await })
                                }),
                            };
                            if let Err(e) = result {
                                failed(&loss, what, e);
                            }
                        }
                        Job::Entries(agent, reply) => {
                            let _ = reply.send(rt.block_on(store.entries_for(&agent)));
                        }
                        // Everything before it is stored (or lost, in
                        // `loss`).
                        Job::Flush(reply) => reply.done(),
                    }
                }
            }
            if entries.len() >= BATCH {
                store_entries(&rt, &store, &mut entries, &loss);
            }
            next = rx.try_recv().ok();
        }
        store_entries(&rt, &store, &mut entries, &loss);
    }
}

/// Logs a write the store refused and keeps it for the next flush to
/// report (unless an earlier loss is still unreported).
fn failed(loss: &Loss, what: String, e: StoreError) {
    tracing::error!(error = %e, "storing the {what}: lost after {} attempts", RETRIES.len() + 1);
    loss.record(format!("storing the {what}: {e}"));
}

/// Pauses before the retries of a write the store refused (a restarting
/// database, a busy SQLite file).
const RETRIES: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_secs(1),
];

/// Runs a store write, retrying after the [`RETRIES`] pauses.
fn with_retries(
    rt: &tokio::runtime::Runtime,
    mut attempt: impl FnMut() -> ahv_store::StoreFuture<'static, ()>,
) -> Result<(), StoreError> {
    let mut pauses = RETRIES.iter();
    loop {
        match rt.block_on(attempt()) {
            Ok(()) => return Ok(()),
            Err(e) => match pauses.next() {
                Some(pause) => {
                    tracing::warn!(error = %e, "a liability store write failed; retrying in {pause:?}");
                    std::thread::sleep(*pause);
                }
                None => return Err(e),
            },
        }
    }
}

/// Stores the batched ledger entries (one transaction) and empties the batch.
fn store_entries(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn TrustStore>,
    entries: &mut Vec<LedgerEntry>,
    loss: &Loss,
) {
    if entries.is_empty() {
        return;
    }
    let batch = std::mem::take(entries);
    let what = match batch.as_slice() {
        [one] => format!("ledger entry for {}", one.agent),
        many => format!("{} ledger entries", many.len()),
    };
    let result = with_retries(rt, || {
        let (store, batch) = (store.clone(), batch.clone());
        Box::pin(async move { store.append_entries(batch).await })
    });
    if let Err(e) = result {
        failed(loss, what, e);
    }
}

// ---------------------------------------------------------------------------
// What admission knows of the ledger.

/// Most agents whose ledger admission keeps in memory.
const MAX_CACHED: usize = 65_536;
/// Most entries kept per agent between two reads of the store.
const MAX_LOCAL: usize = 1024;

/// One agent's ledger as admission knows it: what the store held at its
/// last read, and the entries this process queued since (by sequence
/// number, so that a read which already includes them drops them).
#[derive(Default)]
struct Known {
    /// Distinguishes this slot from a later one for the same agent: a read
    /// started for an evicted slot is not installed in its successor.
    generation: u64,
    /// The store's entries at the last read, and when it was (clock time).
    stored: Option<(Vec<EntryKind>, Duration)>,
    /// Entries queued by this process, with their sequence numbers.
    local: Vec<(u64, EntryKind)>,
}

impl Known {
    fn risk(&self) -> Option<f64> {
        let (stored, _) = self.stored.as_ref()?;
        Some(ahv_trust::risk_of_kinds(
            stored
                .iter()
                .copied()
                .chain(self.local.iter().map(|(_, k)| *k)),
        ))
    }
}

/// Admission's view of the ledger: read-your-writes for this process, the
/// store re-read at most every `ledger_refresh` for other processes' entries.
#[derive(Default)]
pub(crate) struct LedgerCache {
    known: HashMap<AgentId, Known>,
    /// Sequence number of the last entry queued.
    seq: u64,
    generations: u64,
}

impl LedgerCache {
    fn slot(&mut self, agent: &AgentId) -> &mut Known {
        if !self.known.contains_key(agent) && self.known.len() >= MAX_CACHED {
            // Any slot may go: a later join reads the store again.
            if let Some(victim) = self.known.keys().next().cloned() {
                self.known.remove(&victim);
            }
        }
        self.generations += 1;
        let generation = self.generations;
        self.known.entry(agent.clone()).or_insert_with(|| Known {
            generation,
            ..Known::default()
        })
    }
}

// ---------------------------------------------------------------------------
// The hypervisor's liability operations.

/// Which way an agent's effective score moved: a rise may only lift its
/// ring (up to its cap), a fall may only demote it. A score alone never
/// earns ring 1, so re-judging a ring 1 agent after a vouch must not demote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    Rose,
    Fell,
}

fn vouch_row(v: &Vouch, created_at: Duration) -> VouchRow {
    VouchRow {
        session: v.session.clone(),
        id: v.id.0,
        voucher: v.voucher.clone(),
        vouchee: v.vouchee.clone(),
        voucher_sigma: v.voucher_sigma,
        pct: v.pct,
        bond: v.bond,
        created_at,
        released_at: None,
        released_because: None,
    }
}

impl Hypervisor {
    fn records(&self) -> &Records {
        &self.inner.liability.records
    }

    fn policy(&self) -> &LiabilityPolicy {
        &self.inner.liability.policy
    }

    /// Appends a ledger entry (queued, in order; see [`Hypervisor::flush_liability`]);
    /// admission in this process counts it at once.
    pub(crate) fn book(&self, agent: &AgentId, kind: EntryKind) {
        let mut cache = lock(&self.inner.liability.cache);
        cache.seq += 1;
        let seq = cache.seq;
        let slot = cache.slot(agent);
        if slot.local.len() >= MAX_LOCAL {
            // Too much unread: forget the slot; the next join reads the
            // store, which has these entries by then (the queue is ordered).
            cache.known.remove(agent);
        } else {
            slot.local.push((seq, kind));
        }
        // Queued under the cache lock, so queue order is sequence order.
        self.records().write(Write::Entry(LedgerEntry {
            agent: agent.clone(),
            kind,
            at: wall_now(),
        }));
    }

    /// Reads `agent`'s entries from the store (after everything queued so
    /// far) and makes that admission's view of it.
    async fn refresh(&self, agent: &AgentId) -> Result<Vec<LedgerEntry>, HypervisorError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (generation, upto) = {
            let mut cache = lock(&self.inner.liability.cache);
            let upto = cache.seq;
            let generation = cache.slot(agent).generation;
            if let Err((_, e)) = self.records().send(Job::Entries(agent.clone(), tx)) {
                return Err(e);
            }
            (generation, upto)
        };
        let entries = match tokio::time::timeout(STORE_WAIT, rx).await {
            Ok(Ok(Ok(e))) => e,
            Ok(Ok(Err(e))) => {
                return Err(HypervisorError::Ledger(format!(
                    "reading the entries of {agent} in {}: {e}",
                    self.records().url
                )));
            }
            Ok(Err(_)) => return Err(self.records().closed()),
            Err(_) => {
                return Err(self
                    .records()
                    .timed_out(&format!("reading the entries of {agent}")));
            }
        };
        let now = self.inner.clock.now();
        let mut cache = lock(&self.inner.liability.cache);
        if let Some(slot) = cache.known.get_mut(agent)
            && slot.generation == generation
        {
            slot.stored = Some((entries.iter().map(|e| e.kind).collect(), now));
            slot.local.retain(|(seq, _)| *seq > upto);
        }
        Ok(entries)
    }

    /// Marks `agent` as having something against it in `session`.
    pub(crate) fn mark(&self, entry: &SessionEntry, agent: &AgentId) {
        lock(&entry.liability).marked.insert(agent.clone());
    }

    /// Waits until every liability record made so far is in the store.
    ///
    /// # Errors
    /// [`HypervisorError::Ledger`] with the first record lost since the
    /// last flush (the store refused it, or its queue stayed full for 5 s),
    /// or if the store is closed, its queue stays full for 5 s, or it does
    /// not answer within 60 s.
    pub async fn flush_liability(&self) -> Result<(), HypervisorError> {
        self.records().flush().await
    }

    /// The store behind the ledger: `memory`, `sqlite` or `postgres`.
    pub fn ledger_backend(&self) -> &'static str {
        self.records().backend()
    }

    /// `agent`'s risk and admission decision, read from the store now
    /// (with every record this process made so far).
    ///
    /// # Errors
    /// [`HypervisorError::Ledger`] if the store cannot be read.
    pub async fn assess(&self, agent: &AgentId) -> Result<Assessment, HypervisorError> {
        let risk = ahv_trust::risk_score(&self.refresh(agent).await?);
        Ok(Assessment {
            risk,
            admission: Admission::for_risk(risk),
        })
    }

    /// What admission knows of `agent`: from memory when the store was read
    /// less than `ledger_refresh` ago, else from the store.
    async fn known_risk(&self, agent: &AgentId) -> Result<f64, HypervisorError> {
        let refresh = self.policy().ledger_refresh;
        if !refresh.is_zero() {
            let now = self.inner.clock.now();
            let cache = lock(&self.inner.liability.cache);
            if let Some(slot) = cache.known.get(agent)
                && let Some((_, at)) = &slot.stored
                && now.saturating_sub(*at) < refresh
                && let Some(risk) = slot.risk()
            {
                return Ok(risk);
            }
        }
        self.refresh(agent).await?;
        let known = lock(&self.inner.liability.cache)
            .known
            .get(agent)
            .and_then(Known::risk);
        match known {
            Some(risk) => Ok(risk),
            // Evicted meanwhile (a flood of other agents): read it directly.
            None => Ok(self.assess(agent).await?.risk),
        }
    }

    /// `agent`'s ledger entries in the order they were made (after every
    /// record made so far is stored).
    ///
    /// # Errors
    /// [`HypervisorError::Ledger`] if the store cannot be read.
    pub async fn ledger_entries(
        &self,
        agent: &AgentId,
    ) -> Result<Vec<LedgerEntry>, HypervisorError> {
        self.refresh(agent).await
    }

    /// Admission at join: the ledger's decision for `agent`. A store that
    /// cannot be read refuses the join (fail closed).
    pub(crate) async fn admission(&self, agent: &AgentId) -> Result<Assessment, HypervisorError> {
        if self.records().loss.is_lost() {
            return Err(HypervisorError::Ledger(format!(
                "a liability record could not be stored in {}; joins are refused until \
                 flush_liability reports it (admission fails closed)",
                self.records().url
            )));
        }
        let risk = self.known_risk(agent).await?;
        let a = Assessment {
            risk,
            admission: Admission::for_risk(risk),
        };
        if a.admission == Admission::Deny {
            return Err(HypervisorError::AdmissionDenied {
                agent: agent.clone(),
                risk: a.risk,
            });
        }
        Ok(a)
    }

    /// Caps `agent`'s ring at `ring` (a probation, a child's assigned ring,
    /// a breach, an operator's demotion): neither a vouch nor an elevation
    /// request takes it above. A cap only ever comes down; it outlives a
    /// leave and a rejoin of the same session.
    pub(crate) fn lower_ceiling(&self, entry: &SessionEntry, agent: &AgentId, ring: Ring) {
        let mut l = lock(&entry.liability);
        let c = l.ceilings.entry(agent.clone()).or_insert(ring);
        if ring.number() > c.number() {
            *c = ring;
        }
    }

    /// `agent`'s cap in `entry`'s session, if any.
    pub(crate) fn ceiling(&self, entry: &SessionEntry, agent: &AgentId) -> Option<Ring> {
        lock(&entry.liability).ceilings.get(agent).copied()
    }

    /// Refuses a join of an agent that was killed in the session, or that
    /// is quarantined there (it left while held).
    pub(crate) fn may_rejoin(
        &self,
        entry: &SessionEntry,
        agent: &AgentId,
    ) -> Result<(), HypervisorError> {
        let l = lock(&entry.liability);
        if l.killed.contains(agent) {
            return Err(HypervisorError::Liability(format!(
                "agent {agent} was killed in session {}: it may not join it again",
                entry.core.id()
            )));
        }
        if l.quarantine.is_quarantined(agent) {
            return Err(HypervisorError::Liability(format!(
                "agent {agent} is quarantined in session {}: it may not join it again until released",
                entry.core.id()
            )));
        }
        Ok(())
    }

    /// A kill: the agent may not rejoin the session, and the ledger books it
    /// as the heaviest quarantine (a kill is a quarantine that does not end).
    pub(crate) fn killed(&self, entry: &SessionEntry, agent: &AgentId) {
        {
            let mut l = lock(&entry.liability);
            l.killed.insert(agent.clone());
            l.marked.insert(agent.clone());
        }
        self.book(
            agent,
            EntryKind::Quarantine {
                severity: Severity::FULL,
            },
        );
    }

    /// A participant left: its vouches (both ways) end. Its cap and a
    /// quarantine record stay (a rejoin finds them).
    pub(crate) fn liability_left(&self, entry: &SessionEntry, agent: &AgentId) {
        let session = entry.core.id().clone();
        let released = {
            let mut l = lock(&entry.liability);
            l.flooded.remove(agent);
            l.book.release_all_for(agent)
        };
        let vouchees: Vec<AgentId> = released
            .iter()
            .filter(|v| &v.vouchee != agent)
            .map(|v| v.vouchee.clone())
            .collect();
        self.report_released(entry, &session, &released, "left");
        for v in vouchees {
            let _ = self.apply_effective(entry, &v, "a voucher left", Moved::Fell);
        }
    }

    /// Emits `liability.vouch_released` and stores each released vouch.
    fn report_released(
        &self,
        entry: &SessionEntry,
        session: &SessionId,
        released: &[Vouch],
        reason: &str,
    ) {
        let mut op = self.op();
        for v in released {
            let created = lock(&entry.liability)
                .vouched_at
                .remove(&v.id)
                .unwrap_or_else(wall_now);
            self.emit(
                &mut op,
                session,
                Some(&v.voucher),
                EventPayload::LiabilityVouchReleased {
                    vouchee: v.vouchee.clone(),
                    vouch: v.id.0,
                    reason: reason.to_string(),
                },
            );
            let mut row = vouch_row(v, created);
            row.released_at = Some(wall_now());
            row.released_because = Some(reason.to_string());
            self.records().write(Write::Vouch(Box::new(row)));
        }
    }

    fn sigma_of(&self, entry: &SessionEntry, agent: &AgentId) -> Result<f64, HypervisorError> {
        lock(&entry.gov)
            .participant(agent)
            .map(|p| p.sigma)
            .ok_or_else(|| {
                SessionError::NotAParticipant {
                    session: entry.core.id().clone(),
                    agent: agent.clone(),
                }
                .into()
            })
    }

    /// `agent`'s effective score in `session`: `min(1, σ + ω × Σ bonds)`.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`].
    pub fn effective_trust(
        &self,
        session: &SessionId,
        agent: &AgentId,
    ) -> Result<f64, HypervisorError> {
        let entry = self.entry(session)?;
        let sigma = self.sigma_of(&entry, agent)?;
        self.effective_in(&entry, agent, sigma)
    }

    fn effective_in(
        &self,
        entry: &SessionEntry,
        agent: &AgentId,
        sigma: f64,
    ) -> Result<f64, HypervisorError> {
        lock(&entry.liability)
            .book
            .effective_sigma(entry.core.id(), agent, sigma, self.policy().omega)
            .map_err(|e| HypervisorError::Liability(e.to_string()))
    }

    /// The ring `agent`'s effective score earns: ring 3 below the session's
    /// minimum, else by the score (ring 2 at most without consensus).
    pub(crate) fn earned_ring(
        &self,
        entry: &SessionEntry,
        agent: &AgentId,
    ) -> Result<(Ring, f64), HypervisorError> {
        let sigma = self.sigma_of(entry, agent)?;
        let eff = self.effective_in(entry, agent, sigma)?;
        let min = lock(&entry.gov).config().min_eff_score;
        let earned = if eff < min {
            Ring::Sandbox
        } else {
            ring_for_score(eff, false).map_err(SessionError::from)?
        };
        Ok((earned, eff))
    }

    /// Re-judges `agent`'s base ring after its effective score `moved`: a
    /// rise lifts it to the ring the score earns (never above its cap), a
    /// fall demotes it at once if it no longer earns its ring. Ring 0 agents
    /// (an explicit grant) and killed agents are left alone. Returns the
    /// base ring now.
    pub(crate) fn apply_effective(
        &self,
        entry: &SessionEntry,
        agent: &AgentId,
        why: &str,
        moved: Moved,
    ) -> Result<Ring, HypervisorError> {
        let session = entry.core.id().clone();
        let standing = lock(&entry.standings).get(agent).cloned().ok_or_else(|| {
            HypervisorError::from(SessionError::NotAParticipant {
                session: session.clone(),
                agent: agent.clone(),
            })
        })?;
        let base = standing.base();
        if standing.is_killed() || base == Ring::Root {
            return Ok(base);
        }
        let (earned, eff) = self.earned_ring(entry, agent)?;
        let reason = format!("effective trust {eff:.2} ({why})");
        match moved {
            Moved::Fell if earned.number() > base.number() => {
                self.demote_by_trust(&session, agent, earned, &reason)?;
            }
            Moved::Rose => {
                let cap = self.ceiling(entry, agent).unwrap_or(Ring::Standard);
                let target = if earned.number() < cap.number() {
                    cap
                } else {
                    earned
                };
                if target.number() < base.number() {
                    standing
                        .set_base(target)
                        .map_err(|e| HypervisorError::Standing {
                            agent: agent.clone(),
                            message: e.to_string(),
                        })?;
                    lock(&entry.gov).set_ring(agent, target)?;
                    self.emit(
                        &mut self.op(),
                        &session,
                        Some(agent),
                        EventPayload::RingAssigned {
                            ring: target,
                            reason,
                        },
                    );
                    // A cap lowered meanwhile (a breach's re-admission) wins.
                    if let Some(cap) = self.ceiling(entry, agent)
                        && cap.number() > target.number()
                    {
                        self.demote_by_trust(&session, agent, cap, "capped while lifted")?;
                    }
                }
            }
            Moved::Fell => {}
        }
        Ok(standing.base())
    }

    /// `voucher` bonds `pct` of its σ (the policy's default when `None`)
    /// for `vouchee` in `session`. The vouchee's effective score rises at
    /// once, and with it, up to its ceiling, the ring its next host call is
    /// judged at. Emits `liability.vouch_created` (and `ring.assigned` if the
    /// ring changed).
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`]
    /// for either agent; [`HypervisorError::Liability`] for a refused vouch
    /// (self-vouch, voucher σ below 0.50, a cycle, over-exposure, a bad pct),
    /// or a quarantined or killed voucher.
    pub fn vouch(
        &self,
        session: &SessionId,
        voucher: &AgentId,
        vouchee: &AgentId,
        pct: Option<f64>,
    ) -> Result<VouchReceipt, HypervisorError> {
        let entry = self.entry(session)?;
        let voucher_sigma = self.sigma_of(&entry, voucher)?;
        self.sigma_of(&entry, vouchee)?;
        if let Some(s) = lock(&entry.standings).get(voucher)
            && (s.is_quarantined() || s.is_killed())
        {
            return Err(HypervisorError::Liability(format!(
                "agent {voucher} is quarantined or killed: it may not vouch"
            )));
        }
        let pct = pct.unwrap_or(self.policy().vouch_pct);
        let vouch = {
            let mut l = lock(&entry.liability);
            l.book
                .vouch(session, voucher, vouchee, voucher_sigma, pct)
                .map_err(|e| HypervisorError::Liability(e.to_string()))?
        };
        let created = wall_now();
        lock(&entry.liability).vouched_at.insert(vouch.id, created);
        self.records()
            .write(Write::Vouch(Box::new(vouch_row(&vouch, created))));
        let ring = self.apply_effective(
            &entry,
            vouchee,
            &format!("{} by {voucher}", vouch.id),
            Moved::Rose,
        )?;
        let effective = self.effective_trust(session, vouchee)?;
        self.emit(
            &mut self.op(),
            session,
            Some(voucher),
            EventPayload::LiabilityVouchCreated {
                vouchee: vouchee.clone(),
                vouch: vouch.id.0,
                bond: vouch.bond,
                effective,
            },
        );
        Ok(VouchReceipt {
            vouch: vouch.id,
            bond: vouch.bond,
            effective,
            ring,
        })
    }

    /// Ends a vouch: its bond no longer counts, and the vouchee is re-judged
    /// at once (demoted if it no longer earns its ring). Emits
    /// `liability.vouch_released`.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`]; [`HypervisorError::Liability`]
    /// for a vouch that is not active in the session.
    pub fn release_vouch(
        &self,
        session: &SessionId,
        vouch: VouchId,
        reason: &str,
    ) -> Result<Vouch, HypervisorError> {
        let entry = self.entry(session)?;
        let released = lock(&entry.liability)
            .book
            .release(vouch)
            .map_err(|e| HypervisorError::Liability(e.to_string()))?;
        self.report_released(&entry, session, std::slice::from_ref(&released), reason);
        if lock(&entry.standings).contains_key(&released.vouchee) {
            self.apply_effective(
                &entry,
                &released.vouchee,
                &format!("{vouch} released"),
                Moved::Fell,
            )?;
        }
        Ok(released)
    }

    /// The active vouches of `session`.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`].
    pub fn vouches(&self, session: &SessionId) -> Result<Vec<Vouch>, HypervisorError> {
        let entry = self.entry(session)?;
        let l = lock(&entry.liability);
        Ok(l.book.in_session(session).cloned().collect())
    }

    /// Slashes `agent` in `session` (SEMANTICS "Liability"): its σ → 0, each
    /// voucher's σ × (1 − ω) (floored at 0.05), their bonds released, a
    /// cascade of at most two hops. The new scores take effect at every
    /// touched agent's next host call (demotion); agents the cascade reached
    /// are quarantined (`cascade_slash`). Each slashed agent gets a ledger
    /// slash of `severity`. Emits `liability.slash_executed` per σ change and
    /// `liability.vouch_released` per bond. `omega`: the policy's when `None`.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`];
    /// [`HypervisorError::Liability`] for a bad ω or severity.
    pub fn slash(
        &self,
        session: &SessionId,
        agent: &AgentId,
        omega: Option<f64>,
        severity_of: f64,
        reason: &str,
    ) -> Result<SlashOutcome, HypervisorError> {
        let entry = self.entry(session)?;
        self.sigma_of(&entry, agent)?;
        let sev =
            Severity::new(severity_of).map_err(|e| HypervisorError::Liability(e.to_string()))?;
        let omega = omega.unwrap_or(self.policy().omega);
        let scores: Scores = {
            let gov = lock(&entry.gov);
            let mut s = Scores::new();
            for p in gov.participants() {
                s.set(p.agent.clone(), p.sigma)
                    .map_err(|e| HypervisorError::Liability(e.to_string()))?;
            }
            s
        };
        let mut scores = scores;
        let report = {
            let mut l = lock(&entry.liability);
            let report = ahv_trust::slash(&mut l.book, &mut scores, session, agent, omega)
                .map_err(|e| HypervisorError::Liability(e.to_string()))?;
            for c in &report.changes {
                l.marked.insert(c.agent.clone());
            }
            report
        };
        {
            let mut gov = lock(&entry.gov);
            for c in &report.changes {
                gov.set_sigma(&c.agent, c.after)?;
            }
        }
        let mut op = self.op();
        for c in &report.changes {
            self.emit(
                &mut op,
                session,
                Some(&c.agent),
                EventPayload::LiabilitySlashExecuted {
                    cause: match c.cause {
                        ChangeCause::Slashed => "slashed".into(),
                        ChangeCause::VoucherPenalty => "voucher_penalty".into(),
                    },
                    before: c.before,
                    after: c.after,
                    hop: c.hop,
                    reason: reason.to_string(),
                },
            );
            if c.cause == ChangeCause::Slashed {
                self.book(&c.agent, EntryKind::Slash { severity: sev });
            }
        }
        self.report_released(&entry, session, &report.released, "slashed");
        for c in &report.cascaded {
            let _ = self.quarantine(
                session,
                &c.agent,
                QuarantineReason::CascadeSlash,
                &format!("slash of {agent} cascaded {} hop(s): {reason}", c.hop),
                Some(ahv_trust::DEFAULT_QUARANTINE),
            );
        }
        let mut touched: Vec<AgentId> = report.changes.iter().map(|c| c.agent.clone()).collect();
        touched.extend(report.released.iter().map(|v| v.vouchee.clone()));
        touched.sort();
        touched.dedup();
        let mut rings = Vec::new();
        for a in touched {
            let slashed_to_zero = report
                .changes
                .iter()
                .any(|c| c.agent == a && c.cause == ChangeCause::Slashed);
            let base = if slashed_to_zero {
                // A slash demotes even a ring 0 grant: σ 0 earns ring 3.
                self.demote_by_trust(session, &a, Ring::Sandbox, &format!("slashed: {reason}"))
                    .map(|_| Ring::Sandbox)
            } else {
                self.apply_effective(&entry, &a, &format!("slash of {agent}"), Moved::Fell)
            };
            if let Ok(r) = base {
                rings.push((a, r));
            }
        }
        Ok(SlashOutcome { report, rings })
    }

    /// Quarantines `agent` for `duration` (`None`: until released): until
    /// then its host calls, except `context` and `log`, are refused with
    /// `quarantined`. Quarantining a held agent escalates its record (a
    /// longer hold). Books a ledger quarantine weighted by the reason.
    /// Emits `liability.quarantine_entered`.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`],
    /// [`HypervisorError::Standing`] if the agent was killed,
    /// [`HypervisorError::Liability`] for a duration over 24 h or zero.
    pub fn quarantine(
        &self,
        session: &SessionId,
        agent: &AgentId,
        reason: QuarantineReason,
        detail: &str,
        duration: Option<Duration>,
    ) -> Result<QuarantineRecord, HypervisorError> {
        let entry = self.entry(session)?;
        let standing = self.standing(session, agent)?;
        if standing.is_killed() {
            return Err(HypervisorError::Standing {
                agent: agent.clone(),
                message: "the agent was killed".into(),
            });
        }
        // An earlier quarantine that ran out is over (and reported) before
        // this one: this one is a new record, not its escalation.
        self.settle(session, agent, &standing);
        let now = self.inner.clock.now();
        let (outcome, hold) = {
            let mut l = lock(&entry.liability);
            let d = duration.unwrap_or(ahv_trust::MAX_QUARANTINE);
            let outcome = l
                .quarantine
                .quarantine_for(agent, reason, d)
                .map_err(|e| HypervisorError::Liability(e.to_string()))?;
            l.marked.insert(agent.clone());
            if matches!(outcome, ahv_trust::QuarantineOutcome::Entered(_)) {
                l.quarantined_at.insert(agent.clone(), wall_now());
            }
            let hold = duration.map(|_| outcome.record().ends_at.saturating_sub(now));
            (outcome, hold)
        };
        let claimed = standing
            .quarantine(hold)
            .map_err(|e| HypervisorError::Standing {
                agent: agent.clone(),
                message: e.to_string(),
            })?;
        let mut op = self.op();
        for t in claimed {
            self.report_transition(session, agent, op.trace, t);
        }
        let record = outcome.record().clone();
        let escalated = matches!(outcome, ahv_trust::QuarantineOutcome::Escalated(_));
        self.emit(
            &mut op,
            session,
            Some(agent),
            EventPayload::LiabilityQuarantineEntered {
                reason: if escalated {
                    format!("{reason}: {detail} (escalation {})", record.escalations)
                } else {
                    format!("{reason}: {detail}")
                },
                duration: hold.unwrap_or(Duration::MAX),
            },
        );
        self.book(
            agent,
            EntryKind::Quarantine {
                severity: severity(quarantine_severity(reason)),
            },
        );
        self.store_quarantine(&entry, &record, hold.is_none(), None);
        Ok(record)
    }

    /// Stores `record`'s row, keyed by the wall time it started.
    fn store_quarantine(
        &self,
        entry: &SessionEntry,
        record: &QuarantineRecord,
        until_released: bool,
        released: Option<&str>,
    ) {
        let wall = wall_now();
        let started = {
            let mut l = lock(&entry.liability);
            if released.is_some() {
                l.quarantined_at.remove(&record.agent)
            } else {
                l.quarantined_at.get(&record.agent).copied()
            }
        }
        .unwrap_or(wall);
        self.records()
            .write(Write::Quarantine(Box::new(QuarantineRow {
                session: entry.core.id().clone(),
                agent: record.agent.clone(),
                reason: record.reason,
                last_reason: record.last_reason,
                started_at: started,
                // Clock durations from the start, on the wall clock.
                ends_at: (!until_released).then(|| {
                    started.saturating_add(record.ends_at.saturating_sub(record.started_at))
                }),
                escalations: record.escalations,
                released_at: released.map(|_| wall),
                released_because: released.map(str::to_string),
            })));
    }

    /// A quarantine ended (released, or expired) and its record is closed.
    /// An expiry reported late closes only a record whose time ran out.
    pub(crate) fn quarantine_ended(&self, session: &SessionId, agent: &AgentId, why: &str) {
        let Ok(entry) = self.entry(session) else {
            return;
        };
        let now = self.inner.clock.now();
        let record = {
            let mut l = lock(&entry.liability);
            let due = l
                .quarantine
                .get(agent)
                .is_some_and(|r| why != "expired" || r.ends_at <= now);
            if due {
                l.quarantine.release(agent).ok()
            } else {
                None
            }
        };
        if let Some(record) = record {
            self.store_quarantine(&entry, &record, false, Some(why));
        }
    }

    /// Feeds the ledger a ring breach (a fault weighted by its severity).
    pub(crate) fn breach_booked(&self, entry: &SessionEntry, agent: &AgentId, severity_name: &str) {
        self.mark(entry, agent);
        self.book(
            agent,
            EntryKind::Fault {
                severity: severity(breach_severity(severity_name)),
            },
        );
    }

    /// Feeds the ledger a rate-limit flood: once per streak of refusals that
    /// reaches the policy's count (a later admitted call ends the streak).
    pub(crate) fn refusals_seen(&self, session: &SessionId, agent: &AgentId, refused: u64) {
        let Ok(entry) = self.entry(session) else {
            return;
        };
        let flood = self.policy().flood_refusals;
        let newly = {
            let mut l = lock(&entry.liability);
            if refused < flood {
                if refused <= 1 {
                    l.flooded.remove(agent);
                }
                false
            } else {
                l.marked.insert(agent.clone());
                l.flooded.insert(agent.clone())
            }
        };
        if newly {
            self.book(
                agent,
                EntryKind::Fault {
                    severity: severity(0.3),
                },
            );
        }
    }

    /// Credits a clean session to every participant with nothing against it.
    /// Only where there is risk to work off: credits cannot be banked, so a
    /// credit to an agent admission knows at risk 0 would change nothing
    /// (and would grow its ledger with every session it ends).
    pub(crate) fn credit_clean<'a>(
        &self,
        entry: &SessionEntry,
        agents: impl Iterator<Item = &'a AgentId>,
    ) {
        let (marked, credits) = {
            let l = lock(&entry.liability);
            (l.marked.clone(), l.credits)
        };
        if !credits {
            return;
        }
        for a in agents.filter(|a| !marked.contains(*a)) {
            let at_zero = lock(&self.inner.liability.cache)
                .known
                .get(a)
                .and_then(Known::risk)
                .is_some_and(|r| r <= 0.0);
            if !at_zero {
                self.book(a, EntryKind::CleanSession);
            }
        }
    }

    /// Whether ending `session` may credit its participants' ledgers with a
    /// clean session (by default it may). A front end turns it off for
    /// sessions whose creator it does not trust with the shared ledger: an
    /// operator who could otherwise work an agent's slashes off by ending
    /// empty sessions with it.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`].
    pub fn set_clean_session_credit(
        &self,
        session: &SessionId,
        credit: bool,
    ) -> Result<(), HypervisorError> {
        lock(&self.entry(session)?.liability).credits = credit;
        Ok(())
    }

    /// After a saga failed or escalated: attributes the blame, emits
    /// `liability.fault_attributed` and books a fault per blamed agent; an
    /// escalated saga's agents with at least the policy's share are slashed.
    pub(crate) fn after_saga(&self, session: &SessionId, saga: &SagaId, state: SagaState) {
        if !matches!(state, SagaState::Failed | SagaState::Escalated) {
            return;
        }
        let attribution = match self.saga_attribution(saga, &self.policy().attribution) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(%saga, error = %e, "attributing a failed saga");
                return;
            }
        };
        let method = method_name(&attribution.method).to_string();
        let mut op = self.op();
        for share in attribution.shares.iter().filter(|s| s.share > 0.0) {
            self.emit(
                &mut op,
                session,
                Some(&share.agent),
                EventPayload::LiabilityFaultAttributed {
                    saga: saga.to_string(),
                    share: share.share,
                    method: method.clone(),
                },
            );
            self.book(
                &share.agent,
                EntryKind::Fault {
                    severity: severity(share.share),
                },
            );
            if let Ok(entry) = self.entry(session) {
                self.mark(&entry, &share.agent);
            }
        }
        if state != SagaState::Escalated {
            return;
        }
        let threshold = self.policy().slash_share;
        for share in attribution
            .shares
            .iter()
            .filter(|s| s.share > 0.0 && s.share >= threshold - 1e-9)
        {
            match self.slash(
                session,
                &share.agent,
                None,
                share.share.clamp(0.0, 1.0),
                &format!(
                    "saga {saga} escalated; share of the blame {:.2}",
                    share.share
                ),
            ) {
                Ok(_) => {}
                // It left (or was killed) before the saga ended: there is no
                // σ to cut here, but the ledger still books the slash.
                Err(
                    HypervisorError::Session(SessionError::NotAParticipant { .. })
                    | HypervisorError::UnknownSession { .. },
                ) => {
                    self.book(
                        &share.agent,
                        EntryKind::Slash {
                            severity: severity(share.share),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(%saga, agent = %share.agent, error = %e, "slashing after an escalation");
                }
            }
        }
    }
}

/// The liability part of the hypervisor.
pub(crate) struct Liability {
    pub(crate) policy: LiabilityPolicy,
    pub(crate) records: Records,
    /// What admission knows of the ledger.
    pub(crate) cache: Mutex<LedgerCache>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lost write is kept until a flush reports it; it no longer rides
    /// in the store thread's answer, which a caller that stopped waiting
    /// never receives. The first of several is the one reported, and a
    /// loss after a report is kept again.
    #[test]
    fn a_loss_is_kept_until_a_flush_reports_it() {
        let loss = Loss::default();
        assert!(!loss.is_lost() && loss.report().is_none());
        loss.record("first".into());
        loss.record("second".into());
        assert!(loss.is_lost(), "joins are refused until it is reported");
        assert_eq!(
            loss.report().as_deref(),
            Some("first (and 1 more record(s) lost since)")
        );
        assert!(!loss.is_lost() && loss.report().is_none());
        loss.record("third".into());
        assert!(loss.is_lost());
        assert_eq!(loss.report().as_deref(), Some("third"));
        loss.record("fourth".into());
        loss.record("fifth".into());
        loss.record("sixth".into());
        assert_eq!(
            loss.report().as_deref(),
            Some("fourth (and 2 more record(s) lost since)")
        );
        loss.record("seventh".into());
        assert_eq!(loss.report().as_deref(), Some("seventh"), "counted afresh");
    }

    /// A store whose ledger appends wait until `release` turns true (a
    /// database that stopped answering); the rest is a real in-memory store.
    #[derive(Debug)]
    struct Hung {
        inner: ahv_store::MemoryStore,
        release: tokio::sync::watch::Receiver<bool>,
    }

    impl TrustStore for Hung {
        fn backend(&self) -> &'static str {
            "memory"
        }
        fn append_entry(&self, entry: LedgerEntry) -> ahv_store::StoreFuture<'_, ()> {
            self.append_entries(vec![entry])
        }
        fn append_entries(&self, entries: Vec<LedgerEntry>) -> ahv_store::StoreFuture<'_, ()> {
            let mut release = self.release.clone();
            Box::pin(async move {
                let _ = release.wait_for(|r| *r).await;
                self.inner.append_entries(entries).await
            })
        }
        fn entries_for<'a>(
            &'a self,
            agent: &'a AgentId,
        ) -> ahv_store::StoreFuture<'a, Vec<LedgerEntry>> {
            self.inner.entries_for(agent)
        }
        fn agents(&self) -> ahv_store::StoreFuture<'_, Vec<AgentId>> {
            self.inner.agents()
        }
        fn put_vouch(&self, row: VouchRow) -> ahv_store::StoreFuture<'_, ()> {
            self.inner.put_vouch(row)
        }
        fn vouches<'a>(
            &'a self,
            agent: Option<&'a AgentId>,
        ) -> ahv_store::StoreFuture<'a, Vec<VouchRow>> {
            self.inner.vouches(agent)
        }
        fn put_quarantine(&self, row: QuarantineRow) -> ahv_store::StoreFuture<'_, ()> {
            self.inner.put_quarantine(row)
        }
        fn quarantines<'a>(
            &'a self,
            agent: Option<&'a AgentId>,
        ) -> ahv_store::StoreFuture<'a, Vec<QuarantineRow>> {
            self.inner.quarantines(agent)
        }
    }

    /// A write finding the queue full (the store stopped answering) waits
    /// a bounded time, then is lost: kept for a flush to report, and joins
    /// are refused meanwhile. It used to wait for room for good, holding
    /// the liability cache's lock, so every later record waited too. Every
    /// write queued before it is stored once the store answers again.
    #[test]
    fn a_write_finding_the_queue_full_is_lost_after_a_bounded_wait_and_reported() {
        const BOUND: Duration = Duration::from_secs(60);
        let (release, hung) = tokio::sync::watch::channel(false);
        let store = Arc::new(Hung {
            inner: ahv_store::MemoryStore::default(),
            release: hung,
        });
        let mut records = Records::start(StoreSource::Store(store.clone())).unwrap();
        records.send_wait = Duration::from_millis(20);
        let records = Arc::new(records);
        let agent = AgentId::new("did:mesh:flooder").unwrap();
        let entry = {
            let agent = agent.clone();
            move || {
                Write::Entry(LedgerEntry {
                    agent: agent.clone(),
                    kind: EntryKind::CleanSession,
                    at: Duration::from_secs(1),
                })
            }
        };
        // The store thread takes up to a batch and hangs storing it; then
        // the queue fills. On a thread of its own, so that a write that
        // waits for good fails this test instead of hanging it.
        let (done, writes) = std::sync::mpsc::channel();
        std::thread::spawn({
            let records = records.clone();
            move || {
                let mut written = 0;
                while !records.loss.is_lost() && written <= QUEUE + BATCH + 1 {
                    records.write(entry());
                    written += 1;
                }
                // Lost at once now; the first loss is the one reported.
                records.write(entry());
                let _ = done.send(written);
            }
        });
        let written = writes.recv_timeout(BOUND).unwrap_or_else(|_| {
            panic!("the writes to a full queue did not return within {BOUND:?}")
        });
        assert!(
            records.loss.is_lost(),
            "{written} writes queued: the queue of {QUEUE} never filled"
        );
        assert!(written > QUEUE, "lost after {written} writes");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Nothing waits for room now: it found none for as long just now.
        let full = rt.block_on(records.flush()).unwrap_err().to_string();
        assert!(
            full.contains("jobs waiting and an earlier job found it full"),
            "{full}"
        );
        assert!(
            records.loss.is_lost(),
            "a flush that was not queued reports nothing"
        );
        release.send(true).unwrap();
        // Every write queued before the loss is stored once the store
        // answers again.
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let stored = rt.block_on(store.inner.entries_for(&agent)).unwrap().len();
            if stored == written - 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{stored} of the {} queued writes stored within {BOUND:?}",
                written - 1
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let reported = rt.block_on(records.flush()).unwrap_err().to_string();
        assert!(
            reported.contains("ledger entry CleanSession of did:mesh:flooder was not stored")
                && reported.contains("took none within 20ms")
                && reported.contains("(and 1 more record(s) lost since)"),
            "{reported}"
        );
        assert!(
            !records.loss.is_lost(),
            "reported: joins are admitted again"
        );
        rt.block_on(records.flush()).unwrap();
        let stored = rt.block_on(store.inner.entries_for(&agent)).unwrap();
        assert_eq!(
            stored.len(),
            written - 1,
            "the lost writes were not stored later"
        );
    }
}
