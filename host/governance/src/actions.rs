//! Host-registered actions: reversible ones (with an undo the host keeps) and
//! non-reversible effects.
//!
//! The registry is empty by default: an agent can run only what the host
//! registered. Guests reach reversible actions through the `actions`
//! capability (ring 2 and below) and effects through `effects` (ring 1 and
//! below). [`builtin`] has the two actions the `ahv` CLI offers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ahv_core::{AgentId, Clock, IdError, Ring, SystemClock, TraceId};
use thiserror::Error;

use crate::files::{Caller, FileSpace};
use crate::vfs::VfsError;

/// Largest argument string an action accepts, in bytes.
pub const MAX_ARGS_BYTES: usize = 64 * 1024;

/// What an action may use: who called it and that agent's files (through
/// the same governed file space as its `vfs-*` calls: ACLs, quotas, undo).
#[derive(Clone, Copy)]
pub struct ActionContext<'a> {
    /// The calling agent.
    pub agent: &'a AgentId,
    /// The calling agent's current ring.
    pub ring: Ring,
    /// The trace id of the call.
    pub trace: TraceId,
    /// The calling agent's files.
    pub files: &'a dyn FileSpace,
}

impl<'a> ActionContext<'a> {
    /// The caller, as file operations name it.
    pub fn caller(&self) -> Caller<'a> {
        Caller {
            agent: self.agent,
            ring: self.ring,
            trace: self.trace,
        }
    }
}

/// The result of a reversible action: its output for the guest and the data
/// needed to undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// Returned to the guest.
    pub output: String,
    /// Kept by the host; passed back to [`ReversibleAction::compensate`].
    pub undo: String,
}

/// An action with an undo.
pub trait ReversibleAction: Send + Sync {
    /// One line saying what the action does.
    fn description(&self) -> &str;
    /// Does the work.
    ///
    /// # Errors
    /// [`ActionError`] when the arguments are bad or the work fails.
    fn execute(&self, ctx: ActionContext<'_>, args: &str) -> Result<Executed, ActionError>;
    /// Undoes one earlier execution, given its `undo` data.
    ///
    /// # Errors
    /// [`ActionError`] when the undo is no longer possible.
    fn compensate(&self, ctx: ActionContext<'_>, undo: &str) -> Result<(), ActionError>;
}

/// An action that cannot be undone.
pub trait Effect: Send + Sync {
    /// One line saying what the effect does.
    fn description(&self) -> &str;
    /// Does the work and returns its output for the guest.
    ///
    /// # Errors
    /// [`ActionError`] when the arguments are bad or the work fails.
    fn execute(&self, ctx: ActionContext<'_>, args: &str) -> Result<String, ActionError>;
}

/// Why an action was refused or failed.
#[derive(Debug, Error)]
pub enum ActionError {
    /// No action of that kind is registered under the name.
    #[error("no {kind} named {name:?} is registered")]
    Unknown {
        /// `action` or `effect`.
        kind: &'static str,
        /// The name asked for (truncated).
        name: String,
    },
    /// The arguments were refused.
    #[error("{name}: bad arguments: {reason}")]
    InvalidArgs {
        /// The action.
        name: String,
        /// Why.
        reason: String,
    },
    /// The action ran and failed.
    #[error("{name} failed: {reason}")]
    Failed {
        /// The action.
        name: String,
        /// Why.
        reason: String,
    },
    /// The action's file work failed.
    #[error("{name}: {source}")]
    Vfs {
        /// The action.
        name: String,
        /// The VFS error.
        #[source]
        source: VfsError,
    },
    /// Registration with a bad name.
    #[error("action name: {0}")]
    BadName(#[from] IdError),
    /// Registration under a name already taken.
    #[error("an action or effect named {name:?} is already registered")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// Registration with terms that cannot be honoured.
    #[error("{name}: bad terms: {reason}")]
    InvalidTerms {
        /// The action.
        name: String,
        /// Why.
        reason: String,
    },
    /// Compensation asked for after the action's undo window closed.
    #[error("{name}: the undo window of {window:?} closed ({age:?} after the invocation)")]
    UndoWindowClosed {
        /// The action.
        name: String,
        /// Its undo window.
        window: Duration,
        /// How long ago it was invoked.
        age: Duration,
    },
}

/// How completely a reversible action's undo restores what it changed
/// (SEMANTICS.md, "Rings": both need ring 2; their risk weights differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reversibility {
    /// The undo restores everything the action changed.
    #[default]
    Full,
    /// The undo restores part of it (some consequence remains).
    Partial,
}

impl Reversibility {
    /// Lower-case name (`full`, `partial`).
    pub const fn name(self) -> &'static str {
        match self {
            Reversibility::Full => "full",
            Reversibility::Partial => "partial",
        }
    }
}

impl fmt::Display for Reversibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The terms a reversible action is registered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActionTerms {
    /// How completely it can be undone (default `Full`).
    pub reversibility: Reversibility,
    /// How long after an invocation it can still be undone (default: no limit).
    pub undo_window: Option<Duration>,
}

impl ActionTerms {
    /// The window in milliseconds, 0 for no limit (the `action.invoked` field).
    pub fn undo_window_ms(&self) -> u64 {
        self.undo_window
            .map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A registered reversible action and its terms.
#[derive(Clone)]
struct Registered {
    action: Arc<dyn ReversibleAction>,
    terms: ActionTerms,
}

/// A performed reversible action, as the host keeps it for compensation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoRecord {
    /// The action's name.
    pub action: String,
    /// The agent that ran it.
    pub agent: AgentId,
    /// What the action returned.
    pub output: String,
    /// The action's undo data.
    pub undo: String,
    /// When it ran, on the registry's clock (its undo window starts here).
    pub at: Duration,
    /// The session files it changed (guest paths, in the caller's
    /// namespace, first change first), when it ran in a session; a saga
    /// keeps them so that a restarted host can put them back.
    pub touched: Vec<String>,
}

/// The actions and effects a host offers. Empty by default (grants nothing).
/// Undo windows are measured on its clock (the system clock unless
/// [`ActionRegistry::with_clock`] sets another).
#[derive(Clone)]
pub struct ActionRegistry {
    reversible: BTreeMap<String, Registered>,
    effects: BTreeMap<String, Arc<dyn Effect>>,
    clock: Arc<dyn Clock>,
}

impl Default for ActionRegistry {
    fn default() -> Self {
        ActionRegistry {
            reversible: BTreeMap::new(),
            effects: BTreeMap::new(),
            clock: Arc::new(SystemClock::default()),
        }
    }
}

impl fmt::Debug for ActionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActionRegistry")
            .field("reversible", &self.reversible.keys().collect::<Vec<_>>())
            .field("effects", &self.effects.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn check_args(name: &str, args: &str) -> Result<(), ActionError> {
    if args.len() > MAX_ARGS_BYTES {
        return Err(ActionError::InvalidArgs {
            name: name.to_string(),
            reason: format!("{} bytes; the limit is {MAX_ARGS_BYTES}", args.len()),
        });
    }
    Ok(())
}

fn unknown(kind: &'static str, name: &str) -> ActionError {
    ActionError::Unknown {
        kind,
        name: name.chars().take(64).collect(),
    }
}

impl ActionRegistry {
    /// An empty registry.
    pub fn new() -> ActionRegistry {
        ActionRegistry::default()
    }

    fn check_name(&self, name: &str) -> Result<(), ActionError> {
        AgentId::new(name)?;
        if self.reversible.contains_key(name) || self.effects.contains_key(name) {
            return Err(ActionError::Duplicate {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Measures undo windows (and stamps [`UndoRecord::at`]) on `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> ActionRegistry {
        self.clock = clock;
        self
    }

    /// Registers a reversible action under `name` (validated like an agent
    /// id), fully reversible with no undo window.
    ///
    /// # Errors
    /// `BadName` or `Duplicate`.
    pub fn register_reversible(
        &mut self,
        name: &str,
        action: impl ReversibleAction + 'static,
    ) -> Result<&mut Self, ActionError> {
        self.register_reversible_with(name, action, ActionTerms::default())
    }

    /// Registers a reversible action under `name` with its reversibility
    /// and undo window.
    ///
    /// # Errors
    /// `BadName`, `Duplicate`, or `InvalidTerms` for a zero undo window
    /// (an action that could never be undone is an effect).
    pub fn register_reversible_with(
        &mut self,
        name: &str,
        action: impl ReversibleAction + 'static,
        terms: ActionTerms,
    ) -> Result<&mut Self, ActionError> {
        self.check_name(name)?;
        if terms.undo_window.is_some_and(|w| w.is_zero()) {
            return Err(ActionError::InvalidTerms {
                name: name.to_string(),
                reason: "an undo window of zero: register it as an effect".into(),
            });
        }
        self.reversible.insert(
            name.to_string(),
            Registered {
                action: Arc::new(action),
                terms,
            },
        );
        Ok(self)
    }

    /// The terms of the reversible action `name`, if it is registered.
    pub fn terms(&self, name: &str) -> Option<ActionTerms> {
        self.reversible.get(name).map(|r| r.terms)
    }

    /// Registers a non-reversible effect under `name`.
    ///
    /// # Errors
    /// `BadName` or `Duplicate`.
    pub fn register_effect(
        &mut self,
        name: &str,
        effect: impl Effect + 'static,
    ) -> Result<&mut Self, ActionError> {
        self.check_name(name)?;
        self.effects.insert(name.to_string(), Arc::new(effect));
        Ok(self)
    }

    /// The same registry cut down to the named actions and effects: the
    /// implementations are shared (`Arc`), every other name is unknown to the
    /// result, exactly as if it had never been registered. Used for an
    /// agent's grants in a policy file.
    ///
    /// # Errors
    /// [`ActionError::Unknown`] for a name that is not registered here (of
    /// that kind: an effect's name in `actions` is unknown too), so that a
    /// misspelt grant is refused instead of silently granting nothing.
    pub fn restricted<'a>(
        &self,
        actions: impl IntoIterator<Item = &'a str>,
        effects: impl IntoIterator<Item = &'a str>,
    ) -> Result<ActionRegistry, ActionError> {
        let mut out = ActionRegistry::new().with_clock(self.clock.clone());
        for name in actions {
            let a = self
                .reversible
                .get(name)
                .ok_or_else(|| unknown("action", name))?;
            out.reversible.insert(name.to_string(), a.clone());
        }
        for name in effects {
            let e = self
                .effects
                .get(name)
                .ok_or_else(|| unknown("effect", name))?;
            out.effects.insert(name.to_string(), e.clone());
        }
        Ok(out)
    }

    /// Names of the reversible actions.
    pub fn reversible_names(&self) -> Vec<String> {
        self.reversible.keys().cloned().collect()
    }

    /// Names of the effects.
    pub fn effect_names(&self) -> Vec<String> {
        self.effects.keys().cloned().collect()
    }

    /// (name, kind, description) of every action and effect, for help
    /// texts; the kind of a reversible action names its level
    /// (`reversible (full)`, `reversible (partial)`), an effect's is `effect`.
    pub fn describe(&self) -> Vec<(String, &'static str, String)> {
        let r = self.reversible.iter().map(|(n, a)| {
            let kind = match a.terms.reversibility {
                Reversibility::Full => "reversible (full)",
                Reversibility::Partial => "reversible (partial)",
            };
            (n.clone(), kind, a.action.description().to_string())
        });
        let e = self
            .effects
            .iter()
            .map(|(n, a)| (n.clone(), "effect", a.description().to_string()));
        r.chain(e).collect()
    }

    /// Runs a reversible action and returns its undo record.
    ///
    /// # Errors
    /// `Unknown`, `InvalidArgs` (over [`MAX_ARGS_BYTES`]) or the action's own error.
    pub fn invoke_reversible(
        &self,
        ctx: ActionContext<'_>,
        name: &str,
        args: &str,
    ) -> Result<UndoRecord, ActionError> {
        let action = self
            .reversible
            .get(name)
            .ok_or_else(|| unknown("action", name))?;
        check_args(name, args)?;
        let done = action.action.execute(ctx, args)?;
        tracing::debug!(agent = %ctx.agent, action = name, "reversible action executed");
        Ok(UndoRecord {
            action: name.to_string(),
            agent: ctx.agent.clone(),
            output: done.output,
            undo: done.undo,
            at: self.clock.now(),
            touched: Vec::new(),
        })
    }

    /// Undoes a performed reversible action, if its undo window (measured
    /// from [`UndoRecord::at`]) is still open.
    ///
    /// # Errors
    /// `Unknown` if the action is no longer registered, `UndoWindowClosed`
    /// past its window, or the action's own error.
    pub fn compensate(
        &self,
        ctx: ActionContext<'_>,
        record: &UndoRecord,
    ) -> Result<(), ActionError> {
        let action = self
            .reversible
            .get(&record.action)
            .ok_or_else(|| unknown("action", &record.action))?;
        if let Some(window) = action.terms.undo_window {
            let age = self.clock.now().saturating_sub(record.at);
            if age > window {
                return Err(ActionError::UndoWindowClosed {
                    name: record.action.clone(),
                    window,
                    age,
                });
            }
        }
        action.action.compensate(ctx, &record.undo)
    }

    /// Runs a non-reversible effect.
    ///
    /// # Errors
    /// `Unknown`, `InvalidArgs` or the effect's own error.
    pub fn invoke_effect(
        &self,
        ctx: ActionContext<'_>,
        name: &str,
        args: &str,
    ) -> Result<String, ActionError> {
        let effect = self
            .effects
            .get(name)
            .ok_or_else(|| unknown("effect", name))?;
        check_args(name, args)?;
        let out = effect.execute(ctx, args)?;
        tracing::debug!(agent = %ctx.agent, effect = name, "effect executed");
        Ok(out)
    }
}

/// The actions the `ahv` CLI registers.
pub mod builtin {
    use super::*;

    /// Where `note.append` writes.
    pub const JOURNAL: &str = "journal/notes.log";
    /// Where `notify.send` writes.
    pub const OUTBOX: &str = "outbox/notifications.log";
    /// Longest line either action accepts.
    pub const MAX_LINE: usize = 4096;

    fn one_line(name: &str, args: &str) -> Result<(), ActionError> {
        let bad = |reason: String| {
            Err(ActionError::InvalidArgs {
                name: name.to_string(),
                reason,
            })
        };
        if args.is_empty() {
            return bad("empty text".into());
        }
        if args.len() > MAX_LINE {
            return bad(format!("{} bytes; the limit is {MAX_LINE}", args.len()));
        }
        if args.contains(['\n', '\r']) {
            return bad("text must be one line".into());
        }
        Ok(())
    }

    fn vfs_err(name: &str) -> impl FnOnce(VfsError) -> ActionError + '_ {
        move |source| ActionError::Vfs {
            name: name.to_string(),
            source,
        }
    }

    /// `note.append` (reversible): appends `"<agent>: <text>\n"` to [`JOURNAL`].
    /// Its undo removes exactly that line (and the journal itself, if the
    /// append created it), and refuses if the journal changed after it in
    /// any other way than further appends being undone first.
    #[derive(Debug, Default)]
    pub struct NoteAppend;

    impl ReversibleAction for NoteAppend {
        fn description(&self) -> &str {
            "append one line to journal/notes.log (undo removes it)"
        }

        fn execute(&self, ctx: ActionContext<'_>, args: &str) -> Result<Executed, ActionError> {
            const NAME: &str = "note.append";
            one_line(NAME, args)?;
            let (before, created) = match ctx.files.stat(ctx.caller(), JOURNAL) {
                Ok(s) => (s.size, false),
                Err(VfsError::NotFound { .. }) => (0, true),
                Err(e) => return Err(vfs_err(NAME)(e)),
            };
            let line = format!("{}: {args}\n", ctx.agent);
            ctx.files
                .append(ctx.caller(), JOURNAL, line.as_bytes())
                .map_err(vfs_err(NAME))?;
            Ok(Executed {
                output: format!(
                    "appended {} bytes to {JOURNAL} at offset {before}",
                    line.len()
                ),
                // `before:len`, with `:new` when the append created the journal.
                undo: format!(
                    "{before}:{}{}",
                    line.len(),
                    if created { ":new" } else { "" }
                ),
            })
        }

        fn compensate(&self, ctx: ActionContext<'_>, undo: &str) -> Result<(), ActionError> {
            const NAME: &str = "note.append";
            let failed = |reason: String| ActionError::Failed {
                name: NAME.into(),
                reason,
            };
            let mut parts = undo.split(':');
            let (before, len, created) = (|| {
                let before = parts.next()?.parse::<u64>().ok()?;
                let len = parts.next()?.parse::<u64>().ok()?;
                let created = match parts.next() {
                    None => false,
                    Some("new") => true,
                    Some(_) => return None,
                };
                parts.next().is_none().then_some((before, len, created))
            })()
            .ok_or_else(|| failed(format!("malformed undo data {undo:?}")))?;
            let size = ctx
                .files
                .stat(ctx.caller(), JOURNAL)
                .map_err(vfs_err(NAME))?
                .size;
            if size != before + len {
                return Err(failed(format!(
                    "{JOURNAL} is {size} bytes, expected {}: it changed after this append",
                    before + len
                )));
            }
            if created && before == 0 {
                return ctx
                    .files
                    .delete(ctx.caller(), JOURNAL)
                    .map(drop)
                    .map_err(vfs_err(NAME));
            }
            ctx.files
                .truncate(ctx.caller(), JOURNAL, before)
                .map(drop)
                .map_err(vfs_err(NAME))
        }
    }

    /// `notify.send` (effect): appends `"<agent>: <message>\n"` to [`OUTBOX`],
    /// standing in for a message that leaves the system and cannot be recalled.
    #[derive(Debug, Default)]
    pub struct NotifySend;

    impl Effect for NotifySend {
        fn description(&self) -> &str {
            "send a notification (appended to outbox/notifications.log; cannot be undone)"
        }

        fn execute(&self, ctx: ActionContext<'_>, args: &str) -> Result<String, ActionError> {
            const NAME: &str = "notify.send";
            one_line(NAME, args)?;
            ctx.files
                .append(
                    ctx.caller(),
                    OUTBOX,
                    format!("{}: {args}\n", ctx.agent).as_bytes(),
                )
                .map_err(vfs_err(NAME))?;
            let count = ctx
                .files
                .read(ctx.caller(), OUTBOX)
                .map_err(vfs_err(NAME))?
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            Ok(format!("notification #{count} sent"))
        }
    }

    /// A registry with `note.append` and `notify.send`.
    pub fn registry() -> ActionRegistry {
        let mut r = ActionRegistry::new();
        r.reversible.insert(
            "note.append".into(),
            Registered {
                action: Arc::new(NoteAppend),
                terms: ActionTerms::default(),
            },
        );
        r.effects.insert("notify.send".into(), Arc::new(NotifySend));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{Vfs, VfsLimits};

    fn vfs() -> (tempfile::TempDir, Vfs) {
        let t = tempfile::tempdir().unwrap();
        let dir =
            cap_std::fs::Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        (t, Vfs::new(dir, VfsLimits::default()))
    }

    #[test]
    fn empty_registry_grants_nothing() {
        let (_t, vfs) = vfs();
        let agent = AgentId::new("a").unwrap();
        let ctx = ActionContext {
            agent: &agent,
            ring: Ring::Standard,
            trace: TraceId(0),
            files: &vfs,
        };
        let r = ActionRegistry::new();
        assert!(matches!(
            r.invoke_reversible(ctx, "note.append", "x"),
            Err(ActionError::Unknown { kind: "action", .. })
        ));
        assert!(matches!(
            r.invoke_effect(ctx, "notify.send", "x"),
            Err(ActionError::Unknown { kind: "effect", .. })
        ));
    }

    #[test]
    fn a_restricted_registry_knows_only_its_grants() {
        let (_d, vfs) = vfs();
        let agent = AgentId::new("did:test:a").unwrap();
        let ctx = ActionContext {
            agent: &agent,
            ring: Ring::Privileged,
            trace: TraceId(1),
            files: &vfs,
        };
        let all = builtin::registry();
        let only_notes = all.restricted(["note.append"], []).unwrap();
        assert_eq!(only_notes.reversible_names(), ["note.append"]);
        assert!(only_notes.effect_names().is_empty());
        assert!(
            only_notes
                .invoke_reversible(ctx, "note.append", "hi")
                .is_ok()
        );
        assert!(matches!(
            only_notes.invoke_effect(ctx, "notify.send", "hi"),
            Err(ActionError::Unknown { kind: "effect", .. })
        ));
        let nothing = all.restricted([], []).unwrap();
        assert!(matches!(
            nothing.invoke_reversible(ctx, "note.append", "hi"),
            Err(ActionError::Unknown { kind: "action", .. })
        ));
        assert!(
            all.invoke_effect(ctx, "notify.send", "hi").is_ok(),
            "the original is untouched"
        );
        // A misspelt grant, or an effect granted as an action, is refused.
        for (actions, effects) in [(vec!["note.apend"], vec![]), (vec!["notify.send"], vec![])] {
            assert!(matches!(
                all.restricted(actions, effects),
                Err(ActionError::Unknown { .. })
            ));
        }
        assert!(matches!(
            all.restricted([], ["note.append"]),
            Err(ActionError::Unknown { kind: "effect", .. })
        ));
    }

    #[test]
    fn reversible_and_effect_names_do_not_mix() {
        let (_t, vfs) = vfs();
        let agent = AgentId::new("a").unwrap();
        let ctx = ActionContext {
            agent: &agent,
            ring: Ring::Standard,
            trace: TraceId(0),
            files: &vfs,
        };
        let r = builtin::registry();
        assert!(matches!(
            r.invoke_effect(ctx, "note.append", "x"),
            Err(ActionError::Unknown { .. })
        ));
        assert!(matches!(
            r.invoke_reversible(ctx, "notify.send", "x"),
            Err(ActionError::Unknown { .. })
        ));
        assert_eq!(r.reversible_names(), ["note.append"]);
        assert_eq!(r.effect_names(), ["notify.send"]);
    }

    #[test]
    fn note_append_undo_restores_the_journal_exactly() {
        let (_t, vfs) = vfs();
        let agent = AgentId::new("did:ex:a").unwrap();
        let ctx = ActionContext {
            agent: &agent,
            ring: Ring::Standard,
            trace: TraceId(0),
            files: &vfs,
        };
        let r = builtin::registry();
        let first = r.invoke_reversible(ctx, "note.append", "one").unwrap();
        let second = r.invoke_reversible(ctx, "note.append", "two").unwrap();
        assert_eq!(
            vfs.read(builtin::JOURNAL).unwrap(),
            b"did:ex:a: one\ndid:ex:a: two\n"
        );
        assert!(
            matches!(r.compensate(ctx, &first), Err(ActionError::Failed { .. })),
            "out of order"
        );
        r.compensate(ctx, &second).unwrap();
        r.compensate(ctx, &first).unwrap();
        // The first append created the journal: its undo removes it.
        assert_eq!(first.undo, "0:14:new");
        assert!(matches!(
            vfs.read(builtin::JOURNAL),
            Err(VfsError::NotFound { .. })
        ));
        // An append to an existing journal truncates it back; undo data
        // written before `:new` existed still reads.
        vfs.write(builtin::JOURNAL, b"kept\n").unwrap();
        let third = r.invoke_reversible(ctx, "note.append", "three").unwrap();
        assert_eq!(third.undo, "5:16");
        r.compensate(ctx, &third).unwrap();
        assert_eq!(vfs.read(builtin::JOURNAL).unwrap(), b"kept\n");
        for bad in ["5", "5:16:old", "5:16:new:x", "a:1"] {
            let rec = UndoRecord {
                undo: bad.into(),
                ..third.clone()
            };
            assert!(
                matches!(r.compensate(ctx, &rec), Err(ActionError::Failed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn builtins_refuse_bad_arguments() {
        let (_t, vfs) = vfs();
        let agent = AgentId::new("a").unwrap();
        let ctx = ActionContext {
            agent: &agent,
            ring: Ring::Standard,
            trace: TraceId(0),
            files: &vfs,
        };
        let r = builtin::registry();
        for bad in ["", "two\nlines"] {
            assert!(matches!(
                r.invoke_effect(ctx, "notify.send", bad),
                Err(ActionError::InvalidArgs { .. })
            ));
        }
        let huge = "x".repeat(MAX_ARGS_BYTES + 1);
        assert!(matches!(
            r.invoke_reversible(ctx, "note.append", &huge),
            Err(ActionError::InvalidArgs { .. })
        ));
        assert!(
            matches!(vfs.read(builtin::OUTBOX), Err(VfsError::NotFound { .. })),
            "nothing sent"
        );
        assert_eq!(
            r.invoke_effect(ctx, "notify.send", "hi").unwrap(),
            "notification #1 sent"
        );
        assert_eq!(
            r.invoke_effect(ctx, "notify.send", "again").unwrap(),
            "notification #2 sent"
        );
    }

    #[test]
    fn terms_are_kept_described_and_a_zero_window_is_refused() {
        let mut r = ActionRegistry::new();
        r.register_reversible("plain", builtin::NoteAppend).unwrap();
        r.register_reversible_with(
            "part",
            builtin::NoteAppend,
            ActionTerms {
                reversibility: Reversibility::Partial,
                undo_window: Some(Duration::from_millis(1500)),
            },
        )
        .unwrap();
        assert_eq!(r.terms("plain"), Some(ActionTerms::default()));
        assert_eq!(r.terms("part").unwrap().undo_window_ms(), 1500);
        assert_eq!(r.terms("nope"), None);
        let kinds: Vec<_> = r.describe().into_iter().map(|(n, k, _)| (n, k)).collect();
        assert_eq!(
            kinds,
            [
                ("part".to_string(), "reversible (partial)"),
                ("plain".to_string(), "reversible (full)")
            ]
        );
        assert!(matches!(
            r.register_reversible_with(
                "zero",
                builtin::NoteAppend,
                ActionTerms {
                    undo_window: Some(Duration::ZERO),
                    ..ActionTerms::default()
                },
            ),
            Err(ActionError::InvalidTerms { .. })
        ));
        let restricted = r.restricted(["part"], []).unwrap();
        assert_eq!(restricted.terms("part"), r.terms("part"));
    }

    #[test]
    fn undo_records_are_stamped_and_the_window_is_enforced_on_the_clock() {
        let (_t, vfs) = vfs();
        let agent = AgentId::new("a").unwrap();
        let ctx = ActionContext {
            agent: &agent,
            ring: Ring::Standard,
            trace: TraceId(0),
            files: &vfs,
        };
        let clock = ahv_core::FakeClock::new();
        let mut r = ActionRegistry::new().with_clock(Arc::new(clock.clone()));
        r.register_reversible_with(
            "note.append",
            builtin::NoteAppend,
            ActionTerms {
                reversibility: Reversibility::Full,
                undo_window: Some(Duration::from_secs(10)),
            },
        )
        .unwrap();
        clock.advance(Duration::from_secs(5));
        let rec = r.invoke_reversible(ctx, "note.append", "x").unwrap();
        assert_eq!(rec.at, Duration::from_secs(5));
        clock.advance(Duration::from_secs(11));
        assert!(matches!(
            r.compensate(ctx, &rec),
            Err(ActionError::UndoWindowClosed { ref name, window, age })
                if name == "note.append" && window == Duration::from_secs(10) && age == Duration::from_secs(11)
        ));
        let rec = r.invoke_reversible(ctx, "note.append", "y").unwrap();
        clock.advance(Duration::from_secs(10));
        r.compensate(ctx, &rec).unwrap();
    }

    #[test]
    fn registration_validates_names() {
        let mut r = ActionRegistry::new();
        assert!(matches!(
            r.register_effect("bad name", builtin::NotifySend),
            Err(ActionError::BadName(_))
        ));
        r.register_effect("x.y", builtin::NotifySend).unwrap();
        assert!(matches!(
            r.register_reversible("x.y", builtin::NoteAppend),
            Err(ActionError::Duplicate { .. })
        ));
    }
}
