//! Turns: how guests share the async runtime's worker threads, so that a
//! killed agent's caller hears of it promptly however many agents spin.
//!
//! Agents run as tokio tasks, and a guest in a tight loop yields at every
//! epoch tick. If a yielding guest simply re-queued itself on tokio, every
//! spinning agent would sit in tokio's run queue, and a task that becomes
//! runnable — the killed agent, the caller awaiting its trap, a request
//! handler — would wait behind all of them: with 1,000 spinners on two
//! worker threads, half a second.
//!
//! So a guest that has used up a whole tick (it yielded at an epoch tick)
//! resumes only on a *turn*: a permit of one runtime-wide FIFO semaphore
//! with as many permits as the machine has threads. It waits for its turn
//! *outside* tokio's run queue (the wake a guest gives itself when it yields
//! is held back; the semaphore wakes it), which therefore holds at most one
//! spinning guest per turn. The turn is taken as the guest yields at its
//! tick, not when it is next polled: on a current-thread runtime a turn is
//! always free at the start of a poll, so taking it then would let every
//! spinner back into the queue. It is held between polls only by a task
//! that is runnable, and given back as soon as the poll it was taken for
//! returns: a call waiting in the host never holds one, and no two calls
//! can deadlock over turns. A call that has not used up a tick — a new call,
//! or one resuming after waiting in an async host function — runs at once,
//! without a turn, as it would without this module; at its first full tick
//! it queues like the others. A kill wakes a parked call directly, and it is
//! polled within about a tick (the time a worker's current guest needs to
//! reach its next epoch check).
//!
//! A call made from inside another guest's poll on a turn (a parent running
//! its child through the `spawn` capability) runs on its parent's turn. A
//! killed agent's call is never given its guest back: once
//! [`KillHandle::kill`] has returned, a parked guest runs no further
//! instruction, and a running one traps at its next epoch check (the kill
//! advances the epoch).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::state::KillHandle;

/// The runtime's turns: how many guests may run wasm at once.
#[derive(Debug, Clone)]
pub(crate) struct Turns {
    sem: Arc<Semaphore>,
}

thread_local! {
    /// Set while this thread polls a guest on a turn: a nested call (a
    /// child run from its parent's host call) uses that turn.
    static ON_TURN: Cell<bool> = const { Cell::new(false) };
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

impl Turns {
    /// `n` turns (at least one).
    pub(crate) fn new(n: usize) -> Turns {
        Turns {
            sem: Arc::new(Semaphore::new(n.max(1))),
        }
    }

    /// Runs `call` (a guest call of the agent `kill` stops) on turns: a poll
    /// after the guest yielded at an epoch tick first waits for a turn
    /// (FIFO), and no poll resumes the guest once the agent is killed — the
    /// call then ends with the `Killed` trap.
    pub(crate) fn run<'a, F, T>(
        &'a self,
        call: Pin<&'a mut F>,
        kill: &'a KillHandle,
    ) -> Turned<'a, F>
    where
        F: Future<Output = wasmtime::Result<T>>,
    {
        Turned {
            call,
            turns: self,
            kill,
            waiting: None,
            held: None,
            polled: false,
            at_tick: false,
            hold: None,
        }
    }

    /// Turns free now (for tests and metrics).
    #[cfg(test)]
    fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

/// A guest call that runs only on a turn; see [`Turns::run`].
pub(crate) struct Turned<'a, F> {
    call: Pin<&'a mut F>,
    turns: &'a Turns,
    kill: &'a KillHandle,
    /// The queued request for a turn, while the call waits for one.
    waiting: Option<Acquire>,
    /// The turn for the next poll, taken when the guest yielded at a tick.
    held: Option<OwnedSemaphorePermit>,
    /// Whether the call was polled before.
    polled: bool,
    /// Whether its last poll ended with the guest yielding at a tick.
    at_tick: bool,
    /// The waker later polls give the guest, built at the second poll.
    hold: Option<(Arc<HoldWakes>, Waker)>,
}

/// Clears [`ON_TURN`] when the poll that set it ends, even by unwinding.
struct OnTurn;

impl OnTurn {
    fn enter() -> OnTurn {
        ON_TURN.with(|t| t.set(true));
        OnTurn
    }
}

impl Drop for OnTurn {
    fn drop(&mut self) {
        ON_TURN.with(|t| t.set(false));
    }
}

impl<F> Turned<'_, F> {
    /// The turn this call queued for, or a free one; `Pending` while it
    /// waits in the queue (the semaphore wakes the task when its turn is
    /// assigned). `Ready(None)` only if the semaphore were closed: the call
    /// would then run without turns rather than never.
    fn acquire(&mut self, cx: &mut Context<'_>) -> Poll<Option<OwnedSemaphorePermit>> {
        loop {
            if let Some(waiting) = self.waiting.as_mut() {
                let permit = std::task::ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
                return Poll::Ready(permit.ok());
            }
            match self.turns.sem.clone().try_acquire_owned() {
                Ok(permit) => return Poll::Ready(Some(permit)),
                Err(TryAcquireError::NoPermits) => {
                    self.waiting = Some(Box::pin(self.turns.sem.clone().acquire_owned()));
                }
                Err(TryAcquireError::Closed) => return Poll::Ready(None),
            }
        }
    }
}

impl<F, T> Future for Turned<'_, F>
where
    F: Future<Output = wasmtime::Result<T>>,
{
    type Output = wasmtime::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if ON_TURN.with(Cell::get) {
            // Inside a parent's poll: the parent's turn covers this call.
            return poll_guest(&mut this.call, this.kill, cx);
        }
        let permit = match this.held.take() {
            // Taken when the guest yielded at its last tick.
            Some(permit) => Some(Some(permit)),
            // A new call, or one back from the host: no tick used up yet,
            // so it runs at once, without a turn.
            None if this.waiting.is_none() && !this.kill.take_spent() => None,
            None => match this.acquire(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(permit) => Some(permit),
            },
        };
        let on_turn = permit.is_some().then(OnTurn::enter);
        let (polled, woken) = this.poll_holding_wakes(cx);
        drop(on_turn);
        // Given back whether the guest finished, yielded at a tick or waits
        // in the host (to the first call in the queue, if any): a turn is
        // never held across an await.
        drop(permit);
        this.at_tick = false;
        if polled.is_pending() {
            if this.kill.take_spent() {
                this.at_tick = true;
                this.next_turn(cx);
            } else if woken {
                cx.waker().wake_by_ref();
            }
        }
        polled
    }
}

impl<F, T> Turned<'_, F>
where
    F: Future<Output = wasmtime::Result<T>>,
{
    /// Polls the guest with a waker that holds back the wakes given during
    /// the poll (returned as `true`): the wake a guest gives itself when it
    /// yields at a tick would put its task straight back in the run queue,
    /// where every spinning guest would then sit. A call's first poll, which
    /// most calls need alone, uses the task's waker as it is.
    fn poll_holding_wakes(&mut self, cx: &mut Context<'_>) -> (Poll<wasmtime::Result<T>>, bool) {
        if !self.polled {
            self.polled = true;
            return (poll_guest(&mut self.call, self.kill, cx), false);
        }
        let (hold, waker) = self.hold.get_or_insert_with(|| {
            let hold = Arc::new(HoldWakes {
                task: std::sync::Mutex::new(cx.waker().clone()),
                state: AtomicU8::new(IDLE),
            });
            (hold.clone(), Waker::from(hold))
        });
        hold.polling(cx.waker());
        let polled = poll_guest(&mut self.call, self.kill, &mut Context::from_waker(waker));
        (polled, hold.state.swap(IDLE, Ordering::AcqRel) == WOKEN)
    }
}

impl<F> Turned<'_, F> {
    /// Whether the last poll ended with the guest yielding at a tick: its
    /// task is woken (or will be, on its turn), and polling it again before
    /// the task yields would run another tick at once.
    pub(crate) fn at_tick(&self) -> bool {
        self.at_tick
    }

    /// After the guest yielded at a tick (its own wake held back, so its
    /// task is not in the run queue): takes its next turn now if one is
    /// free, holding it while the task waits to be polled (it wakes itself);
    /// else queues for one, and the semaphore wakes the task when its turn is
    /// assigned. So the run queue holds no more spinning guests than there
    /// are turns, however many spin, and a task woken meanwhile (a killed
    /// agent's call, its caller, a timer) waits behind those alone — on a
    /// current-thread runtime too, where every spinner would otherwise be in
    /// the one queue. Held only by a runnable task, a turn cannot be held
    /// across an await.
    fn next_turn(&mut self, cx: &mut Context<'_>) {
        if let Poll::Ready(permit) = self.acquire(cx) {
            self.held = permit;
            cx.waker().wake_by_ref();
        }
    }
}

/// [`HoldWakes::state`]: no poll of the guest is running.
const IDLE: u8 = 0;
/// A poll of the guest is running, not woken yet.
const POLLING: u8 = 1;
/// A poll of the guest is running and was woken.
const WOKEN: u8 = 2;

/// The waker a guest is polled with after its first poll: outside a poll it
/// wakes the task; during one it only notes the wake, for the poll's end to
/// decide (see [`Turned::poll_holding_wakes`]).
struct HoldWakes {
    /// The task's waker, as of the latest poll.
    task: std::sync::Mutex<Waker>,
    /// [`IDLE`], [`POLLING`] or [`WOKEN`].
    state: AtomicU8,
}

impl HoldWakes {
    /// A poll starts: wakes from now on are noted, and reach `task` after.
    fn polling(&self, task: &Waker) {
        let mut current = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if !current.will_wake(task) {
            current.clone_from(task);
        }
        drop(current);
        self.state.store(POLLING, Ordering::Release);
    }
}

impl Wake for HoldWakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state == IDLE {
                self.task
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .wake_by_ref();
                return;
            }
            match self.state.compare_exchange_weak(
                state,
                WOKEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
    }
}

/// Polls the guest unless its agent was killed.
fn poll_guest<F, T>(
    call: &mut Pin<&mut F>,
    kill: &KillHandle,
    cx: &mut Context<'_>,
) -> Poll<wasmtime::Result<T>>
where
    F: Future<Output = wasmtime::Result<T>>,
{
    kill.set_on_turn(true);
    if kill.is_killed() {
        kill.set_on_turn(false);
        return Poll::Ready(Err(wasmtime::Error::new(kill.stop())));
    }
    let polled = call.as_mut().poll(cx);
    kill.set_on_turn(false);
    polled
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use ahv_core::standing::Standing;
    use ahv_core::{Ring, SystemClock};

    fn kill_handle() -> KillHandle {
        let engine = wasmtime::Engine::default();
        KillHandle::new(
            engine,
            Standing::new(Ring::Sandbox, Arc::new(SystemClock::default())),
            None,
        )
    }

    /// A "guest" that yields `n` times at a tick (marking the tick used and
    /// waking itself, as the epoch callback does), counting how many of its
    /// polls after the first (those that need a turn) ran at once.
    async fn spin(
        n: usize,
        kill: KillHandle,
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    ) -> wasmtime::Result<usize> {
        let mut left = n;
        std::future::poll_fn(move |cx| {
            if left < n {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(200));
                running.fetch_sub(1, Ordering::SeqCst);
            } else {
                // A new call runs at once, without a turn.
                std::thread::sleep(Duration::from_micros(200));
            }
            if left == 0 {
                return Poll::Ready(Ok(n));
            }
            left -= 1;
            kill.mark_spent();
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_spent_guests_run_at_once_than_there_are_turns_and_all_finish() {
        let turns = Turns::new(2);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (turns, running, most) = (turns.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let kill = kill_handle();
                let call = std::pin::pin!(spin(20, kill.clone(), running, most));
                turns.run(call, &kill).await
            }));
        }
        for t in tasks {
            let r = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a spinning call did not finish within 30 s")
                .expect("task");
            assert_eq!(r.expect("spin"), 20);
        }
        assert!(
            most.load(Ordering::SeqCst) <= 2,
            "{} guests that had used up a tick ran at once",
            most.load(Ordering::SeqCst)
        );
        assert_eq!(turns.available(), 2, "every turn was given back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_call_waiting_for_a_turn_ends_without_resuming_its_guest() {
        let turns = Turns::new(1);
        // Hold the only turn, so the call has to queue.
        let held = turns.sem.clone().try_acquire_owned().expect("a free turn");
        let kill = kill_handle();
        let resumed = Arc::new(AtomicUsize::new(0));
        let guest = {
            let resumed = resumed.clone();
            std::future::poll_fn(move |_cx| {
                resumed.fetch_add(1, Ordering::SeqCst);
                Poll::<wasmtime::Result<()>>::Pending
            })
        };
        let call = std::pin::pin!(guest);
        // As after a tick the guest used up.
        kill.mark_spent();
        let mut turned = std::pin::pin!(turns.run(call, &kill));
        let first = std::future::poll_fn(|cx| Poll::Ready(turned.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "no turn is free");
        assert_eq!(resumed.load(Ordering::SeqCst), 0);
        kill.kill("test");
        drop(held);
        let r = tokio::time::timeout(Duration::from_secs(10), turned)
            .await
            .expect("the killed call did not end within 10 s");
        let e = r.expect_err("killed");
        assert!(e.downcast_ref::<crate::trap::Killed>().is_some(), "{e:#}");
        assert_eq!(
            resumed.load(Ordering::SeqCst),
            0,
            "the guest never ran after its kill"
        );
        assert_eq!(
            kill.stopped_after(),
            Some(Duration::ZERO),
            "it was not running at the kill"
        );
        assert_eq!(turns.available(), 1);
    }

    /// On one thread a turn is free at the start of every poll; a task woken
    /// while eight guests spin must still wait behind one tick, not eight.
    #[tokio::test(flavor = "current_thread")]
    async fn on_one_thread_a_woken_task_waits_behind_one_spinning_guest_not_all() {
        let turns = Turns::new(1);
        let ticks = Arc::new(AtomicUsize::new(0));
        let (woke_tx, woke_rx) = tokio::sync::oneshot::channel::<usize>();
        let woken = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                let at_wake = woke_rx.await.expect("the waker sent");
                ticks.load(Ordering::SeqCst) - at_wake
            }
        });
        let mut spinners = Vec::new();
        let mut woke_tx = Some(woke_tx);
        for i in 0..8 {
            let (turns, ticks) = (turns.clone(), ticks.clone());
            let mut tx = if i == 0 { woke_tx.take() } else { None };
            spinners.push(tokio::spawn(async move {
                let kill = kill_handle();
                let mut left = 40;
                let guest = std::pin::pin!(std::future::poll_fn(|cx| {
                    // A tick of guest code.
                    let now = ticks.fetch_add(1, Ordering::SeqCst) + 1;
                    if left == 30
                        && let Some(tx) = tx.take()
                    {
                        // Wakes the other task from inside its tick.
                        let _ = tx.send(now);
                    }
                    if left == 0 {
                        return Poll::Ready(Ok::<_, wasmtime::Error>(()));
                    }
                    left -= 1;
                    kill.mark_spent();
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }));
                turns.run(guest, &kill).await
            }));
        }
        let behind = tokio::time::timeout(Duration::from_secs(30), woken)
            .await
            .expect("the woken task did not run within 30 s")
            .expect("task");
        assert!(
            behind <= 1,
            "the woken task waited behind {behind} ticks of spinning guests"
        );
        for t in spinners {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a spinning call did not finish within 30 s")
                .expect("task")
                .expect("spin");
        }
        assert_eq!(turns.available(), 1, "every turn was given back");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_nested_in_a_guests_poll_runs_on_its_parents_turn() {
        let turns = Turns::new(1);
        let kill = kill_handle();
        let inner_turns = turns.clone();
        let inner_kill = kill_handle();
        // The parent polls a child call inside its own poll, as a `spawn`
        // host call does; with one turn, a child that queued for a turn of
        // its own would never run.
        let parent = async move {
            let child = std::pin::pin!(async {
                tokio::task::yield_now().await;
                Ok::<_, wasmtime::Error>(7)
            });
            inner_turns.run(child, &inner_kill).await
        };
        let parent = std::pin::pin!(parent);
        let r = tokio::time::timeout(Duration::from_secs(10), turns.run(parent, &kill))
            .await
            .expect("the nested call did not finish within 10 s");
        assert_eq!(r.expect("child"), 7);
        assert_eq!(turns.available(), 1);
    }
}
