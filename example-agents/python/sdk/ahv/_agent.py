"""`@agent`: the author's `run` function as the component's `run` export."""

import importlib
import sys
import traceback

from . import json as _json_io
from . import log
from .errors import AhvError, Failure


def outcome(fn, as_json: bool, text: str) -> tuple:
    """Runs `fn` on `text` and returns `(True, answer)` or `(False, message)`;
    never raises (an exception that left a componentize-py export would trap
    the instance).

    The failure message is `str(e)` for an `AhvError` (`not-found: x.txt`)
    and for a `Failure`, and `"<ExceptionType>: <message>"` for any other
    exception, whose traceback also goes to the agent's log at level error.
    """
    ok, out = _outcome(fn, as_json, text)
    # Text the host cannot take (a lone surrogate) would trap in the
    # conversion: written with backslash escapes instead.
    return ok, out.encode("utf-8", "backslashreplace").decode("utf-8")


def _outcome(fn, as_json: bool, text: str) -> tuple:
    try:
        if as_json:
            return True, _json_io.answer(fn(_json_io.input(text)))
        answer = fn(text)
        if not isinstance(answer, str):
            raise TypeError(f"run must return a str, not {type(answer).__name__}")
        return True, answer
    except BaseException as e:  # noqa: BLE001 - SystemExit too: never trap
        try:
            if isinstance(e, (AhvError, Failure)):
                return False, str(e)
            message = f"{type(e).__name__}: {e}"
        except BaseException:  # noqa: BLE001 - an exception whose str() raises
            return False, f"{type(e).__name__} (its message could not be written)"
        try:
            log.error("uncaught " + traceback.format_exc().rstrip())
        except BaseException:  # noqa: BLE001
            pass
        return False, message


def agent(fn=None, *, json: bool = False):
    """Makes `fn(input)` the agent's entry point.

        @ahv.agent
        def run(input: str) -> str: ...

        @ahv.agent(json=True)
        def run(ask: dict) -> dict: ...

    It defines `WitWorld` in `fn`'s module, the class componentize-py
    exports. Returning is `ok(answer)`; any exception becomes `err(message)`
    (see `outcome`), so the instance never traps on a Python exception. With
    `json=True` the input is parsed as JSON and the return value written as
    JSON (`ahv.json`). Returns `fn` unchanged.
    """

    def wrap(fn):
        module = sys.modules[fn.__module__]
        if "WitWorld" in vars(module):
            raise TypeError(f"{fn.__module__} already defines WitWorld: use @agent once")
        module.WitWorld = _world(fn, json)
        return fn

    return wrap if fn is None else wrap(fn)


def _world(fn, as_json: bool):
    world = importlib.import_module("wit_world")
    err = importlib.import_module("componentize_py_types").Err

    class WitWorld(world.WitWorld):
        def run(self, input: str) -> str:
            ok, text = outcome(fn, as_json, input)
            if ok:
                return text
            raise err(text)

    WitWorld.__qualname__ = WitWorld.__name__
    return WitWorld
