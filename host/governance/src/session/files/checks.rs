//! The checks every change passes before anything changes: ACL, vector
//! clock, quotas, and nesting.

use std::sync::atomic::Ordering;

use ahv_core::AgentId;
use cap_std::fs::Dir;

use crate::files::{Access, Acl, Caller};
use crate::path::PathError;
use crate::vclock::{ClockOrder, VectorClock};
use crate::vfs::VfsError;

use super::fs::extent_below;
use super::meta::FileMeta;
use super::namespace::{Area, AreaPath};
use super::{SessionFiles, Usage};

/// Most agents one [`Access::Agents`] list may name (a session has at most
/// 1000 participants).
pub const MAX_ACL_AGENTS: usize = 1000;

/// What an ACL check asks for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Need {
    Read,
    Write,
}

pub(super) fn private_acl(owner: &AgentId) -> Acl {
    Acl {
        owner: owner.clone(),
        read: Access::Owner,
        write: Access::Owner,
    }
}

/// The ACL of a new file: shared files are open to everyone; private files have none.
pub(super) fn creation_acl(who: Caller<'_>, key: &AreaPath) -> Option<Acl> {
    match key.area {
        Area::Shared => Some(Acl {
            owner: who.agent.clone(),
            read: Access::Everyone,
            write: Access::Everyone,
        }),
        Area::Private(_) => None,
    }
}

pub(super) fn describe(access: &Access) -> String {
    match access {
        Access::Everyone => "everyone".into(),
        Access::Owner => "the owner only".into(),
        Access::Agents(list) => {
            let names: Vec<&str> = list.iter().map(AgentId::as_str).collect();
            format!("the owner and {}", names.join(", "))
        }
    }
}

pub(super) fn check_access(
    who: Caller<'_>,
    meta: &FileMeta,
    path: &str,
    need: Need,
) -> Result<(), VfsError> {
    // Private files have no ACL: only their owner can name them.
    let Some(acl) = &meta.acl else {
        return Ok(());
    };
    let (access, what) = match need {
        Need::Read => (&acl.read, "read"),
        Need::Write => (&acl.write, "write"),
    };
    if access.allows(&acl.owner, who.agent) {
        return Ok(());
    }
    Err(VfsError::Denied {
        path: path.to_string(),
        reason: format!(
            "agent {} lacks {what} access (owner {}; {what} access: {})",
            who.agent,
            acl.owner,
            describe(access)
        ),
    })
}

/// Refuses to move directory `from` (in `dir`) to `to` when an entry below it
/// would get a guest path longer or deeper than a guest may name
/// ([`crate::path::MAX_PATH_BYTES`], [`crate::path::MAX_DEPTH`]): nesting
/// is bounded where trees are made, so every tree that exists can be named,
/// listed, deleted and copied into a snapshot.
///
/// # Errors
/// `InvalidPath` naming the limit; the I/O error of a part of the tree
/// that could not be read (`VfsError::io` of `op`, on `from`).
pub(super) fn check_nesting(
    op: &'static str,
    dir: &Dir,
    from: &AreaPath,
    to: &AreaPath,
) -> Result<(), VfsError> {
    use crate::path::{MAX_DEPTH, MAX_PATH_BYTES};
    let base = to.guest();
    let base_depth = base.split('/').count();
    // Looking deeper than the limit allows is pointless: one level beyond it
    // already refuses.
    let allowed = MAX_DEPTH.saturating_sub(base_depth);
    let extent =
        extent_below(dir, &from.rel, allowed + 1).map_err(|e| VfsError::io(op, from.guest(), e))?;
    let shown = || {
        let mut s: String = base.chars().take(64).collect();
        s.push_str("/…");
        s
    };
    if base_depth + extent.depth > MAX_DEPTH {
        return Err(PathError::TooDeep {
            path: shown(),
            depth: base_depth + extent.depth,
            max: MAX_DEPTH,
        }
        .into());
    }
    if base.len() + extent.bytes > MAX_PATH_BYTES {
        return Err(PathError::TooLong {
            len: base.len() + extent.bytes,
            max: MAX_PATH_BYTES,
        }
        .into());
    }
    Ok(())
}

impl SessionFiles {
    pub(super) fn check_clock(
        &self,
        agent: &AgentId,
        clock: &VectorClock,
        path: &str,
    ) -> Result<(), VfsError> {
        if !self.strict.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.clocks
            .check_write(agent, clock)
            .map_err(|e| VfsError::Conflict {
                path: path.to_string(),
                reason: format!(
                    "{} write: {e}",
                    if e.order == ClockOrder::Concurrent {
                        "concurrent"
                    } else {
                        "stale"
                    }
                ),
            })
    }

    /// Refuses a file of `new_size` bytes at `path` (replacing `old` bytes,
    /// or a new file) before anything changes.
    pub(super) fn check_quota(
        &self,
        usage: &Usage,
        path: &str,
        old: Option<u64>,
        new_size: u64,
    ) -> Result<(), VfsError> {
        let q = &self.quotas;
        let quota = |reason: String| VfsError::Quota {
            path: path.to_string(),
            reason,
        };
        if new_size > q.max_file_bytes {
            return Err(quota(format!(
                "file would be {new_size} bytes; the per-file limit is {}",
                q.max_file_bytes
            )));
        }
        let total = usage
            .bytes
            .saturating_sub(old.unwrap_or(0))
            .saturating_add(new_size);
        if total > q.max_total_bytes {
            return Err(quota(format!(
                "the session's files would total {total} bytes ({} now); the limit is {}",
                usage.bytes, q.max_total_bytes
            )));
        }
        if old.is_none() && usage.files >= q.max_files {
            return Err(quota(format!(
                "the session has {} files; the limit is {}",
                usage.files, q.max_files
            )));
        }
        Ok(())
    }

    /// Refuses a change that would make `new` directories (beyond those the
    /// session has) before anything changes.
    pub(super) fn check_dirs(&self, usage: &Usage, path: &str, new: usize) -> Result<(), VfsError> {
        let max = self.quotas.max_dirs;
        let after = usage.dirs.saturating_add(new as u64);
        if new > 0 && after > max {
            return Err(VfsError::Quota {
                path: path.to_string(),
                reason: format!(
                    "{new} new director{} would make {after}; the session's limit is {max}",
                    if new == 1 { "y" } else { "ies" }
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::files::test_support::*;

    #[test]
    fn shared_files_follow_their_acl() {
        let e = env();
        let (a, b, c) = (id("alice"), id("bob"), id("carol"));
        e.files.set_strict(false);
        e.files.write(ring2(&a), "shared/doc", b"v1").unwrap();
        assert_eq!(
            e.files.get_acl(ring2(&b), "shared/doc").unwrap(),
            acl(&a, Access::Everyone, Access::Everyone),
            "creator owns it, everyone may read and write"
        );
        e.files
            .write(ring2(&b), "shared/doc", b"v2 by bob")
            .unwrap();
        e.files
            .set_acl(
                ring2(&a),
                "shared/doc",
                acl(&a, Access::Everyone, Access::Owner),
            )
            .unwrap();
        assert_eq!(e.files.read(ring2(&b), "shared/doc").unwrap(), b"v2 by bob");
        let err = e.files.write(ring2(&b), "shared/doc", b"v3").unwrap_err();
        match &err {
            VfsError::Denied { path, reason } => {
                assert_eq!(path, "shared/doc");
                assert!(
                    reason.contains("bob") && reason.contains("write"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(is_denied(e.files.append(ring2(&b), "shared/doc", b"+")));
        assert!(is_denied(e.files.truncate(ring2(&b), "shared/doc", 0)));
        assert!(is_denied(e.files.delete(ring2(&b), "shared/doc")));
        assert!(is_denied(e.files.rename(
            ring2(&b),
            "shared/doc",
            "shared/d2"
        )));
        assert!(is_denied(e.files.rename(ring2(&b), "shared/doc", "stolen")));
        // Ring 1 is not an ACL bypass; it may change the ACL (recorded) instead.
        assert!(is_denied(e.files.write(ring1(&b), "shared/doc", b"v3")));
        e.files
            .write(ring2(&a), "shared/doc", b"v3 by alice")
            .unwrap();

        e.files
            .set_acl(
                ring2(&a),
                "shared/doc",
                acl(&a, Access::Agents(vec![c.clone()]), Access::Owner),
            )
            .unwrap();
        let err = e.files.read(ring2(&b), "shared/doc").unwrap_err();
        assert!(
            matches!(&err, VfsError::Denied { reason, .. } if reason.contains("read") && reason.contains("carol")),
            "{err:?}"
        );
        assert!(is_denied(e.files.stat(ring2(&b), "shared/doc")));
        assert!(is_denied(e.files.hash(ring2(&b), "shared/doc")));
        assert_eq!(
            e.files.read(ring2(&c), "shared/doc").unwrap(),
            b"v3 by alice"
        );
        // Names stay visible.
        assert_eq!(e.files.list(ring2(&b), "shared").unwrap(), ["doc"]);

        // The ACL moves with the file.
        e.files
            .rename(ring2(&a), "shared/doc", "shared/sub/doc")
            .unwrap();
        assert_eq!(
            e.files.get_acl(ring2(&a), "shared/sub/doc").unwrap(),
            acl(&a, Access::Agents(vec![c.clone()]), Access::Owner)
        );
        assert!(is_denied(e.files.read(ring2(&b), "shared/sub/doc")));
        // A directory move needs write access to every file below it.
        assert!(is_denied(e.files.rename(
            ring2(&b),
            "shared/sub",
            "shared/mine"
        )));
        e.files
            .rename(ring2(&a), "shared/sub", "shared/sub2")
            .unwrap();
        assert_eq!(
            e.files.read(ring2(&c), "shared/sub2/doc").unwrap(),
            b"v3 by alice"
        );
    }

    #[test]
    fn acl_changes_need_the_owner_or_ring_1() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        e.files.write(ring2(&a), "shared/doc", b"x").unwrap();
        let open = acl(&a, Access::Everyone, Access::Everyone);
        let closed = acl(&a, Access::Owner, Access::Owner);
        let err = e
            .files
            .set_acl(ring2(&b), "shared/doc", closed.clone())
            .unwrap_err();
        assert!(
            matches!(&err, VfsError::Denied { path, reason } if path == "shared/doc" && reason.contains("bob") && reason.contains("owner")),
            "{err:?}"
        );
        let c = e
            .files
            .set_acl(ring1(&b), "shared/doc", closed.clone())
            .unwrap();
        assert_eq!(c.op, FileOp::SetAcl);
        assert_eq!(c.after, Some(sha256(b"x")));
        assert_eq!(e.files.get_acl(ring2(&a), "shared/doc").unwrap(), closed);
        // Only ring ≤ 1 changes the owner, even for the owner itself.
        let to_bob = acl(&b, Access::Owner, Access::Owner);
        assert!(is_denied(e.files.set_acl(
            ring2(&a),
            "shared/doc",
            to_bob.clone()
        )));
        e.files
            .set_acl(ring2(&a), "shared/doc", open.clone())
            .unwrap();
        let root = Caller::untraced(&b, Ring::Root);
        e.files.set_acl(root, "shared/doc", to_bob.clone()).unwrap();
        assert_eq!(e.files.get_acl(ring2(&a), "shared/doc").unwrap(), to_bob);
        assert!(is_denied(e.files.read(ring2(&a), "shared/doc")));

        // Private files: owner-only, no ACL to change.
        e.files.write(ring2(&a), "mine", b"m").unwrap();
        assert_eq!(
            e.files.get_acl(ring2(&a), "mine").unwrap(),
            acl(&a, Access::Owner, Access::Owner)
        );
        assert!(is_denied(e.files.set_acl(ring2(&a), "mine", open.clone())));
        assert!(is_denied(e.files.set_acl(ring1(&a), "mine", open.clone())));
        // Directories carry no ACL; missing files are NotFound.
        e.files.create_dir(ring2(&a), "shared/dir").unwrap();
        assert!(is_denied(e.files.get_acl(ring2(&a), "shared/dir")));
        assert!(is_denied(e.files.set_acl(
            ring1(&a),
            "shared/dir",
            open.clone()
        )));
        assert!(matches!(
            e.files.get_acl(ring2(&a), "shared/none"),
            Err(VfsError::NotFound { .. })
        ));
        // ACL lists are bounded.
        let many: Vec<AgentId> = (0..=MAX_ACL_AGENTS).map(|i| id(&format!("a{i}"))).collect();
        e.files.write(ring2(&a), "shared/other", b"o").unwrap();
        assert!(matches!(
            e.files.set_acl(
                ring2(&a),
                "shared/other",
                acl(&a, Access::Agents(many), Access::Owner)
            ),
            Err(VfsError::Quota { .. })
        ));
    }

    /// The ids an ACL lists count against the session's byte quota, as
    /// contents do (each its length plus `ACL_ID_OVERHEAD`): a guest setting
    /// lists of 1,000 long ids on file after file (~0.5 MB each) is refused
    /// once its files' bytes reach the quota.
    #[test]
    fn acl_lists_count_against_the_byte_quota() {
        use super::super::meta::ACL_ID_OVERHEAD;
        let e = env_with(FileQuotas {
            max_total_bytes: 4096,
            ..FileQuotas::default()
        });
        let a = id("alice");
        e.files.set_strict(false);
        e.files.write(ring2(&a), "shared/f", b"0123456789").unwrap();
        // Ids of 100 bytes: each counts 100 + the overhead.
        let long = |n: usize, tag: &str| -> Vec<AgentId> {
            (0..n)
                .map(|i| id(&format!("{tag}-{i:04}-{}", "x".repeat(93))))
                .collect()
        };
        let per_id = 100 + ACL_ID_OVERHEAD;
        let fits = acl(&a, Access::Agents(long(20, "r")), Access::Owner);
        e.files
            .set_acl(ring2(&a), "shared/f", fits.clone())
            .unwrap();
        assert_eq!(e.files.usage().bytes, 10 + 20 * per_id);
        // Eight more would take it past 4,096: refused, nothing changed.
        let over = acl(
            &a,
            Access::Agents(long(20, "r")),
            Access::Agents(long(8, "w")),
        );
        let total = 10 + 28 * per_id;
        let err = e.files.set_acl(ring2(&a), "shared/f", over).unwrap_err();
        assert!(
            matches!(&err, VfsError::Quota { reason, .. } if reason.contains(&total.to_string()) && reason.contains("4096")),
            "{err:?}"
        );
        assert_eq!(e.files.get_acl(ring2(&a), "shared/f").unwrap(), fits);
        // A content write counts the ACL too.
        let room = 4096 - (10 + 20 * per_id);
        let err = e
            .files
            .write(ring2(&a), "shared/g", &vec![0; room as usize + 1])
            .unwrap_err();
        assert!(matches!(err, VfsError::Quota { .. }), "{err:?}");
        // A smaller ACL is always allowed, and gives the bytes back.
        let small = acl(&a, Access::Everyone, Access::Owner);
        e.files.set_acl(ring2(&a), "shared/f", small).unwrap();
        assert_eq!(e.files.usage().bytes, 10);
        e.files.write(ring2(&a), "shared/g", &[0; 1100]).unwrap();
        // Deleting the file gives back its ACL's bytes too.
        let some = acl(&a, Access::Agents(long(10, "r")), Access::Owner);
        e.files.set_acl(ring2(&a), "shared/f", some).unwrap();
        assert_eq!(e.files.usage().bytes, 10 + 1100 + 10 * per_id);
        e.files.delete(ring2(&a), "shared/f").unwrap();
        assert_eq!(e.files.usage().bytes, 1100);
    }

    /// The undo records of a file keep its ACLs (the state before and
    /// after each change): they count with the undo log's bytes, which the
    /// byte quota bounds, so writing a file, giving it a long ACL and
    /// deleting it, over and over, keeps at most a quota's worth of ACLs
    /// (before, 200 rounds under a 4 KiB quota kept ~600 KB, uncounted).
    /// A rename of a directory keeps every moved file's state for its
    /// undo. Those states count against the byte quota as blobs do, so
    /// renaming a big directory again and again cannot grow the undo log's
    /// memory past it (before, each record counted 0 bytes: 10,000 records
    /// of a 10,000-file directory's states, ~57 GB, were allowed).
    #[test]
    fn file_states_kept_by_rename_records_are_bounded_by_the_quota() {
        let quota = 64 << 10;
        let e = env_with(FileQuotas {
            max_total_bytes: quota,
            ..FileQuotas::default()
        });
        let a = id("alice");
        e.files.set_strict(false);
        for i in 0..200 {
            e.files.write(ring2(&a), &format!("d0/f{i}"), b"x").unwrap();
        }
        for round in 0..50 {
            let (from, to) = (format!("d{round}"), format!("d{}", round + 1));
            e.files.rename(ring2(&a), &from, &to).unwrap();
        }
        let inner = e.files.lock();
        let renames = inner
            .db
            .log
            .iter()
            .filter(|r| r.op == FileOp::Rename)
            .count();
        assert!(renames < 5, "{renames} rename records kept");
        let last = inner.db.log.back().map_or(0, |r| r.blob_bytes);
        assert!(
            last > 200 * 100,
            "a rename of 200 files counts {last} bytes"
        );
        assert!(
            inner.db.log_bytes <= quota + last,
            "the undo log counts {} bytes",
            inner.db.log_bytes
        );
    }

    #[test]
    fn acls_kept_by_undo_records_are_bounded_by_the_quota() {
        let e = env_with(FileQuotas {
            max_total_bytes: 4096,
            ..FileQuotas::default()
        });
        let a = id("alice");
        e.files.set_strict(false);
        let ids: Vec<AgentId> = (0..20)
            .map(|i| id(&format!("r-{i:04}-{}", "x".repeat(93))))
            .collect();
        for round in 0..200 {
            let path = format!("shared/f{round}");
            e.files.write(ring2(&a), &path, b"x").unwrap();
            let long = acl(&a, Access::Agents(ids.clone()), Access::Owner);
            e.files.set_acl(ring2(&a), &path, long).unwrap();
            e.files.delete(ring2(&a), &path).unwrap();
        }
        assert_eq!(e.files.usage().bytes, 0);
        {
            // One record may weigh more than the quota (an ACL change keeps
            // both lists): it is kept, so the change can still be undone.
            e.files.write(ring2(&a), "shared/g", b"x").unwrap();
            let first = acl(&a, Access::Agents(ids.clone()), Access::Owner);
            e.files
                .set_acl(ring2(&a), "shared/g", first.clone())
                .unwrap();
            let other: Vec<AgentId> = (0..20)
                .map(|i| id(&format!("w-{i:04}-{}", "x".repeat(93))))
                .collect();
            let second = acl(&a, Access::Agents(other), Access::Owner);
            let change = e.files.set_acl(ring2(&a), "shared/g", second).unwrap();
            let undo = change.undo.expect("the record is kept");
            e.files.undo(undo).unwrap();
            assert_eq!(e.files.get_acl(ring2(&a), "shared/g").unwrap(), first);
            e.files.delete(ring2(&a), "shared/g").unwrap();
        }
        let inner = e.files.lock();
        let kept: u64 = inner.db.log.iter().map(|r| r.undo.acl_bytes()).sum();
        let one_record = 2 * 20 * (100 + super::super::meta::ACL_ID_OVERHEAD);
        assert!(
            kept <= 4096 + one_record,
            "the undo log keeps {kept} bytes of ACLs"
        );
        assert!(
            inner.db.log_bytes <= 4096 + one_record,
            "{}",
            inner.db.log_bytes
        );
    }

    #[test]
    fn quotas_refuse_before_anything_changes() {
        let e = env_with(FileQuotas {
            max_file_bytes: 10,
            max_total_bytes: 25,
            max_files: 3,
            ..FileQuotas::default()
        });
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        e.files.write(ring2(&a), "f1", &[1; 10]).unwrap();
        e.files.write(ring2(&b), "shared/f2", &[2; 10]).unwrap();
        let full = e.state();
        let usage = e.files.usage();
        assert_eq!(
            usage,
            Usage {
                files: 2,
                bytes: 20,
                dirs: 0,
            }
        );

        let err = e.files.write(ring2(&b), "f3", &[3; 6]).unwrap_err();
        assert!(
            matches!(&err, VfsError::Quota { path, reason } if path == "f3" && reason.contains("26") && reason.contains("25")),
            "{err:?}"
        );
        let err = e.files.write(ring2(&a), "f1", &[9; 11]).unwrap_err();
        assert!(
            matches!(&err, VfsError::Quota { path, reason } if path == "f1" && reason.contains("11") && reason.contains("10")),
            "{err:?}"
        );
        assert!(matches!(
            e.files.append(ring2(&a), "shared/f2", b"x"),
            Err(VfsError::Quota { .. })
        ));
        assert!(matches!(
            e.files.append(ring2(&a), "new", &[0; 6]),
            Err(VfsError::Quota { .. })
        ));
        assert_eq!(e.state(), full, "refusals change nothing, byte for byte");
        assert_eq!(e.files.usage(), usage);

        e.files.write(ring2(&b), "f3", &[3; 5]).unwrap();
        let err = e.files.write(ring2(&a), "f4", b"").unwrap_err();
        assert!(
            matches!(&err, VfsError::Quota { reason, .. } if reason.contains("3 files")),
            "{err:?}"
        );
        // Replacing a file counts only the difference.
        e.files.write(ring2(&a), "f1", &[1; 5]).unwrap();
        e.files.write(ring2(&b), "shared/f2", &[2; 10]).unwrap();
        e.files.append(ring2(&a), "f1", &[1; 5]).unwrap();
        assert_eq!(
            e.files.usage(),
            Usage {
                files: 3,
                bytes: 25,
                dirs: 0,
            }
        );
        // Deleting frees room.
        e.files.delete(ring2(&b), "f3").unwrap();
        e.files.write(ring2(&a), "f4", &[4; 5]).unwrap();
        assert_eq!(
            e.files.usage(),
            Usage {
                files: 3,
                bytes: 25,
                dirs: 0,
            }
        );
        assert_eq!(e.files.read(ring2(&a), "f1").unwrap(), [1; 10]);
        assert_eq!(e.files.read(ring2(&a), "shared/f2").unwrap(), [2; 10]);
    }

    #[test]
    fn strict_mode_refuses_writers_that_missed_the_latest_write() {
        let e = env();
        let (a, b, c) = (id("alice"), id("bob"), id("carol"));
        e.files.write(ring2(&a), "shared/doc", b"a1").unwrap();
        let err = e.files.write(ring2(&b), "shared/doc", b"b1").unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { path, reason } if path == "shared/doc" && reason.starts_with("stale")),
            "{err:?}"
        );
        for refused in [
            e.files.append(ring2(&b), "shared/doc", b"+"),
            e.files.truncate(ring2(&b), "shared/doc", 0),
            e.files.delete(ring2(&b), "shared/doc"),
            e.files.rename(ring2(&b), "shared/doc", "shared/moved"),
            e.files.set_acl(
                ring1(&b),
                "shared/doc",
                acl(&a, Access::Owner, Access::Owner),
            ),
        ] {
            assert!(
                matches!(refused, Err(VfsError::Conflict { .. })),
                "{refused:?}"
            );
        }
        assert_eq!(e.files.read(ring2(&a), "shared/doc").unwrap(), b"a1");
        // After reading, bob has seen alice's write.
        assert_eq!(e.files.read(ring2(&b), "shared/doc").unwrap(), b"a1");
        e.files.write(ring2(&b), "shared/doc", b"b1").unwrap();
        // Now alice is the stale one; a stat or hash counts as a read.
        assert!(matches!(
            e.files.write(ring2(&a), "shared/doc", b"a2"),
            Err(VfsError::Conflict { .. })
        ));
        e.files.hash(ring2(&a), "shared/doc").unwrap();
        e.files.write(ring2(&a), "shared/doc", b"a2").unwrap();
        // Concurrent: carol has seen something alice's file never saw, and not the latest.
        e.files.stat(ring2(&c), "shared/doc").unwrap();
        e.files.write(ring2(&a), "shared/doc", b"a3").unwrap();
        e.files.write(ring2(&c), "shared/other", b"c1").unwrap();
        let err = e.files.write(ring2(&c), "shared/doc", b"c2").unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { reason, .. } if reason.starts_with("concurrent")),
            "{err:?}"
        );
        // Eventual mode accepts, and still advances the clocks.
        e.files.set_strict(false);
        e.files.write(ring2(&c), "shared/doc", b"c2").unwrap();
        e.files.set_strict(true);
        assert!(matches!(
            e.files.write(ring2(&a), "shared/doc", b"a4"),
            Err(VfsError::Conflict { .. })
        ));
        // Private files only ever see their owner.
        e.files.write(ring2(&b), "p", b"1").unwrap();
        e.files.write(ring2(&b), "p", b"2").unwrap();
    }

    #[test]
    fn concurrent_clocks_are_reported_as_such() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.write(ring2(&a), "shared/x", b"a").unwrap();
        e.files.read(ring2(&b), "shared/x").unwrap();
        e.files.write(ring2(&b), "shared/x", b"b").unwrap();
        // alice writes elsewhere: her clock now has an entry x's clock lacks.
        e.files.write(ring2(&a), "shared/y", b"a").unwrap();
        let err = e.files.write(ring2(&a), "shared/x", b"a2").unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { reason, .. } if reason.starts_with("concurrent")),
            "{err:?}"
        );
    }

    /// The hostile sequence that made every later snapshot fail: two deep
    /// trees and one rename that nests one into the other. Nesting is
    /// bounded where it happens, so the rename is refused and snapshots go
    /// on working for everyone.
    #[test]
    fn renames_never_nest_trees_deeper_than_a_guest_path() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        let (wa, wb) = (ring2(&a), ring2(&b));
        e.files.set_strict(false);
        let deep = |p: &str| {
            (1..=crate::path::MAX_DEPTH)
                .map(|i| format!("{p}{i}"))
                .collect::<Vec<_>>()
                .join("/")
        };
        e.files.create_dir(wa, &deep("a")).unwrap();
        e.files.create_dir(wa, &deep("b")).unwrap();
        e.files
            .write(
                wa,
                &format!("{}/f", deep("c").rsplit_once('/').unwrap().0),
                b"f",
            )
            .unwrap();
        e.files.write(wb, "shared/doc", b"bob's").unwrap();
        let before = e.state();
        let too_deep = |r: Result<FileChange, VfsError>| {
            matches!(r, Err(VfsError::InvalidPath(PathError::TooDeep { .. })))
        };
        // Into another deep tree, one level deeper, into shared/ (one more
        // component).
        assert!(too_deep(e.files.rename(
            wa,
            "a1",
            &format!("{}/x", deep("b"))
        )));
        assert!(too_deep(e.files.rename(wa, "a1/a2", "b1/b2/n")));
        assert!(too_deep(e.files.rename(wa, "a1", "shared/a1")));
        assert!(
            too_deep(e.files.rename(wa, "c1", "shared/c1")),
            "files count too"
        );
        assert_eq!(e.state(), before, "a refused rename changes nothing");
        // Exactly as deep as a guest path may be is fine.
        e.files.rename(wa, "a1/a2", "z").unwrap();
        e.files.rename(wa, "z", "y/z").unwrap();
        e.files
            .list(wa, &deep("a").replacen("a1/a2", "y/z", 1))
            .unwrap();
        // Too long in bytes: four 200-byte names below the one moved under
        // two more.
        let long = |c: char| c.to_string().repeat(200);
        let tree = (0..5).map(|_| long('l')).collect::<Vec<_>>().join("/");
        e.files.create_dir(wa, &tree).unwrap();
        assert!(matches!(
            e.files
                .rename(wa, &long('l'), &format!("{0}/{0}/x", long('m'))),
            Err(VfsError::InvalidPath(PathError::TooLong { .. }))
        ));
        // Snapshots work for everyone, and restore.
        let snap = e.files.snapshot().unwrap();
        e.files.write(wb, "shared/doc", b"changed").unwrap();
        e.files.restore(snap.id).unwrap();
        assert_eq!(e.files.read(wb, "shared/doc").unwrap(), b"bob's");
    }

    #[test]
    fn directories_count_against_their_quota_and_are_undone() {
        let e = env_with(FileQuotas {
            max_dirs: 3,
            ..FileQuotas::default()
        });
        let a = id("alice");
        let w = ring2(&a);
        let c = e.files.create_dir(w, "a/b").unwrap().unwrap();
        assert_eq!(
            (c.op, c.path.as_str(), c.size),
            (FileOp::CreateDir, "a/b", 2)
        );
        assert_eq!(
            e.files.create_dir(w, "a/b").unwrap(),
            None,
            "exists: no change"
        );
        assert_eq!(e.files.create_dir(w, "").unwrap(), None, "a root");
        assert_eq!(e.files.usage().dirs, 2);
        let before = e.state();
        fn quota<T: fmt::Debug>(r: Result<T, VfsError>) -> String {
            match r {
                Err(VfsError::Quota { reason, .. }) => reason,
                other => panic!("not a quota refusal: {other:?}"),
            }
        }
        let why = quota(e.files.create_dir(w, "a/c/d"));
        assert!(why.contains("2 new directories would make 4"), "{why}");
        quota(e.files.write(w, "y/z/f", b"f"));
        assert_eq!(e.state(), before, "refusals change nothing");
        e.files.write(w, "x/f", b"f").unwrap();
        e.files.write(w, "a/b/f", b"f").unwrap();
        assert_eq!(e.files.usage().dirs, 3);
        quota(e.files.rename(w, "a/b/f", "q/f"));
        quota(e.files.create_dir(w, "shared/s"));
        // Files are not directories, and the other way round.
        assert!(matches!(
            e.files.create_dir(w, "x/f"),
            Err(VfsError::AlreadyExists { .. })
        ));
        // Undo: refused while the directory holds a file, then complete.
        let err = e.files.undo(c.undo.unwrap()).unwrap_err();
        assert!(matches!(err, VfsError::Conflict { .. }), "{err:?}");
        e.files.delete(w, "a/b/f").unwrap();
        e.files.undo(c.undo.unwrap()).unwrap();
        assert!(!e.files_dir().join("agents/alice/a").exists());
        e.files.delete(w, "x/f").unwrap();
        e.files.delete(w, "x").unwrap();
        let roots: Tree = [("agents", "dir"), ("shared", "dir")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        assert_eq!(e.state().0, roots);
        assert_eq!(e.files.usage(), Usage::default());
        // A planted symlink is not a directory to create.
        std::os::unix::fs::symlink("/tmp", e.files_dir().join("shared/l")).unwrap();
        assert!(is_denied(e.files.create_dir(w, "shared/l")));
        assert!(matches!(
            e.files.create_dir(w, "shared/l/x"),
            Err(VfsError::Denied { .. })
        ));
    }
}
