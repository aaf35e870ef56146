"""Unit tests of the SDK under plain CPython, against fake bindings (no Wasm).

Run from `example-agents/python/sdk`: `python3 -B -m unittest discover -s tests`
(`tests/integration/python.rs` runs them too). The fakes mimic what
componentize-py generates: `wit_world.imports.<interface>` modules whose
functions return a value or raise `componentize_py_types.Err(Error_*)`.
"""

import dataclasses
import enum
import sys
import types
import unittest
from pathlib import Path


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


@dataclasses.dataclass(frozen=True)
class Err(Exception):
    value: object


def _error_case(name, payload=str):
    return dataclasses.make_dataclass("Error_" + name, [("value", payload)])


CASES = {
    n: _error_case(n, int if n == "RateLimited" else str)
    for n in (
        "InvalidPath NotFound AlreadyExists Denied Quota UnknownAction ActionFailed "
        "Io Conflict Deadlock Timeout InvalidKey RateLimited Quarantined"
    ).split()
}


class Host:
    """The fake host: files, state with versions, locks, log lines."""

    def __init__(self):
        self.files = {}
        self.state = {}  # key -> (bytes, version)
        self.locks = {}  # (kind, name) -> mode
        self.logs = []
        self.puts = 0
        self.before_put = None  # called before each put (a rival write)
        self.snapshot = None  # get answers from this dict when set
        self.put_error = None


HOST = Host()


def _err(case, detail):
    raise Err(CASES[case](detail))


def _read(path):
    if path not in HOST.files:
        _err("NotFound", path)
    return HOST.files[path]


def _write(path, data):
    assert isinstance(data, bytes)
    HOST.files[path] = data


@dataclasses.dataclass
class Versioned:
    value: bytes
    version: int
    clock: list
    writer: str


def _get(key):
    store = HOST.snapshot if HOST.snapshot is not None else HOST.state
    if key not in store:
        return None
    value, version = store[key]
    return Versioned(value, version, [], "did:test:someone")


def _put(key, value, expected):
    assert isinstance(value, bytes)
    if HOST.before_put is not None:
        HOST.before_put(key)
    HOST.puts += 1
    if HOST.put_error is not None:
        _err(*HOST.put_error)
    current = HOST.state.get(key, (b"", 0))[1]
    if current != expected:
        _err("Conflict", f"{key}: expected version {expected}, it is at {current}")
    HOST.state[key] = (value, current + 1)
    return current + 1


class LockMode(enum.Enum):
    READ = 0
    WRITE = 1
    EXCLUSIVE = 2


@dataclasses.dataclass
class LockTarget_Path:
    value: str


@dataclasses.dataclass
class LockTarget_Key:
    value: str


def _tkey(t):
    return (type(t).__name__, t.value)


def _acquire(target, mode, wait_ms):
    HOST.locks[_tkey(target)] = (target, mode)


def _release(target):
    if HOST.locks.pop(_tkey(target), None) is None:
        _err("NotFound", f"no lock on {target.value}")


class Level(enum.Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class WitWorldProtocol:
    pass


def install_fakes():
    _module("componentize_py_types", Err=Err)
    _module("wit_world", WitWorld=WitWorldProtocol, __path__=[])
    _module("wit_world.imports", __path__=[])
    _module("wit_world.imports.types", **{c.__name__: c for c in CASES.values()})
    _module(
        "wit_world.imports.context",
        whoami=lambda: types.SimpleNamespace(agent_id="did:test:py", ring=2),
        current_ring=lambda: 2,
    )
    _module(
        "wit_world.imports.log",
        Level=Level,
        log=lambda level, message: HOST.logs.append((level.name.lower(), message)),
    )
    _module("wit_world.imports.vfs_read", read=_read, list_dir=lambda p: sorted(HOST.files))
    _module("wit_world.imports.vfs_write", write=_write)
    _module("wit_world.imports.state_read", get=_get, keys=lambda p: sorted(HOST.state))
    _module("wit_world.imports.state_write", put=_put)
    _module(
        "wit_world.imports.locks",
        LockMode=LockMode,
        LockTarget_Path=LockTarget_Path,
        LockTarget_Key=LockTarget_Key,
        acquire=_acquire,
        release=_release,
        held=lambda: list(HOST.locks.values()),
    )


install_fakes()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ahv  # noqa: E402
from ahv import _wit, errors, locks, state, vfs  # noqa: E402


class Base(unittest.TestCase):
    def setUp(self):
        global HOST
        HOST.__init__()


class Errors(Base):
    def test_every_wit_case_has_its_subclass_code_and_describe_line(self):
        expected = {
            "InvalidPath": "invalid-path",
            "NotFound": "not-found",
            "AlreadyExists": "already-exists",
            "Denied": "denied",
            "Quota": "quota",
            "UnknownAction": "unknown-action",
            "ActionFailed": "action-failed",
            "Io": "io",
            "Conflict": "conflict",
            "Deadlock": "deadlock",
            "Timeout": "timeout",
            "InvalidKey": "invalid-key",
            "Quarantined": "quarantined",
        }
        for case, code in expected.items():
            e = errors.from_wit(CASES[case]("why"))
            self.assertIs(type(e), getattr(ahv, case))
            self.assertIsInstance(e, ahv.AhvError)
            self.assertEqual((e.code, e.detail, str(e)), (code, "why", f"{code}: why"))

    def test_rate_limited_carries_the_wait(self):
        e = errors.from_wit(CASES["RateLimited"](250))
        self.assertIsInstance(e, ahv.RateLimited)
        self.assertEqual((e.retry_after_ms, str(e)), (250, "rate-limited: retry in 250 ms"))
        e = errors.from_wit(CASES["RateLimited"](2**64 - 1))
        self.assertEqual(str(e), "rate-limited: the budget does not refill")

    def test_a_capability_error_arrives_as_its_subclass(self):
        with self.assertRaises(ahv.NotFound) as caught:
            vfs.read("missing.txt")
        self.assertEqual(str(caught.exception), "not-found: missing.txt")

    def test_invalid_utf8_text_is_io(self):
        HOST.files["bin"] = b"\xff"
        with self.assertRaises(ahv.Io):
            vfs.read_text("bin")
        vfs.write("t.txt", "é")
        self.assertEqual(vfs.read_text("t.txt"), "é")


class NotInWorld(Base):
    def test_an_interface_the_world_lacks_is_an_ahv_error_at_the_call(self):
        saved = sys.modules["wit_world.imports.vfs_write"]
        sys.modules["wit_world.imports.vfs_write"] = None  # import fails, as in `sandbox`
        _wit._loaded.pop("vfs_write", None)
        try:
            with self.assertRaises(ahv.NotInWorld) as caught:
                vfs.write("x.txt", b"x")
            e = caught.exception
            self.assertIsInstance(e, ahv.AhvError)
            self.assertEqual(e.code, "not-in-world")
            self.assertIn("does not import vfs-write; build it against standard", str(e))
            self.assertEqual(HOST.files, {})
        finally:
            sys.modules["wit_world.imports.vfs_write"] = saved
            _wit._loaded.pop("vfs_write", None)


class Update(Base):
    @staticmethod
    def incr(calls):
        def f(old):
            calls.append(old)
            return str(int((old or b"0").decode()) + 1)

        return f

    def test_a_fresh_key_is_written_at_version_1(self):
        calls = []
        self.assertEqual(state.update("n", self.incr(calls)), 1)
        self.assertEqual((calls, HOST.state["n"]), ([None], (b"1", 1)))

    def test_a_lost_race_is_read_again_and_retried(self):
        HOST.state["n"] = (b"5", 1)
        rival = []

        def slip(key):
            if not rival:
                rival.append(1)
                HOST.state[key] = (b"100", HOST.state[key][1] + 1)

        HOST.before_put = slip
        calls = []
        self.assertEqual(state.update("n", self.incr(calls)), 3)
        self.assertEqual(calls, [b"5", b"100"])
        self.assertEqual(HOST.state["n"], (b"101", 3))

    def test_a_snapshot_that_shows_the_lost_version_stops_at_once(self):
        HOST.state["n"] = (b"5", 1)
        HOST.snapshot = dict(HOST.state)
        HOST.state["n"] = (b"6", 2)  # written by someone after the snapshot
        calls = []
        with self.assertRaises(ahv.Conflict):
            state.update("n", self.incr(calls))
        self.assertEqual((len(calls), HOST.puts), (1, 1))

    def test_gives_up_after_16_lost_races_with_the_last_conflict(self):
        HOST.state["n"] = (b"0", 1)
        HOST.before_put = lambda key: HOST.state.__setitem__(key, (b"9", HOST.state[key][1] + 1))
        with self.assertRaises(ahv.Conflict) as caught:
            state.update("n", self.incr([]))
        self.assertEqual(HOST.puts, state.UPDATE_ATTEMPTS)
        self.assertIn("expected version 16", str(caught.exception))

    def test_other_errors_are_raised_at_once(self):
        HOST.put_error = ("Denied", "isolation needs a lock")
        calls = []
        with self.assertRaises(ahv.Denied):
            state.update("n", self.incr(calls))
        self.assertEqual((len(calls), HOST.puts), (1, 1))

    def test_json_values_and_a_value_that_is_not_json(self):
        self.assertEqual(state.update_json("t", lambda old: {"runs": (old or {"runs": 0})["runs"] + 1}), 1)
        state.update_json("t", lambda old: {"runs": old["runs"] + 1})
        self.assertEqual(HOST.state["t"], (b'{"runs":2}', 2))
        self.assertEqual(state.get_json("t"), {"runs": 2})
        HOST.state["bad"] = (b"not-json", 1)
        with self.assertRaises(ahv.InvalidKey) as caught:
            state.update_json("bad", lambda old: old)
        self.assertTrue(str(caught.exception).startswith('invalid-key: the value of "bad" is not JSON'))
        self.assertEqual((HOST.state["bad"], HOST.puts), ((b"not-json", 1), 2))


class Locks(Base):
    def test_the_guard_releases_at_the_end_of_the_block_even_on_an_exception(self):
        with locks.lock(key="k", mode="write") as g:
            self.assertEqual(locks.held(), [("key", "k", "write")])
            self.assertEqual(g.target, ("key", "k"))
        self.assertEqual(locks.held(), [])
        with self.assertRaises(ZeroDivisionError):
            with locks.lock(path="shared/a", mode="read"):
                1 / 0
        self.assertEqual(locks.held(), [])

    def test_a_guard_never_releases_a_lock_held_before_it(self):
        locks.acquire(key="j", mode="read")
        with locks.lock(key="j", mode="write"):
            pass
        self.assertEqual(locks.held(), [("key", "j", "write")])
        g = locks.lock(key="j", mode="write")
        g.release()
        self.assertEqual(locks.held(), [("key", "j", "write")])

    def test_an_explicit_release_reports_a_withdrawn_lock(self):
        g = locks.lock(path="p", mode="exclusive")
        HOST.locks.clear()
        with self.assertRaises(ahv.NotFound):
            g.release()

    def test_a_target_and_a_mode_are_checked(self):
        with self.assertRaises(ValueError):
            locks.lock(path="p", key="k", mode="read")
        with self.assertRaises(ValueError):
            locks.lock(key="k", mode="shared")


class Outcome(Base):
    def test_exceptions_become_the_err_message_and_never_escape(self):
        def fails(e):
            def f(_):
                raise e

            return f

        cases = [
            (ahv.NotFound("x.txt"), "not-found: x.txt"),
            (ahv.Failure("asked to fail"), "asked to fail"),
            (ValueError("bad"), "ValueError: bad"),
            (SystemExit(3), "SystemExit: 3"),
            (KeyboardInterrupt(), "KeyboardInterrupt: "),
        ]
        for e, message in cases:
            self.assertEqual(ahv.outcome(fails(e), False, "in"), (False, message))
        self.assertIn(("error", "uncaught Traceback"), [(l, m[:18]) for l, m in HOST.logs])
        self.assertTrue(any("ValueError: bad" in m for _, m in HOST.logs))
        self.assertEqual(
            ahv.outcome(lambda s: 3, False, "in"),
            (False, "TypeError: run must return a str, not int"),
        )
        self.assertEqual(ahv.outcome(lambda s: s.upper(), False, "in"), (True, "IN"))

    def test_text_the_host_cannot_take_is_escaped_and_a_bad_str_is_caught(self):
        # A lone surrogate would trap in componentize-py's conversion.
        self.assertEqual(ahv.outcome(lambda s: "a\ud800b", False, "in"), (True, "a\\ud800b"))

        class Unprintable(Exception):
            def __str__(self):
                raise RuntimeError("no")

        def fails(_):
            raise Unprintable()

        self.assertEqual(
            ahv.outcome(fails, False, "in"),
            (False, "Unprintable (its message could not be written)"),
        )
        ok, message = ahv.outcome(lambda ask: ask, True, '"\\ud800"')
        self.assertEqual((ok, message.split(":")[0]), (False, "input is not the JSON expected"))

    def test_arguments_a_binding_would_trap_on_are_refused_first(self):
        from ahv import _wit

        def read(path: str) -> bytes:  # the shape componentize-py generates
            return b""

        def put(key: str, value: bytes, expected_version: int) -> int:
            return 1

        for f, args, want in [
            (read, (5,), "argument path must be a str, not int"),
            (read, (None,), "argument path must be a str, not NoneType"),
            (read, ("a\ud800",), "argument path is not valid UTF-8 text"),
            (put, ("k", "text", 0), "argument value must be bytes, not str"),
            (put, ("k", b"v", -1), "argument expected_version is -1, outside 0..2**64-1"),
            (put, ("k", b"v", True), "argument expected_version must be an int, not bool"),
        ]:
            with self.assertRaises((TypeError, ValueError)) as caught:
                _wit._check("x.y", f, args)
            self.assertIn(want, str(caught.exception))
        _wit._check("x.y", put, ("k", b"v", 2**64 - 1))
        from ahv import state, vfs

        for to_bytes in (state._bytes, vfs._bytes):
            self.assertEqual(to_bytes("é"), "é".encode())
            self.assertEqual(to_bytes(bytearray(b"ab")), b"ab")
            with self.assertRaises(TypeError):
                to_bytes(5)  # would be five NUL bytes

    def test_the_json_convention(self):
        double = lambda ask: {"runs": ask["runs"] * 2, "name": "é"}  # noqa: E731
        self.assertEqual(ahv.outcome(double, True, '{"runs": 21}'), (True, '{"runs":42,"name":"é"}'))
        self.assertEqual(
            ahv.outcome(double, True, "{"),
            (False, "input is not the JSON expected: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        )
        self.assertEqual(ahv.outcome(double, True, "NaN"), (False, "input is not the JSON expected: NaN is not JSON"))
        ok, message = ahv.outcome(lambda ask: {"x": float("nan")}, True, "{}")
        self.assertEqual((ok, message.split(":")[0]), (False, "the answer cannot be written as JSON"))

    def test_the_decorator_defines_the_export(self):
        module = _module("fake_app")
        exec(
            "import ahv\n"
            "@ahv.agent(json=True)\n"
            "def run(ask):\n"
            "    return {'got': ask}\n",
            module.__dict__,
        )
        world = module.WitWorld()
        self.assertIsInstance(world, WitWorldProtocol)
        self.assertEqual(world.run("[1]"), '{"got":[1]}')
        with self.assertRaises(Err) as caught:
            world.run("nope")
        self.assertTrue(caught.exception.value.startswith("input is not the JSON expected"))
        with self.assertRaises(TypeError):
            ahv.agent(module.run)


if __name__ == "__main__":
    unittest.main()
