"""Structured logging (capability `log`, every ring).

`print` also ends up in the agent's log (stdout at level info, stderr at warn).
"""

from . import _wit


def write(level: str, message: str) -> None:
    """Appends one line at `level`: `"trace"`, `"debug"`, `"info"`, `"warn"` or `"error"`."""
    raw = _wit.interface("log")
    try:
        lvl = raw.Level[level.upper()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None
    text = str(message)
    # A lone surrogate would make componentize-py's conversion trap.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    raw.log(lvl, text)


def trace(message: str) -> None:
    """Logs `message` at level trace."""
    write("trace", message)


def debug(message: str) -> None:
    """Logs `message` at level debug."""
    write("debug", message)


def info(message: str) -> None:
    """Logs `message` at level info."""
    write("info", message)


def warn(message: str) -> None:
    """Logs `message` at level warn."""
    write("warn", message)


def error(message: str) -> None:
    """Logs `message` at level error."""
    write("error", message)
