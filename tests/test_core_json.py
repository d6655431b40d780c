"""The native JSON writer of ``nomyo._core`` (``dumps``): runs no user code, formats numbers
and keys natively, and writes floats like Python's ``repr``. (Written for the security
review of the native module; its file and fork tests moved to test_keys and
test_secure_memory.)"""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from typing import Any

import pytest

from nomyo import _core

EVIL = "INJECTED"


def native(obj: Any) -> Any:
    return json.loads(bytes(_core.dumps(obj)))


def reference(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


class EvilInt(int):
    def __repr__(self) -> str:
        return f'0,"{EVIL}":1'

    __str__ = __repr__

    def __index__(self) -> int:  # must not be consulted either
        raise AssertionError("user code ran")


class EvilFloat(float):
    def __repr__(self) -> str:
        return f'0,"{EVIL}":1'

    __str__ = __repr__


class EvilStr(str):
    def isascii(self) -> bool:  # lies: would make the writer cache UTF-8 on the object
        return True

    def __repr__(self) -> str:
        return EVIL

    __str__ = __repr__


class Color(enum.IntEnum):
    RED = 5
    BLUE = 10**30


def check(obj: Any) -> None:
    out = bytes(_core.dumps(obj))
    assert EVIL.encode() not in out
    assert json.loads(out) == reference(obj)


@pytest.mark.parametrize(
    "obj",
    [
        EvilInt(7),
        EvilInt(10**400),
        EvilInt(-(2**100)),
        [EvilInt(1), EvilInt(2**64)],
        EvilFloat(1.5),
        {"f": EvilFloat(-0.25)},
        Color.RED,
        Color.BLUE,
        {"c": [Color.RED, Color.BLUE]},
    ],
)
def test_numbers_are_formatted_natively(obj: Any) -> None:
    check(obj)


def test_huge_ints_are_exact() -> None:
    for v in (10**400, -(10**400), 2**100, -(2**100), 2**63, -(2**63) - 1, 2**64 - 1):
        assert bytes(_core.dumps(v)) == str(v).encode()
        assert bytes(_core.dumps({v: 1})) == f'{{"{v}":1}}'.encode()


def test_non_string_keys_are_formatted_natively() -> None:
    obj = {
        EvilInt(3): 1,
        EvilInt(10**50): 2,
        EvilFloat(2.5): 3,
        Color.RED: 4,
        True: 5,
        None: 6,
        1.0e300: 7,
    }
    out = bytes(_core.dumps(obj))
    assert EVIL.encode() not in out
    got = json.loads(out)
    assert got["3"] == 1 and got[str(10**50)] == 2 and got["2.5"] == 3
    assert got["5"] == 4 and got["true"] == 5 and got["null"] == 6
    assert float(next(k for k, v in got.items() if v == 7)) == 1.0e300
    assert bytes(_core.dumps({Color.RED: 1})) == b'{"5":1}'
    assert json.dumps({Color.RED: 1}) == '{"5": 1}'


def test_what_json_cannot_hold_is_a_type_error_naming_its_type() -> None:
    with pytest.raises(TypeError, match=r"^Object of type set is not JSON serializable$"):
        _core.dumps({"x": [1, {2}]})
    with pytest.raises(TypeError, match=r"^keys must be str, int, float, bool or None, not tuple$"):
        _core.dumps({(1, 2): "tuple key"})


def test_nesting_is_bounded_at_256_levels() -> None:
    nested: Any = 0
    for _ in range(256):
        nested = [nested]
    assert bytes(_core.dumps(nested)) == b"[" * 256 + b"0" + b"]" * 256
    with pytest.raises(RecursionError, match="inside more than 256 arrays or objects"):
        _core.dumps({"deeper": nested})


def test_deep_values_do_not_overflow_a_small_thread_stack() -> None:
    """A worker thread with musl's default 128 KiB stack (a recursive walk took about 1 KiB
    per level and crashed the process before its depth limit). In a child process: a stack
    overflow would kill the test run."""
    script = """
import threading
from nomyo import _core
def nest(n, inner):
    for _ in range(n):
        inner = [inner]
    return inner
found = []
def work():
    found.append(len(bytes(_core.dumps({"d": nest(254, {"k": 0})}))))  # 256 deep
    try:
        _core.dumps(nest(100_000, 0))
    except RecursionError:
        found.append("RecursionError")
threading.stack_size(128 * 1024)
t = threading.Thread(target=work)
t.start()
t.join()
print(found)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([2 * 254 + 13, "RecursionError"]), done.stderr


@pytest.mark.parametrize("key", [float("nan"), float("inf"), EvilFloat("-inf")])
def test_non_finite_float_keys_are_refused(key: float) -> None:
    with pytest.raises(ValueError):
        _core.dumps({key: 1})


def test_str_subclass_takes_the_copy_free_path() -> None:
    for text in ("plain ascii", 'h\u00e9llo \u2713 "q"\n', "\U0001f600"):
        s = EvilStr(text)
        out = bytes(_core.dumps({s: s, "v": [s]}))
        assert EVIL.encode() not in out
        assert json.loads(out) == {text: text, "v": [text]}


def test_str_subclass_gets_no_utf8_cache() -> None:
    # A UTF-8 cache would grow the object; sys.getsizeof reports it.
    s = EvilStr("s\u00e9cret \u2713" * 10)
    before = sys.getsizeof(s)
    _core.dumps(s)
    assert sys.getsizeof(s) == before


class HookedDict(dict[Any, Any]):
    def items(self) -> Any:
        raise AssertionError("user code ran")

    def keys(self) -> Any:
        raise AssertionError("user code ran")

    def __iter__(self) -> Any:
        raise AssertionError("user code ran")

    def __getitem__(self, key: Any) -> Any:
        raise AssertionError("user code ran")


def test_dict_subclass_hooks_are_not_called() -> None:
    d = HookedDict({"a": 1, EvilInt(2): [EvilStr("x")]})
    assert json.loads(bytes(_core.dumps(d))) == {"a": 1, "2": ["x"]}


def test_dict_mutated_by_finalizers_during_the_walk_does_not_panic() -> None:
    import gc

    target: dict[Any, Any] = {}

    class Mutator:
        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            for i in range(20):
                target[f"added{id(self)}-{i}"] = i

    old = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    try:
        for _ in range(50):
            target.clear()
            target.update({EvilInt(10**60 + i): [EvilStr("v\u00e9")] for i in range(200)})
            for _ in range(20):
                Mutator()  # cyclic garbage with a finalizer, collected at any allocation
            out = json.loads(bytes(_core.dumps(target)))  # no PanicException
            assert isinstance(out, dict)
    finally:
        gc.set_threshold(*old)
        gc.collect()


# --- PrivateKey.load -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> _core.PrivateKey:
    return _core.PrivateKey.generate(2048)


# --- write_file ------------------------------------------------------------------------------


# --- MADV_WIPEONFORK -------------------------------------------------------------------------


def test_floats_are_written_like_python_repr() -> None:
    import random
    import struct

    rng = random.Random(1234)
    values = [0.0, -0.0, 1e16, 1e15, 1e-4, 1e-5, 2.5e-308, 5e-324, 1.7976931348623157e308]
    values += [rng.uniform(-1e6, 1e6) for _ in range(500)]
    while len(values) < 3000:
        (v,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if v == v and abs(v) != float("inf"):
            values.append(v)
    for v in values:
        assert bytes(_core.dumps(v)) == repr(v).encode()
        assert bytes(_core.dumps({v: 0})) == f'{{"{v!r}":0}}'.encode()
