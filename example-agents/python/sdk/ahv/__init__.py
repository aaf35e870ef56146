"""Agent Hypervisor's SDK for Python agents built with componentize-py.

    import ahv
    from ahv import locks, log, state, vfs

    @ahv.agent(json=True)
    def run(ask):
        version = state.update("runs", lambda old: str(int(old or b"0") + 1))
        with locks.lock(path="shared/log.md", mode="write", wait_ms=1_000):
            vfs.append("shared/log.md", f"{ask['name']}\\n")
        log.info(f"run number {version}")
        return {"run": version}

Modules: `context`, `log`, `vfs`, `state`, `locks`, `elevation`, `actions`
(the interfaces of the `sandbox` and `standard` worlds) and `json` (the JSON
convention). A refusal raises an `AhvError` subclass, one per WIT error
case; calling an interface the agent's world does not import raises
`NotInWorld`. `@agent` turns every exception into the `err` value.
"""

from . import _wit
from . import actions, context, elevation, json, locks, log, state, vfs
from ._agent import agent, outcome
from .errors import (
    ActionFailed,
    AhvError,
    AlreadyExists,
    Conflict,
    Deadlock,
    Denied,
    Failure,
    InvalidKey,
    InvalidPath,
    Io,
    NotFound,
    NotInWorld,
    Quarantined,
    Quota,
    RateLimited,
    Timeout,
    UnknownAction,
)

__all__ = [
    "ActionFailed",
    "AhvError",
    "AlreadyExists",
    "Conflict",
    "Deadlock",
    "Denied",
    "Failure",
    "InvalidKey",
    "InvalidPath",
    "Io",
    "NotFound",
    "NotInWorld",
    "Quarantined",
    "Quota",
    "RateLimited",
    "Timeout",
    "UnknownAction",
    "actions",
    "agent",
    "context",
    "elevation",
    "json",
    "locks",
    "log",
    "outcome",
    "state",
    "vfs",
]

# Import the world's interfaces now, so that componentize-py's build-time
# snapshot holds them; the ones the world lacks are skipped.
_wit.preload()
