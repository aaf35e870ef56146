"""The session's shared key-value state (capabilities `state-read`, every
ring, and `state-write`, ring 2 and below).

Every value has a version. A write names the version it read (0: the key
must not exist yet); if someone wrote in between, it raises `Conflict`.
`update` is the compare-and-set loop written once.
"""

import json as _json

from . import _wit
from .errors import Conflict, InvalidKey

#: How many times `update` tries before it gives up on a key that others
#: keep changing.
UPDATE_ATTEMPTS = 16


def _bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    # `bytes(5)` would be five NUL bytes: refuse what is not already bytes.
    raise TypeError(f"expected bytes or str, not {type(value).__name__}")


def get(key: str):
    """The key's `Versioned` (`value: bytes`, `version`, `clock`, `writer`), or None."""
    return _wit.call("state_read", "get", key)


def keys(prefix: str = "") -> list:
    """Keys starting with `prefix`, sorted."""
    return _wit.call("state_read", "keys", prefix)


def put(key: str, value, expected_version: int) -> int:
    """Writes `value` (bytes, or str as UTF-8) if the key is still at
    `expected_version`; returns the new version. Needs ring 2 or below."""
    return _wit.call("state_write", "put", key, _bytes(value), expected_version)


def delete(key: str, expected_version: int) -> None:
    """Deletes the key if it is still at `expected_version`. Needs ring 2 or below."""
    _wit.call("state_write", "delete", key, expected_version)


def update(key: str, fn) -> int:
    """Reads `key`, computes its new value with `fn(old)` (`old`: bytes, or
    None if the key does not exist; `fn` returns bytes or str) and writes it
    if nobody wrote in between; on a `Conflict` it reads again and calls `fn`
    again, up to `UPDATE_ATTEMPTS` times. Returns the new version.

    `fn` may run more than once, so it should only compute. When every
    attempt loses, the last `Conflict` is raised. Under snapshot isolation a
    call keeps reading its snapshot, so when a re-read shows the very
    version that lost, the `Conflict` is raised at once. Other errors of the
    read or the write (`Denied`, `Quota`, `RateLimited`, ...) are raised at once.
    """
    lost = None
    for _ in range(UPDATE_ATTEMPTS):
        current = get(key)
        version = current.version if current is not None else 0
        # A read that shows what lost already (a snapshot): another attempt
        # would lose the same way.
        if lost is not None:
            lost_version, error = lost
            lost = None
            if lost_version == version:
                raise error
        new = fn(current.value if current is not None else None)
        try:
            return put(key, new, version)
        except Conflict as e:
            lost = (version, e)
    if lost is None:
        raise Conflict(f"{_json.dumps(key)}: no attempt made")
    raise lost[1]


def _decode(key: str, data: bytes):
    try:
        return _json.loads(data, parse_constant=_no_constant)
    except ValueError as e:
        raise InvalidKey(f"the value of {_json.dumps(key)} is not JSON: {e}") from None


def _encode(key: str, value) -> bytes:
    try:
        return _dumps(value).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise InvalidKey(
            f"the new value of {_json.dumps(key)} cannot be written as JSON: {e}"
        ) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _dumps(value) -> str:
    # Compact, UTF-8, no NaN: what the Rust SDK (serde_json) writes.
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def get_json(key: str):
    """The key's value decoded from JSON, or None if the key does not exist.

    Raises `InvalidKey` naming the key when the value is not JSON.
    """
    current = get(key)
    return None if current is None else _decode(key, current.value)


def put_json(key: str, value, expected_version: int) -> int:
    """`put` of `value` written as JSON; returns the new version."""
    return put(key, _encode(key, value), expected_version)


def update_json(key: str, fn) -> int:
    """`update` on a JSON value: `fn` gets the decoded value (None if the key
    does not exist) and returns the new one. A stored value that is not JSON
    raises `InvalidKey` (nothing is written)."""
    return update(key, lambda old: _encode(key, fn(None if old is None else _decode(key, old))))
