//! The batch signer: one background thread that signs commitment-log heads
//! off the hot path and publishes them to the anchor sinks.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    AnchorError, AnchorSink, HypervisorKey, PublicKey, SignedTreeHead, TreeHead, WallClock, lock,
};
use crate::hash::Hash;

/// The commitment log's current head, as the signer sees it.
pub trait HeadSource: Send + Sync {
    /// `(size, root)` of the log right now.
    fn current(&self) -> (u64, Hash);
}

/// What went wrong in a signing round, or with the signer itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignerError {
    /// A sink failed to take a head (it gets the next one).
    #[error("publishing the head of size {size}: {error}")]
    Anchor {
        /// Size of the head that was not published.
        size: u64,
        /// The sink's error.
        error: AnchorError,
    },
    /// The log reports fewer entries than an already signed head.
    #[error("head source shrank from signed size {signed} to {current}; refusing to sign")]
    SourceShrank {
        /// Size of the latest signed head.
        signed: u64,
        /// Size the source reports now.
        current: u64,
    },
    /// The log reports a different root for an already signed size.
    #[error("head source forked at size {size}: signed root {signed_root}, now {current_root}")]
    SourceForked {
        /// The size.
        size: u64,
        /// The signed root.
        signed_root: Hash,
        /// The root the source reports now.
        current_root: Hash,
    },
    /// The signer thread could not be started.
    #[error("cannot start the signer thread: {0}")]
    Spawn(#[source] Arc<std::io::Error>),
    /// The signer thread is no longer running.
    #[error("the signer thread has stopped")]
    Stopped,
}

type RoundResult = Result<Option<SignedTreeHead>, SignerError>;

#[derive(Default)]
struct State {
    latest: Option<SignedTreeHead>,
    last_error: Option<SignerError>,
    flush_requested: u64,
    flush_done: u64,
    flush_result: Option<RoundResult>,
    stop: bool,
    alive: bool,
}

struct Shared {
    /// Set by `notify`, cleared by the round that reads the source.
    pending: AtomicBool,
    /// The thread is (about to be) blocked with no deadline; only then must
    /// `notify` take the lock to wake it.
    idle: AtomicBool,
    /// When the first unsigned notify came, in ns since `origin`.
    first_notify_ns: AtomicU64,
    origin: Instant,
    signed: AtomicU64,
    failures: AtomicU64,
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
}

fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Signs commitment-log heads in batches on one background thread.
///
/// A head is signed only when the log grew past the last signed size (an empty
/// log is never signed); its time is the wall clock's, but never earlier than
/// the previous head's. A source that shrinks, or reports another root for a
/// signed size, is refused ([`SignerError::SourceShrank`],
/// [`SignerError::SourceForked`]): signing it would sign a fork.
/// Dropping the signer flushes and joins, like [`BatchSigner::shutdown`].
pub struct BatchSigner {
    shared: Arc<Shared>,
    public: PublicKey,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for BatchSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BatchSigner(public: {}, signed: {})",
            self.public,
            self.signed_count()
        )
    }
}

impl BatchSigner {
    /// Starts the signer thread. A head is signed at most `max_delay` after the
    /// first [`notify`](Self::notify) that follows the previous signature.
    ///
    /// # Errors
    /// [`SignerError::Spawn`] if the OS refuses a thread.
    pub fn spawn(
        key: HypervisorKey,
        source: Arc<dyn HeadSource>,
        sinks: Vec<Arc<dyn AnchorSink>>,
        wall: Arc<dyn WallClock>,
        max_delay: Duration,
    ) -> Result<BatchSigner, SignerError> {
        let shared = Arc::new(Shared {
            pending: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            first_notify_ns: AtomicU64::new(0),
            origin: Instant::now(),
            signed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            state: Mutex::new(State {
                alive: true,
                ..State::default()
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let public = key.public_key();
        let worker = Worker {
            shared: shared.clone(),
            key,
            source,
            published: vec![0; sinks.len()],
            sinks,
            wall,
            cleared_ns: 0,
        };
        let thread = std::thread::Builder::new()
            .name("ahv-head-signer".into())
            .spawn(move || worker.run(max_delay))
            .map_err(|e| SignerError::Spawn(Arc::new(e)))?;
        Ok(BatchSigner {
            shared,
            public,
            thread: Some(thread),
        })
    }

    /// Tells the signer the log grew. Cheap: one atomic swap; on the first
    /// notify of a batch also a clock read, plus a lock and wake-up only if the
    /// signer is idle. Never waits for signing or sinks.
    pub fn notify(&self) {
        let s = &*self.shared;
        // SeqCst pairs with the thread's `idle` store / `pending` load: one of
        // the two sides always sees the other, so no wake-up is lost.
        if !s.pending.swap(true, Ordering::SeqCst) {
            s.first_notify_ns
                .store(nanos_since(s.origin), Ordering::SeqCst);
            if s.idle.load(Ordering::SeqCst) {
                // Taking the lock once proves the thread is inside `wait` (it
                // sets `idle` under the lock); notifying after releasing it
                // spares the woken thread a fight for the lock.
                drop(lock(&s.state));
                s.wake.notify_one();
            }
        }
    }

    /// Signs the current head now (unless already signed), publishes it to
    /// every sink that lacks it, and waits for that. Returns the latest signed
    /// head, or `None` if the log has always been empty.
    ///
    /// # Errors
    /// The round's [`SignerError`]: a sink failure (the head is still signed,
    /// see [`latest`](Self::latest)), an inconsistent source, or a stopped thread.
    pub fn flush(&self) -> Result<Option<SignedTreeHead>, SignerError> {
        self.request_flush(false)
    }

    /// Flushes, stops the thread and joins it.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn shutdown(mut self) -> Result<Option<SignedTreeHead>, SignerError> {
        self.finish()
    }

    /// The latest signed head.
    pub fn latest(&self) -> Option<SignedTreeHead> {
        lock(&self.shared.state).latest.clone()
    }

    /// How many heads have been signed.
    pub fn signed_count(&self) -> u64 {
        self.shared.signed.load(Ordering::SeqCst)
    }

    /// How many times a sink failed (or the source was inconsistent).
    pub fn failure_count(&self) -> u64 {
        self.shared.failures.load(Ordering::SeqCst)
    }

    /// The most recent round error, if any round failed.
    pub fn last_error(&self) -> Option<SignerError> {
        lock(&self.shared.state).last_error.clone()
    }

    /// The public key that verifies this signer's heads.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    fn request_flush(&self, stop: bool) -> RoundResult {
        let s = &*self.shared;
        let mut st = lock(&s.state);
        if !st.alive {
            return Err(SignerError::Stopped);
        }
        st.flush_requested += 1;
        st.stop |= stop;
        let ticket = st.flush_requested;
        s.wake.notify_all();
        while st.flush_done < ticket && st.alive {
            st = s.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        match &st.flush_result {
            Some(r) if st.flush_done >= ticket => r.clone(),
            _ => Err(SignerError::Stopped),
        }
    }

    fn finish(&mut self) -> RoundResult {
        let Some(thread) = self.thread.take() else {
            return Err(SignerError::Stopped);
        };
        let result = self.request_flush(true);
        // The thread exits right after the stop flush (or is already gone).
        let _ = thread.join();
        result
    }
}

impl Drop for BatchSigner {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The signer thread's own state; `published[i]` is the size last accepted by `sinks[i]`.
struct Worker {
    shared: Arc<Shared>,
    key: HypervisorKey,
    source: Arc<dyn HeadSource>,
    sinks: Vec<Arc<dyn AnchorSink>>,
    published: Vec<u64>,
    wall: Arc<dyn WallClock>,
    /// When the last round cleared `pending`, in ns since `Shared::origin`.
    cleared_ns: u64,
}

/// Marks the signer dead even if the thread unwinds, so `flush` never waits forever.
struct AliveGuard<'a>(&'a Shared);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).alive = false;
        self.0.done.notify_all();
    }
}

impl Worker {
    fn run(mut self, max_delay: Duration) {
        let shared = self.shared.clone();
        let s = &*shared;
        let _guard = AliveGuard(s);
        let mut st = lock(&s.state);
        loop {
            let flush = st.flush_requested > st.flush_done;
            if !flush && st.stop {
                return;
            }
            if !flush {
                if s.pending.load(Ordering::SeqCst) {
                    // A notify that has set `pending` but not yet its time
                    // leaves the previous batch's time: use now instead.
                    let first = s.first_notify_ns.load(Ordering::SeqCst);
                    let now = nanos_since(s.origin);
                    let first =
                        Duration::from_nanos(if first >= self.cleared_ns { first } else { now });
                    let wait = (first + max_delay).saturating_sub(s.origin.elapsed());
                    if !wait.is_zero() {
                        st = s
                            .wake
                            .wait_timeout(st, wait)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                        continue;
                    }
                } else {
                    s.idle.store(true, Ordering::SeqCst);
                    if !s.pending.load(Ordering::SeqCst) {
                        st = s.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                    }
                    s.idle.store(false, Ordering::SeqCst);
                    continue;
                }
            }
            let ticket = st.flush_requested;
            let latest = st.latest.clone();
            drop(st);
            let result = self.round(latest);
            st = lock(&s.state);
            if let Ok(Some(head)) = &result {
                st.latest = Some(head.clone());
            }
            if let Err(e) = &result {
                st.last_error = Some(e.clone());
            }
            if flush {
                st.flush_done = ticket;
                st.flush_result = Some(result);
                s.done.notify_all();
            }
        }
    }

    /// Signs the source's head if it grew, then publishes the latest head to
    /// every sink that does not have it yet.
    fn round(&mut self, latest: Option<SignedTreeHead>) -> RoundResult {
        let s = &*self.shared;
        self.cleared_ns = nanos_since(s.origin);
        // A swap, not a store: reading the last notify's write acquires its append.
        s.pending.swap(false, Ordering::SeqCst);
        let (size, root) = self.source.current();
        let signed = latest.as_ref().map_or(0, |h| h.head.size);
        let mut latest = latest;
        if size < signed {
            s.failures.fetch_add(1, Ordering::SeqCst);
            return Err(SignerError::SourceShrank {
                signed,
                current: size,
            });
        }
        match &latest {
            Some(h) if size == signed && h.head.root != root => {
                s.failures.fetch_add(1, Ordering::SeqCst);
                return Err(SignerError::SourceForked {
                    size,
                    signed_root: h.head.root,
                    current_root: root,
                });
            }
            _ if size > signed => {
                // Head times never go backwards, even if the wall clock does.
                let prev = latest.as_ref().map_or(0, |h| h.head.time_ms);
                let time_ms = self.wall.now_unix_ms().max(prev);
                let head = self.key.sign_head(&TreeHead {
                    size,
                    root,
                    time_ms,
                });
                latest = Some(head.clone());
                // Visible before publishing, so readers never lag the sinks.
                lock(&s.state).latest = Some(head);
                s.signed.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        let Some(head) = latest else { return Ok(None) };
        let mut first_error = None;
        for (sink, done) in self.sinks.iter().zip(self.published.iter_mut()) {
            if *done >= head.head.size {
                continue;
            }
            // A panicking sink must not take the signer down with it.
            let outcome =
                catch_unwind(AssertUnwindSafe(|| sink.publish(&head))).unwrap_or_else(|_| {
                    Err(AnchorError {
                        sink: sink.name().to_owned(),
                        reason: "sink panicked".into(),
                    })
                });
            match outcome {
                Ok(()) => *done = head.head.size,
                Err(error) => {
                    s.failures.fetch_add(1, Ordering::SeqCst);
                    first_error.get_or_insert(SignerError::Anchor {
                        size: head.head.size,
                        error,
                    });
                }
            }
        }
        first_error.map_or(Ok(Some(head)), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{FakeWallClock, MemorySink};

    #[derive(Default)]
    struct Log(Mutex<(u64, Hash)>);
    impl Log {
        fn append(&self) {
            let mut g = lock(&self.0);
            g.0 += 1;
            g.1 = Hash::of_parts(&[g.1.as_bytes(), b"commitment"]);
        }
    }
    impl HeadSource for Log {
        fn current(&self) -> (u64, Hash) {
            *lock(&self.0)
        }
    }

    /// Fails its first `fail` publishes, sleeps `delay` in each, then keeps heads.
    struct TestSink {
        inner: MemorySink,
        fail: AtomicU64,
        delay: Duration,
    }
    impl TestSink {
        fn new(fail: u64, delay: Duration) -> Arc<TestSink> {
            Arc::new(TestSink {
                inner: MemorySink::new("test"),
                fail: AtomicU64::new(fail),
                delay,
            })
        }
    }
    impl AnchorSink for TestSink {
        fn name(&self) -> &str {
            "test"
        }
        fn publish(&self, head: &SignedTreeHead) -> Result<(), AnchorError> {
            std::thread::sleep(self.delay);
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                .is_ok()
            {
                return Err(AnchorError {
                    sink: "test".into(),
                    reason: "log unavailable".into(),
                });
            }
            self.inner.publish(head)
        }
    }

    fn signer(log: &Arc<Log>, sink: Arc<dyn AnchorSink>, max_delay: Duration) -> BatchSigner {
        let wall = Arc::new(FakeWallClock::new(1_000));
        BatchSigner::spawn(
            HypervisorKey::from_seed([1; 32]),
            log.clone(),
            vec![sink],
            wall,
            max_delay,
        )
        .unwrap()
    }

    #[test]
    fn many_notifies_within_max_delay_make_one_or_two_signatures() {
        let log = Arc::new(Log::default());
        let sink = Arc::new(MemorySink::new("mem"));
        let s = signer(&log, sink.clone(), Duration::from_millis(200));
        for _ in 0..100 {
            log.append();
            s.notify();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.heads().iter().all(|h| h.head.size < 100) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let n = s.signed_count();
        assert!((1..=2).contains(&n), "{n} signatures for 100 notifies");
        assert_eq!(s.flush().unwrap().unwrap().head.size, 100);
        assert_eq!(
            s.signed_count(),
            n,
            "flush of an already signed size signs nothing"
        );
        for h in sink.heads() {
            h.verify(&s.public_key()).unwrap();
        }
    }

    #[test]
    fn failing_sink_is_recorded_and_gets_the_next_head() {
        let log = Arc::new(Log::default());
        let sink = TestSink::new(1, Duration::ZERO);
        let s = signer(&log, sink.clone(), Duration::from_secs(60));
        log.append();
        let err = s.flush().unwrap_err();
        assert!(matches!(&err, SignerError::Anchor { size: 1, error } if error.sink == "test"));
        assert_eq!(
            s.latest().unwrap().head.size,
            1,
            "signed even though unpublished"
        );
        assert_eq!(s.failure_count(), 1);
        assert!(s.last_error().is_some());
        log.append();
        assert_eq!(s.flush().unwrap().unwrap().head.size, 2);
        let sizes: Vec<u64> = sink.inner.heads().iter().map(|h| h.head.size).collect();
        assert_eq!(sizes, [2]);
    }

    #[test]
    fn shutdown_and_drop_publish_the_final_head() {
        let log = Arc::new(Log::default());
        let sink = Arc::new(MemorySink::new("mem"));
        let s = signer(&log, sink.clone(), Duration::from_secs(60));
        assert_eq!(s.flush().unwrap(), None, "an empty log is not signed");
        log.append();
        s.notify();
        log.append();
        s.notify();
        let last = s.shutdown().unwrap().unwrap();
        assert_eq!(last.head.size, 2);
        assert_eq!(sink.heads(), [last]);

        let sink = Arc::new(MemorySink::new("mem"));
        let s = signer(&log, sink.clone(), Duration::from_secs(60));
        s.notify();
        drop(s);
        assert_eq!(sink.heads().len(), 1);
    }

    #[test]
    fn shrinking_source_is_refused() {
        let log = Arc::new(Log::default());
        let s = signer(
            &log,
            Arc::new(MemorySink::new("mem")),
            Duration::from_secs(60),
        );
        log.append();
        log.append();
        s.flush().unwrap();
        *lock(&log.0) = (1, Hash::ZERO);
        assert!(matches!(
            s.flush(),
            Err(SignerError::SourceShrank {
                signed: 2,
                current: 1
            })
        ));
        *lock(&log.0) = (2, Hash::ZERO);
        assert!(matches!(
            s.flush(),
            Err(SignerError::SourceForked { size: 2, .. })
        ));
    }

    /// A sink that holds the signer inside `publish` until the test opens it.
    struct GatedSink {
        entered: std::sync::mpsc::SyncSender<()>,
        open: Mutex<std::sync::mpsc::Receiver<()>>,
    }
    impl AnchorSink for GatedSink {
        fn name(&self) -> &str {
            "gated"
        }
        fn publish(&self, _head: &SignedTreeHead) -> Result<(), AnchorError> {
            let _ = self.entered.try_send(());
            // Bounded, so a broken test cannot hang the signer thread forever.
            let _ = lock(&self.open).recv_timeout(Duration::from_secs(30));
            Ok(())
        }
    }

    #[test]
    fn notify_never_waits_for_a_signer_that_is_inside_a_sink() {
        let log = Arc::new(Log::default());
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
        let (open, open_rx) = std::sync::mpsc::channel::<()>();
        let sink = Arc::new(GatedSink {
            entered: entered_tx,
            open: Mutex::new(open_rx),
        });
        let s = Arc::new(signer(&log, sink, Duration::ZERO));
        log.append();
        s.notify();
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the signer did not reach the sink within 10 s");
        // The signer is held inside the sink: 1000 notifications must all
        // return while it stays there (a notify that waited for it would
        // never return before the gate opens).
        let (done_tx, done) = std::sync::mpsc::channel();
        let notifier = {
            let (s, log) = (s.clone(), log.clone());
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    log.append();
                    s.notify();
                }
                let _ = done_tx.send(());
            })
        };
        let returned = done.recv_timeout(Duration::from_secs(10));
        // Opens the gate for good: every later publish passes at once.
        drop(open);
        returned.expect("notify blocked while the signer was inside a sink (10 s)");
        notifier.join().unwrap();
        let s = Arc::try_unwrap(s).unwrap_or_else(|_| panic!("the signer is still shared"));
        assert_eq!(s.shutdown().unwrap().unwrap().head.size, 1001);
    }

    #[test]
    fn head_times_come_from_the_wall_clock_and_never_go_backwards() {
        let log = Arc::new(Log::default());
        let wall = FakeWallClock::new(5_000);
        let key = HypervisorKey::from_seed([1; 32]);
        let s = BatchSigner::spawn(
            key,
            log.clone(),
            vec![],
            Arc::new(wall.clone()),
            Duration::ZERO,
        )
        .unwrap();
        log.append();
        assert_eq!(s.flush().unwrap().unwrap().head.time_ms, 5_000);
        wall.set(4_000);
        log.append();
        assert_eq!(s.flush().unwrap().unwrap().head.time_ms, 5_000);
    }

    struct PanickingSink;
    impl AnchorSink for PanickingSink {
        fn name(&self) -> &str {
            "panicky"
        }
        fn publish(&self, _: &SignedTreeHead) -> Result<(), AnchorError> {
            panic!("sink bug")
        }
    }

    #[test]
    fn a_panicking_sink_is_an_error_not_a_dead_signer() {
        let log = Arc::new(Log::default());
        let s = signer(&log, Arc::new(PanickingSink), Duration::from_secs(60));
        log.append();
        let err = s.flush().unwrap_err();
        assert!(matches!(&err, SignerError::Anchor { error, .. } if error.sink == "panicky"));
        log.append();
        assert!(s.flush().is_err());
        assert_eq!(s.latest().unwrap().head.size, 2, "still signing");
    }
}
