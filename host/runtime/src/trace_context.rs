//! The trace a piece of work belongs to, carried across the host: a front
//! end that receives a W3C `traceparent` (or starts a trace of its own) runs
//! the request inside [`with_trace`], and every trace id the runtime hands
//! out meanwhile ([`crate::Runtime::new_trace_id`]: the hypervisor's host
//! operations, each agent call) is that trace's id, so the request's events
//! and audit deltas carry it.
//!
//! The trace is a tokio task-local: it follows the request's own task, not
//! tasks it spawns or blocking threads (use [`with_trace_sync`] there, with
//! [`current`] read before leaving the task).

use std::future::Future;

use ahv_core::TraceId;

tokio::task_local! {
    static TRACE: TraceId;
}

/// Runs `f` with `trace` as the current trace.
pub async fn with_trace<F: Future>(trace: TraceId, f: F) -> F::Output {
    TRACE.scope(trace, f).await
}

/// Runs the synchronous `f` with `trace` as the current trace (on a
/// blocking thread, say).
pub fn with_trace_sync<R>(trace: TraceId, f: impl FnOnce() -> R) -> R {
    TRACE.sync_scope(trace, f)
}

/// The current trace, if the caller runs inside [`with_trace`] or
/// [`with_trace_sync`].
pub fn current() -> Option<TraceId> {
    TRACE.try_with(|t| *t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_trace_follows_the_task_and_nothing_else() {
        assert_eq!(current(), None);
        let inner = with_trace(TraceId(7), async {
            let here = current();
            let spawned = tokio::spawn(async { current() }).await.unwrap();
            let sync = with_trace_sync(TraceId(8), current);
            (here, spawned, sync)
        })
        .await;
        assert_eq!(inner, (Some(TraceId(7)), None, Some(TraceId(8))));
        assert_eq!(current(), None);
    }
}
