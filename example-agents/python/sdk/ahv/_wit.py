"""The generated bindings, looked up by interface name.

componentize-py generates `wit_world.imports.<interface>` only for the
interfaces of the world the agent is built for. `import ahv` therefore
imports none of them by name: `ahv` tries them all once (`preload`, so that
the build-time snapshot holds the ones that exist), and a call to an
interface the world lacks raises `NotInWorld` instead of failing at import.
"""

import importlib

from .errors import NotInWorld, from_wit

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


def call(name: str, function: str, *args):
    """Calls `function` of interface `name`, turning a WIT error into its exception."""
    f = getattr(interface(name), function)
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
