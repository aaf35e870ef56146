"""Host-registered reversible actions (capability `actions`, ring 2 and below)."""

from . import _wit


def invoke(name: str, args: str) -> str:
    """Runs the named action with its arguments; returns its output."""
    return _wit.call("actions", "invoke", name, args)


def available() -> list:
    """Names of the reversible actions this host offers."""
    return _wit.call("actions", "available")
