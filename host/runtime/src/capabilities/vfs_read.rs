//! `vfs-read`: read, list, stat, hash and ACLs in the caller's file space.

use ahv_core::Capability;
use ahv_governance::vfs::EntryKind;
use wasmtime::component::Linker;

use super::{Handles, Has, View};
use crate::adapters::{HostError, wit_access};
use crate::bindings::agent_hypervisor::agent::{types, vfs_read};
use crate::state::AgentState;

impl vfs_read::Host for View<'_, Handles> {
    fn read(&mut self, path: String) -> Result<Vec<u8>, HostError> {
        let ring = self.gate.admit(Capability::VfsRead, "read")?;
        let caller = self.gate.caller(ring);
        let files = &self.ctx.files;
        // A large file is read and hashed off the worker (16 MiB: ~12 ms).
        let large = files
            .stat(caller, &path)
            .is_ok_and(|s| s.size >= super::OFF_WORKER_READ_BYTES);
        if large {
            Ok(super::off_worker(|| files.read(caller, &path))?)
        } else {
            Ok(files.read(caller, &path)?)
        }
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<String>, HostError> {
        let ring = self.gate.admit(Capability::VfsRead, "list-dir")?;
        Ok(self.ctx.files.list(self.gate.caller(ring), &path)?)
    }

    fn stat(&mut self, path: String) -> Result<vfs_read::EntryStat, HostError> {
        let ring = self.gate.admit(Capability::VfsRead, "stat")?;
        let s = self.ctx.files.stat(self.gate.caller(ring), &path)?;
        let kind = match s.kind {
            EntryKind::File => vfs_read::EntryKind::File,
            EntryKind::Directory => vfs_read::EntryKind::Directory,
        };
        Ok(vfs_read::EntryStat { kind, size: s.size })
    }

    fn hash(&mut self, path: String) -> Result<String, HostError> {
        let ring = self.gate.admit(Capability::VfsRead, "hash")?;
        Ok(hex::encode(
            self.ctx.files.hash(self.gate.caller(ring), &path)?,
        ))
    }

    fn get_acl(&mut self, path: String) -> Result<types::Acl, HostError> {
        let ring = self.gate.admit(Capability::VfsRead, "get-acl")?;
        let acl = self.ctx.files.get_acl(self.gate.caller(ring), &path)?;
        Ok(types::Acl {
            owner: acl.owner.to_string(),
            read: wit_access(acl.read),
            write: wit_access(acl.write),
        })
    }
}

/// Links `vfs-read`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    vfs_read::add_to_linker::<_, Has<Handles>>(l, |s| View {
        ctx: &s.caps.handles,
        gate: &mut s.gate,
    })
}
