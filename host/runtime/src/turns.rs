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
//! *outside* tokio's run queue, which therefore holds at most one spinning
//! guest per turn; the turn is given back as soon as the poll it was taken
//! for returns, so a turn is never held across an await and no two calls can
//! deadlock over turns. A call that has not used up a tick — a new call, or
//! one resuming after waiting in an async host function — runs at once,
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
use std::task::{Context, Poll};

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
        if this.waiting.is_none() && !this.kill.take_spent() {
            // A new call, or one back from the host: no tick used up yet.
            return poll_guest(&mut this.call, this.kill, cx);
        }
        let permit = loop {
            if let Some(waiting) = this.waiting.as_mut() {
                match waiting.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(permit) => {
                        this.waiting = None;
                        // The semaphore is never closed; were it, the call
                        // would run without turns rather than never.
                        break permit.ok();
                    }
                }
            }
            match this.turns.sem.clone().try_acquire_owned() {
                Ok(permit) => break Some(permit),
                Err(TryAcquireError::NoPermits) => {
                    this.waiting = Some(Box::pin(this.turns.sem.clone().acquire_owned()));
                }
                Err(TryAcquireError::Closed) => break None,
            }
        };
        let on_turn = OnTurn::enter();
        let polled = poll_guest(&mut this.call, this.kill, cx);
        drop(on_turn);
        // Given back whether the guest finished, yielded at a tick or waits
        // in the host: a turn is never held across an await.
        drop(permit);
        polled
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
