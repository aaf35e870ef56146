"""The agent's files (capabilities `vfs-read`, every ring, and `vfs-write`, ring 2 and below).

Paths are relative POSIX paths (`notes/today.md`). In a shared session,
paths under `shared/` name the session's shared area; every other path
names the agent's private area. Contents are `bytes`; a `str` is written as
UTF-8. Refusals raise `ahv.AhvError` subclasses (`NotFound`, `Denied`, ...).
"""

import builtins

from . import _wit
from .errors import Io


def _bytes(contents) -> bytes:
    if isinstance(contents, str):
        return contents.encode("utf-8")
    if isinstance(contents, (bytes, bytearray, memoryview)):
        return bytes(contents)
    # `bytes(5)` would be five NUL bytes: refuse what is not already bytes.
    raise TypeError(f"expected bytes or str, not {type(contents).__name__}")


def read(path: str) -> bytes:
    """Reads a whole file."""
    return _wit.call("vfs_read", "read", path)


def read_text(path: str) -> str:
    """Reads a whole file as UTF-8 text; invalid UTF-8 raises `Io`."""
    data = read(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Io(f"{path}: not UTF-8 text: {e}") from None


def list(path: str = ".") -> builtins.list:
    """The names in a directory, sorted (`"."`: the agent's root)."""
    return _wit.call("vfs_read", "list_dir", path)


def stat(path: str):
    """An entry's `kind` (`"file"` or `"directory"`) and `size`, as a dict."""
    s = _wit.call("vfs_read", "stat", path)
    return {"kind": s.kind.name.lower(), "size": s.size}


def hash(path: str) -> str:
    """SHA-256 of a file's content, as 64 lower-case hex digits."""
    return _wit.call("vfs_read", "hash", path)


def write(path: str, contents) -> None:
    """Replaces (or creates) a whole file, atomically. Needs ring 2 or below."""
    _wit.call("vfs_write", "write", path, _bytes(contents))


def append(path: str, contents) -> None:
    """Appends to a file, creating it if needed. Needs ring 2 or below."""
    _wit.call("vfs_write", "append", path, _bytes(contents))


def delete(path: str) -> None:
    """Deletes a file or an empty directory. Needs ring 2 or below."""
    _wit.call("vfs_write", "delete", path)


def rename(src: str, dst: str) -> None:
    """Renames a file or directory; `dst` must not exist. Needs ring 2 or below."""
    _wit.call("vfs_write", "rename", src, dst)


def create_dir(path: str) -> None:
    """Creates a directory and its parents. Needs ring 2 or below."""
    _wit.call("vfs_write", "create_dir", path)
