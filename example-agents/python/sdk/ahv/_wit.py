"""The generated bindings, looked up by interface name.

componentize-py generates `wit_world.imports.<interface>` only for the
interfaces of the world the agent is built for. `import ahv` therefore
imports none of them by name: `ahv` tries them all once (`preload`, so that
the build-time snapshot holds the ones that exist), and a call to an
interface the world lacks raises `NotInWorld` instead of failing at import.
"""

import importlib
import inspect

from .errors import NotInWorld, from_wit

#: The largest value of a WIT `u64` (every integer of the contract is
#: unsigned).
_U64_MAX = 2**64 - 1

#: The narrowest world that imports each interface the SDK wraps.
WORLD_OF = {
    "context": "sandbox",
    "log": "sandbox",
    "vfs_read": "sandbox",
    "state_read": "sandbox",
    "elevation": "sandbox",
    "vfs_write": "standard",
    "state_write": "standard",
    "locks": "standard",
    "actions": "standard",
}

_loaded = {}


def interface(name: str):
    """The bindings module of interface `name` (`"vfs_write"`).

    Raises `NotInWorld` when the agent's world does not import it.
    """
    module = _loaded.get(name)
    if module is None:
        try:
            module = importlib.import_module("wit_world.imports." + name)
        except ImportError:
            wit_name = name.replace("_", "-")
            raise NotInWorld(
                f"the world this agent was built for does not import {wit_name}; "
                f"build it against {WORLD_OF.get(name, 'a wider world')} or a wider world"
            ) from None
        _loaded[name] = module
    return module


def _check(where: str, f, args) -> None:
    """Refuses, as a Python exception, the arguments componentize-py's
    conversion would otherwise trap on (a Rust panic no `except` sees): a
    value of another type than the binding's annotation says, an integer
    out of range, text that is not valid UTF-8 (a lone surrogate)."""
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    for i, value in enumerate(args):
        param = params[i] if i < len(params) else None
        label = f"{where}: argument {param.name if param else i + 1}"
        want = param.annotation if param else inspect.Parameter.empty
        if want in (str, "str") and not isinstance(value, str):
            raise TypeError(f"{label} must be a str, not {type(value).__name__}")
        if want in (bytes, "bytes") and not isinstance(value, bytes):
            raise TypeError(f"{label} must be bytes, not {type(value).__name__}")
        if want in (int, "int"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{label} must be an int, not {type(value).__name__}")
            if not 0 <= value <= _U64_MAX:
                raise ValueError(f"{label} is {value}, outside 0..2**64-1")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"{label} is not valid UTF-8 text: {e.reason}") from None


def call(name: str, function: str, *args):
    """Calls `function` of interface `name`, turning a WIT error into its exception."""
    f = getattr(interface(name), function)
    _check(f"{name.replace('_', '-')}.{function.replace('_', '-')}", f, args)
    err = importlib.import_module("componentize_py_types").Err
    try:
        return f(*args)
    except err as e:
        raise from_wit(e.value) from None


def preload() -> None:
    """Imports every interface the world has (the others are skipped)."""
    for name in WORLD_OF:
        try:
            interface(name)
        except NotInWorld:
            pass
    try:
        interface("types")
    except NotInWorld:
        pass
