"""Intent locks on shared paths and state keys (capability `locks`, ring 2 and below).

A target is a path (`path="shared/report.md"`) or a state key (`key="tally"`);
modes are `"read"`, `"write"` and `"exclusive"` (only read + read share).
The host also releases an agent's locks when it leaves the session, traps
or is killed.
"""

from . import _wit

MODES = ("read", "write", "exclusive")


def _target(path, key):
    raw = _wit.interface("locks")
    if (path is None) == (key is None):
        raise ValueError("name exactly one lock target: path=... or key=...")
    return raw.LockTarget_Path(path) if path is not None else raw.LockTarget_Key(key)


def _mode(mode: str):
    if mode not in MODES:
        raise ValueError(f"unknown lock mode {mode!r}: use one of {', '.join(MODES)}")
    return _wit.interface("locks").LockMode[mode.upper()]


def _describe(target) -> tuple:
    kind = "path" if type(target).__name__ == "LockTarget_Path" else "key"
    return (kind, target.value)


def acquire(*, path: str | None = None, key: str | None = None, mode: str, wait_ms: int = 0) -> None:
    """Takes (or strengthens) a lock, waiting up to `wait_ms` (0: raise
    `Conflict` at once); `Timeout` or `Deadlock` when it cannot be had."""
    _wit.call("locks", "acquire", _target(path, key), _mode(mode), wait_ms)


def release(*, path: str | None = None, key: str | None = None) -> None:
    """Releases a lock the caller holds (`NotFound` if it holds none)."""
    _wit.call("locks", "release", _target(path, key))


def held() -> list:
    """The caller's locks as `(kind, name, mode)` tuples: `("key", "tally", "write")`."""
    return [
        _describe(target) + (mode.name.lower(),)
        for target, mode in _wit.call("locks", "held")
    ]


class Guard:
    """A lock taken by `lock`, released when the `with` block ends."""

    def __init__(self, target, release: bool):
        self._target = target
        self._release = release

    @property
    def target(self) -> tuple:
        """What the guard holds: `("path", name)` or `("key", name)`."""
        return _describe(self._target)

    def release(self) -> None:
        """Releases the lock now (unless it was held before the guard);
        raises `NotFound` if the host already withdrew it."""
        if self._release:
            self._release = False
            _wit.call("locks", "release", self._target)

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, *exc) -> bool:
        if self._release:
            self._release = False
            try:
                _wit.call("locks", "release", self._target)
            except Exception:
                # Nothing to do about a lock the host already withdrew; the
                # block's own exception, if any, is the one that matters.
                pass
        return False


def lock(*, path: str | None = None, key: str | None = None, mode: str, wait_ms: int = 0) -> Guard:
    """Takes a lock like `acquire` and returns a `Guard` that releases it at
    the end of a `with` block, on every way out of it:

        with locks.lock(path="shared/report.md", mode="write", wait_ms=1_000):
            vfs.append("shared/report.md", "one more line\\n")

    A guard never releases a lock the caller held before it (the host keeps
    one lock per target: taking it again keeps it, a stronger mode upgrades
    it, and the upgrade then stays).
    """
    target = _target(path, key)
    mine = _describe(target)
    already = any(_describe(t) == mine for t, _ in _wit.call("locks", "held"))
    _wit.call("locks", "acquire", target, _mode(mode), wait_ms)
    return Guard(target, not already)
