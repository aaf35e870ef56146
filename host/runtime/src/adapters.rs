//! What the capability adapters share: [`HostError`] (a refusal or a trap)
//! and the conversions of the domain crates' errors into WIT `error` values.
//! The adapters themselves are in `crate::capabilities`, one module per
//! capability; nothing here panics on guest input.

use std::sync::Arc;

use ahv_core::AgentId;
use ahv_governance::actions::ActionError;
use ahv_governance::files::Access;
use ahv_governance::locks::LockError;
use ahv_governance::session_core::SessionCore;
use ahv_governance::state::StateError;
use ahv_governance::vfs::VfsError;

use crate::bindings::WitError;
use crate::bindings::agent_hypervisor::agent::types;
use crate::capabilities::View;
use crate::state::AgentState;

/// What a governed host function returns on failure: a refusal the guest sees
/// as a WIT `error`, or a trap (breach, host failure) that aborts it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// An in-ring refusal: returned to the guest as a value.
    #[error("refused: {0:?}")]
    Refused(WitError),
    /// A trap: the guest is aborted with this error.
    #[error("trap: {0:#}")]
    Trap(wasmtime::Error),
}

impl From<wasmtime::Error> for HostError {
    fn from(e: wasmtime::Error) -> Self {
        HostError::Trap(e)
    }
}

impl From<VfsError> for HostError {
    fn from(e: VfsError) -> Self {
        let msg = e.to_string();
        HostError::Refused(match e {
            VfsError::InvalidPath(_) => WitError::InvalidPath(msg),
            VfsError::NotFound { .. } => WitError::NotFound(msg),
            VfsError::AlreadyExists { .. } => WitError::AlreadyExists(msg),
            VfsError::Denied { .. } => WitError::Denied(msg),
            VfsError::Quota { .. } => WitError::Quota(msg),
            VfsError::Conflict { .. } => WitError::Conflict(msg),
            VfsError::Io { .. } => WitError::Io(msg),
        })
    }
}

impl From<StateError> for HostError {
    fn from(e: StateError) -> Self {
        let msg = e.to_string();
        HostError::Refused(match e {
            StateError::InvalidKey { .. } => WitError::InvalidKey(msg),
            StateError::Conflict { .. }
            | StateError::Stale { .. }
            | StateError::UndoConflict { .. } => WitError::Conflict(msg),
            StateError::Quota { .. } => WitError::Quota(msg),
            StateError::LockRequired { .. } => WitError::Denied(msg),
        })
    }
}

impl From<LockError> for HostError {
    fn from(e: LockError) -> Self {
        let msg = e.to_string();
        HostError::Refused(match e {
            LockError::Conflict { .. } => WitError::Conflict(msg),
            LockError::Deadlock { .. } => WitError::Deadlock(msg),
            LockError::Timeout { .. } => WitError::Timeout(msg),
            LockError::NotHeld { .. } => WitError::NotFound(msg),
            LockError::TooMany { .. } => WitError::Quota(msg),
            LockError::Withdrawn { .. } => WitError::Denied(msg),
            LockError::InvalidResource { .. } => WitError::InvalidKey(msg),
        })
    }
}

/// Outside a shared session there is no shared state and nothing to lock.
fn no_session(what: &str) -> HostError {
    HostError::Refused(WitError::Denied(format!(
        "{what}: this agent runs outside a shared session"
    )))
}

pub(crate) fn wit_access(a: Access) -> types::Access {
    match a {
        Access::Everyone => types::Access::Everyone,
        Access::Owner => types::Access::Owner,
        Access::Agents(list) => {
            types::Access::Agents(list.into_iter().map(|a| a.to_string()).collect())
        }
    }
}

pub(crate) fn domain_access(a: types::Access) -> Result<Access, HostError> {
    Ok(match a {
        types::Access::Everyone => Access::Everyone,
        types::Access::Owner => Access::Owner,
        types::Access::Agents(list) => Access::Agents(
            list.into_iter()
                .map(|id| {
                    AgentId::new(id)
                        .map_err(|e| HostError::Refused(WitError::Denied(format!("acl: {e}"))))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The caller's session core, or the refusal for an agent outside a session.
pub(crate) fn session_core<'a>(
    shared: &'a Option<Arc<SessionCore>>,
    what: &str,
) -> Result<&'a SessionCore, HostError> {
    shared.as_deref().ok_or_else(|| no_session(what))
}

impl From<ActionError> for HostError {
    fn from(e: ActionError) -> Self {
        let msg = e.to_string();
        match e {
            ActionError::Vfs { source, .. } => HostError::from(source),
            ActionError::Unknown { .. } => HostError::Refused(WitError::UnknownAction(msg)),
            ActionError::InvalidArgs { .. }
            | ActionError::Failed { .. }
            | ActionError::UndoWindowClosed { .. } => {
                HostError::Refused(WitError::ActionFailed(msg))
            }
            // Registration errors cannot come out of an invocation.
            ActionError::BadName(_)
            | ActionError::Duplicate { .. }
            | ActionError::InvalidTerms { .. } => HostError::Trap(wasmtime::format_err!(
                "unexpected action registry error: {msg}"
            )),
        }
    }
}

/// Every capability's view converts the shared `error` type the same way.
impl<C> types::Host for View<'_, C> {
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<WitError> {
        match err {
            HostError::Refused(e) => {
                self.gate.metrics.refusal(&e);
                Ok(e)
            }
            HostError::Trap(e) => Err(e),
        }
    }
}

/// `types` has no functions; a store's own state converts errors too (the
/// generated `types::add_to_linker` is called on it).
impl types::Host for AgentState {
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<WitError> {
        match err {
            HostError::Refused(e) => {
                self.gate.metrics.refusal(&e);
                Ok(e)
            }
            HostError::Trap(e) => Err(e),
        }
    }
}
