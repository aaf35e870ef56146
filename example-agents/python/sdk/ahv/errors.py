"""Errors: one exception class per case of the WIT `error` variant.

Every capability call that the host refuses raises an `AhvError` subclass;
`.code` is the WIT case name (`"not-found"`), `.detail` the host's
explanation, and `str(e)` is both on one line (`not-found: notes/today.md`),
as the Rust SDK's `describe()` writes it.
"""

#: The `rate-limited` payload meaning "never: the budget does not refill".
NEVER = 2**64 - 1


class AhvError(Exception):
    """A refusal from the host (or from the SDK, for `not-in-world`)."""

    #: The WIT case name of the error (`"not-found"`, `"rate-limited"`, ...).
    code = "error"

    def __init__(self, detail: str):
        super().__init__(detail)
        #: The host's explanation.
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r})"


class InvalidPath(AhvError):
    """The path is not a valid relative POSIX path."""

    code = "invalid-path"


class NotFound(AhvError):
    """No file, directory, key or action exists under that name."""

    code = "not-found"


class AlreadyExists(AhvError):
    """Something already exists where the request needs nothing."""

    code = "already-exists"


class Denied(AhvError):
    """Policy refuses the request."""

    code = "denied"


class Quota(AhvError):
    """A size or count limit would be exceeded."""

    code = "quota"


class UnknownAction(AhvError):
    """The named action or effect is not registered on this host."""

    code = "unknown-action"


class ActionFailed(AhvError):
    """The action or effect ran and failed."""

    code = "action-failed"


class Io(AhvError):
    """Any other I/O failure."""

    code = "io"


class Conflict(AhvError):
    """A stale version or clock, or a lock in the way (with no wait)."""

    code = "conflict"


class Deadlock(AhvError):
    """Waiting for the lock would close a cycle."""

    code = "deadlock"


class Timeout(AhvError):
    """The lock was not granted within the wait the caller allowed."""

    code = "timeout"


class InvalidKey(AhvError):
    """A state key or lock target is not valid (or a state value is not the JSON expected)."""

    code = "invalid-key"


class RateLimited(AhvError):
    """The rate limit for this kind of call is used up."""

    code = "rate-limited"

    def __init__(self, retry_after_ms: int):
        #: Milliseconds to wait before one more call is admitted
        #: (`NEVER`: the budget does not refill).
        self.retry_after_ms = retry_after_ms
        super().__init__(
            "the budget does not refill"
            if retry_after_ms == NEVER
            else f"retry in {retry_after_ms} ms"
        )


class Quarantined(AhvError):
    """The caller is quarantined: every capability but context and log refuses."""

    code = "quarantined"


class NotInWorld(AhvError):
    """Not a WIT case: the agent was built for a world without this capability.

    componentize-py generates bindings only for the interfaces of the world
    the agent targets, so a `sandbox` agent has no `vfs-write` to call.
    """

    code = "not-in-world"


# The generated bindings name the cases `Error_<CamelCase>`.
_BY_BINDING = {
    "Error_" + cls.__name__: cls
    for cls in (
        InvalidPath,
        NotFound,
        AlreadyExists,
        Denied,
        Quota,
        UnknownAction,
        ActionFailed,
        Io,
        Conflict,
        Deadlock,
        Timeout,
        InvalidKey,
        RateLimited,
        Quarantined,
    )
}


def from_wit(value) -> AhvError:
    """The exception for a WIT `error` value (an `Error_*` dataclass)."""
    cls = _BY_BINDING.get(type(value).__name__)
    if cls is None:
        # A case added to the WIT after this SDK: still an AhvError.
        error = AhvError(repr(value))
        error.code = type(value).__name__.removeprefix("Error_").lower()
        return error
    return cls(value.value)


class Failure(Exception):
    """The agent's own failure: raised out of `run`, its message is the `err`
    value as is (`raise Failure("nothing to do")` fails with "nothing to do")."""
