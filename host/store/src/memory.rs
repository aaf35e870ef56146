//! The in-memory store: tests and `--database memory`. Nothing survives the
//! process; otherwise it behaves as the SQL stores do (same checks, times
//! floored to microseconds, same orders).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ahv_core::{AgentId, SessionId};
use ahv_trust::LedgerEntry;

use crate::rows::{normalize_entry, normalize_quarantine, normalize_vouch};
use crate::{QuarantineRow, StoreFuture, TrustStore, VouchRow};

#[derive(Debug, Default)]
struct Records {
    entries: Vec<LedgerEntry>,
    vouches: BTreeMap<(SessionId, u64), VouchRow>,
    quarantines: BTreeMap<(SessionId, AgentId, Duration), QuarantineRow>,
}

/// An in-memory [`TrustStore`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        // Every write is a single push or insert, so a panic elsewhere while
        // the lock was held cannot have left a half-written record.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TrustStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn append_entry(&self, entry: LedgerEntry) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let entry = normalize_entry(entry)?;
            self.records().entries.push(entry);
            Ok(())
        })
    }

    fn entries_for<'a>(&'a self, agent: &'a AgentId) -> StoreFuture<'a, Vec<LedgerEntry>> {
        Box::pin(async move {
            Ok(self
                .records()
                .entries
                .iter()
                .filter(|e| &e.agent == agent)
                .cloned()
                .collect())
        })
    }

    fn agents(&self) -> StoreFuture<'_, Vec<AgentId>> {
        Box::pin(async move {
            let mut agents: Vec<AgentId> = self
                .records()
                .entries
                .iter()
                .map(|e| e.agent.clone())
                .collect();
            agents.sort();
            agents.dedup();
            Ok(agents)
        })
    }

    fn put_vouch(&self, row: VouchRow) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let row = normalize_vouch(row)?;
            self.records()
                .vouches
                .insert((row.session.clone(), row.id), row);
            Ok(())
        })
    }

    fn vouches<'a>(&'a self, agent: Option<&'a AgentId>) -> StoreFuture<'a, Vec<VouchRow>> {
        Box::pin(async move {
            let mut rows: Vec<VouchRow> = self
                .records()
                .vouches
                .values()
                .filter(|v| agent.is_none_or(|a| &v.voucher == a || &v.vouchee == a))
                .cloned()
                .collect();
            crate::sort_vouches(&mut rows);
            Ok(rows)
        })
    }

    fn put_quarantine(&self, row: QuarantineRow) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let row = normalize_quarantine(row)?;
            let key = (row.session.clone(), row.agent.clone(), row.started_at);
            self.records().quarantines.insert(key, row);
            Ok(())
        })
    }

    fn quarantines<'a>(
        &'a self,
        agent: Option<&'a AgentId>,
    ) -> StoreFuture<'a, Vec<QuarantineRow>> {
        Box::pin(async move {
            let mut rows: Vec<QuarantineRow> = self
                .records()
                .quarantines
                .values()
                .filter(|q| agent.is_none_or(|a| &q.agent == a))
                .cloned()
                .collect();
            crate::sort_quarantines(&mut rows);
            Ok(rows)
        })
    }
}
