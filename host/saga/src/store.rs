//! [`FileStore`]: the durable [`ProgressStore`], one [`FileJournal`] file per
//! saga, each record one JSON document.
//!
//! # Why a journal of its own, and not the audit log
//! A saga's progress could be read back from its session's audit log (every
//! record is also an event, hence an audit delta: an oplog, as Golem keeps
//! one). We keep a small journal per saga instead, because:
//!
//! - a saga outlives its session and the process: the audit log is sealed
//!   when a session terminates and may prune delta bodies by policy, while a
//!   saga must be resumable or compensable until it is final;
//! - resuming needs what the audit log does not hold: the definition, each
//!   committed step's output and undo data;
//! - reading one saga back is one small sequential file read, not a scan of
//!   a session's whole log;
//! - each record is durable (`fsync`) *before* the engine acts on it, which
//!   is what "never executed twice" rests on; the audit log batches its syncs.
//!
//! The audit log still records every transition (as `saga.*` events), so the
//! tamper-evident history and the resumable state are kept apart, each for its
//! own job.

use std::path::Path;

use crate::engine::{ProgressStore, SagaId, SagaRecord, StoreError};
use crate::journal::{FileJournal, JournalError};

/// A durable [`ProgressStore`] in a directory (`<state>/sagas` for the hypervisor).
#[derive(Debug)]
pub struct FileStore {
    journal: FileJournal,
}

impl FileStore {
    /// Opens (creating it if needed) the store in `dir`.
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the directory.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let journal = FileJournal::open(dir).map_err(|e| io("*", &e))?;
        Ok(FileStore { journal })
    }
}

fn io(saga: &str, e: &JournalError) -> StoreError {
    StoreError::Io {
        saga: saga.to_string(),
        message: e.to_string(),
    }
}

impl ProgressStore for FileStore {
    fn survives_restart(&self) -> bool {
        true
    }

    fn append(&self, saga: &SagaId, rec: &SagaRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt {
            saga: saga.to_string(),
            message: format!("cannot encode a {} record: {e}", rec.event_type()),
        })?;
        let id = saga.as_str();
        match self.journal.append(id, &bytes) {
            // The process that wrote the journal died mid-append: only the
            // writer cuts the torn tail (kept aside as evidence), never a
            // reader, which could mistake a record being written for one.
            Err(JournalError::TornTail { .. }) => {
                if let Some(r) = self.journal.repair(id).map_err(|e| io(id, &e))? {
                    tracing::warn!(saga = id, offset = r.torn_tail.offset, len = r.torn_tail.len,
                        evidence = %r.evidence.display(), "saga journal had a torn tail (crash); cut and kept aside");
                }
                self.journal.append(id, &bytes).map_err(|e| io(id, &e))
            }
            r => r.map_err(|e| io(id, &e)),
        }
    }

    /// Loads the saga's records, changing nothing. A torn tail (the process
    /// died while appending, or a writer is appending right now) is left
    /// out — a record being written was never acted on, since the engine
    /// acts only after an append returns; the next append cuts it. Damage
    /// anywhere else is an error, never skipped.
    fn load(&self, saga: &SagaId) -> Result<Vec<SagaRecord>, StoreError> {
        let id = saga.as_str();
        let loaded = match self.journal.load(id) {
            Ok(l) => l,
            Err(JournalError::NotFound { .. }) => return Ok(Vec::new()),
            Err(JournalError::Corrupt { offset, .. }) => {
                return Err(StoreError::Corrupt {
                    saga: id.to_string(),
                    message: format!("damaged record at byte {offset} of its journal"),
                });
            }
            Err(e) => return Err(io(id, &e)),
        };
        loaded
            .records
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
                    saga: id.to_string(),
                    message: format!("record {i} does not decode: {e}"),
                })
            })
            .collect()
    }

    fn list(&self) -> Result<Vec<SagaId>, StoreError> {
        let ids = self.journal.list().map_err(|e| io("*", &e))?;
        Ok(ids
            .into_iter()
            .filter_map(|s| SagaId::new(s).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::SagaState;

    fn rec() -> SagaRecord {
        SagaRecord::Finished {
            state: SagaState::Completed,
        }
    }

    #[test]
    fn records_survive_a_new_store_on_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let saga = SagaId::new("saga-1").unwrap();
        FileStore::open(dir.path())
            .unwrap()
            .append(&saga, &rec())
            .unwrap();
        let again = FileStore::open(dir.path()).unwrap();
        assert_eq!(again.load(&saga).unwrap(), vec![rec()]);
        assert_eq!(again.list().unwrap(), vec![saga]);
    }

    #[test]
    fn an_unknown_saga_has_no_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert!(
            store
                .load(&SagaId::new("nobody").unwrap())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue_after_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let saga = SagaId::new("saga-2").unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.append(&saga, &rec()).unwrap();
        let path = dir.path().join("saga-2.journal");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&bytes.clone()[..5]);
        std::fs::write(&path, bytes).unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load(&saga).unwrap(), vec![rec()]);
        store.append(&saga, &rec()).unwrap();
        assert_eq!(store.load(&saga).unwrap(), vec![rec(), rec()]);
    }

    #[test]
    fn a_record_that_is_not_json_is_corrupt_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let journal = FileJournal::open(dir.path()).unwrap();
        journal.append("saga-3", b"{not json").unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let err = store.load(&SagaId::new("saga-3").unwrap()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
}
