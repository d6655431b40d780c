"""Secure memory: the truthfulness of get_memory_protection_info, and the buffer helpers."""

from __future__ import annotations

import json
import logging
import mmap
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import nomyo
from nomyo import SecureBuffer, _core, secure_bytearray, secure_bytes

REFERENCE_KEYS = {
    "enabled",
    "platform",
    "protection_level",
    "has_memory_locking",
    "has_secure_zeroing",
    "supports_full_protection",
    "page_size",
}
SECRET = b"s3cr3t-Pa55w0rd-XYZ"

# Probe mlock ourselves with ctypes, then ask nomyo; print both as JSON.
PROBE = r"""
import ctypes, json, mmap, resource
libc = ctypes.CDLL(None, use_errno=True)
area = mmap.mmap(-1, mmap.PAGESIZE)
view = (ctypes.c_char * mmap.PAGESIZE).from_buffer(area)
addr, size = ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(mmap.PAGESIZE)
locked = libc.mlock(addr, size) == 0
if locked:
    libc.munlock(addr, size)
del view
area.close()
import nomyo
print(json.dumps({
    "probe": locked,
    "info": nomyo.get_memory_protection_info(),
    "soft": resource.getrlimit(resource.RLIMIT_MEMLOCK)[0],
    "infinity": resource.RLIM_INFINITY,
}))
"""


def run_probe(memlock: int | None = None) -> dict[str, Any]:
    """Run PROBE in a fresh interpreter, optionally with a soft RLIMIT_MEMLOCK."""

    def limit() -> None:
        if memlock is not None:
            hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, hard))

    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture
def reenable() -> Iterator[None]:
    """Whatever the test does, leave secure memory enabled."""
    yield
    nomyo.enable_secure_memory()


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    return nomyo.get_memory_protection_info()


# --- get_memory_protection_info -------------------------------------------------------------


def test_info_has_the_reference_keys_and_types(info: dict[str, Any]) -> None:
    assert set(info) >= REFERENCE_KEYS
    assert {"has_dump_exclusion", "memlock_limit", "backend"} <= set(info)
    for key in (
        "enabled",
        "has_memory_locking",
        "has_secure_zeroing",
        "supports_full_protection",
        "has_dump_exclusion",
    ):
        assert type(info[key]) is bool, key
    assert info["protection_level"] in {"full", "zeroing_only", "none"}
    assert info["enabled"] is True
    assert info["has_secure_zeroing"] is True
    assert info["backend"] == "nomyo-rs"
    assert info["memlock_limit"] is None or type(info["memlock_limit"]) is int


def test_info_platform_and_page_size(info: dict[str, Any]) -> None:
    assert info["platform"] == sys.platform
    assert info["page_size"] == mmap.PAGESIZE == resource.getpagesize()


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_MEMLOCK semantics of Linux")
def test_memlock_limit_is_the_soft_rlimit(info: dict[str, Any]) -> None:
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    expected = None if soft == resource.RLIM_INFINITY else soft
    assert info["memlock_limit"] == expected


@pytest.mark.skipif(sys.platform != "linux", reason="mlock probe via ctypes on Linux")
@pytest.mark.parametrize("memlock", [None, 0, 4096 * 16], ids=["inherited", "zero", "64k"])
def test_has_memory_locking_matches_a_real_mlock(memlock: int | None) -> None:
    result = run_probe(memlock)
    info = result["info"]
    assert info["has_memory_locking"] is result["probe"]
    assert (info["protection_level"] == "full") is result["probe"]
    soft = result["soft"]
    assert info["memlock_limit"] == (None if soft == result["infinity"] else soft)
    if memlock is not None:
        assert soft == memlock
    if soft == 0 and os.geteuid() != 0:
        assert info["has_memory_locking"] is False  # no CAP_IPC_LOCK, nothing may be locked


def test_native_buffers_agree_with_the_report(info: dict[str, Any]) -> None:
    buffer = _core.SecretBuffer(SECRET)
    assert buffer.locked is info["has_memory_locking"]
    assert buffer.dump_excluded is info["has_dump_exclusion"]
    assert _core.memory_protection_info()["has_memory_locking"] is info["has_memory_locking"]


def test_full_protection_flag_agrees_with_the_level(reenable: None) -> None:
    # In the reference, supports_full_protection == (protection_level == "full"), always.
    for toggle in (nomyo.enable_secure_memory, nomyo.disable_secure_memory):
        toggle()
        info = nomyo.get_memory_protection_info()
        assert info["supports_full_protection"] is (info["protection_level"] == "full"), info


# --- enable / disable -------------------------------------------------------------------------


def test_disable_and_enable(reenable: None, info: dict[str, Any]) -> None:
    nomyo.disable_secure_memory()
    disabled = nomyo.get_memory_protection_info()
    assert disabled["enabled"] is False
    assert disabled["protection_level"] == "zeroing_only"
    assert disabled["supports_full_protection"] is False
    source = bytearray(SECRET)
    with secure_bytearray(source) as buffer:
        assert buffer.locked is False  # no locking while disabled
        assert bytes(buffer.data) == SECRET
        data = buffer.data
    assert data == bytearray(len(SECRET))  # still wiped
    assert source == bytearray(len(SECRET))
    nomyo.enable_secure_memory()
    enabled = nomyo.get_memory_protection_info()
    assert enabled["enabled"] is True
    assert enabled["protection_level"] == info["protection_level"]
    with secure_bytearray(SECRET) as buffer:
        assert buffer.locked is info["has_memory_locking"]


def test_disable_does_not_weaken_native_buffers(reenable: None, info: dict[str, Any]) -> None:
    nomyo.disable_secure_memory()
    assert _core.SecretBuffer(SECRET).locked is info["has_memory_locking"]


# --- SecureBuffer / secure_bytearray ------------------------------------------------------------


def test_secure_buffer_copies_and_wipes_a_bytearray_source(info: dict[str, Any]) -> None:
    source = bytearray(SECRET)
    buffer = SecureBuffer(source)
    assert source == bytearray(len(SECRET))
    assert bytes(buffer.data) == SECRET
    assert (buffer.size, len(buffer)) == (len(SECRET), len(SECRET))
    assert buffer.locked is False
    assert SECRET.decode() not in repr(buffer)
    with buffer as inside:
        assert inside is buffer
        assert buffer.locked is info["has_memory_locking"]
        assert bytes(buffer) == SECRET
    assert buffer.data == bytearray(len(SECRET))
    assert buffer.locked is False


def test_secure_buffer_bytes_source_is_untouched() -> None:
    source = bytes(SECRET)
    buffer = SecureBuffer(source)
    buffer.zero()
    assert source == SECRET
    assert buffer.data == bytearray(len(SECRET))


def test_secure_buffer_lock_unlock_return_values(info: dict[str, Any]) -> None:
    buffer = SecureBuffer(SECRET)
    assert buffer.lock() is info["has_memory_locking"]
    assert buffer.lock() is info["has_memory_locking"]  # idempotent
    assert buffer.unlock() is True
    assert buffer.locked is False
    assert buffer.unlock() is True


def test_secure_bytearray_wipes_on_exit_and_on_error(info: dict[str, Any]) -> None:
    source = bytearray(SECRET)
    with secure_bytearray(source) as buffer:
        assert source == bytearray(len(SECRET))
        assert bytes(buffer.data) == SECRET
        assert buffer.locked is info["has_memory_locking"]
        data = buffer.data
    assert data == bytearray(len(SECRET))
    assert buffer.locked is False
    seen: list[SecureBuffer] = []

    def fail_inside() -> None:
        with secure_bytearray(SECRET) as failing:
            seen.append(failing)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen[0].data == bytearray(len(SECRET))
    assert seen[0].locked is False


def test_secure_bytearray_without_lock_and_from_memoryview() -> None:
    with secure_bytearray(memoryview(SECRET), lock=False) as buffer:
        assert buffer.locked is False
        assert bytes(buffer.data) == SECRET
    assert buffer.data == bytearray(len(SECRET))


def test_secure_bytearray_empty(info: dict[str, Any]) -> None:
    with secure_bytearray(b"") as buffer:
        assert len(buffer) == 0
        assert buffer.data == bytearray()
    assert buffer.locked is False


def test_secure_bytes_is_a_deprecated_alias(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nomyo"), secure_bytes(SECRET) as buffer:
        assert bytes(buffer.data) == SECRET
        data = buffer.data
    assert data == bytearray(len(SECRET))
    assert any("deprecated" in r.getMessage() for r in caplog.records)


def test_wipe_bytearray_helper() -> None:
    data = bytearray(SECRET)
    _core.wipe_bytearray(data)
    assert data == bytearray(len(SECRET))
    empty = bytearray()
    _core.wipe_bytearray(empty)
    assert empty == bytearray()


# --- _core.SecretBuffer -------------------------------------------------------------------------


def test_secret_buffer_basics(info: dict[str, Any]) -> None:
    buffer = _core.SecretBuffer(SECRET)
    assert len(buffer) == len(SECRET)
    assert bytes(buffer) == SECRET
    assert buffer.locked is info["has_memory_locking"]
    for text in (repr(buffer), str(buffer)):
        assert SECRET.decode() not in text
        assert SECRET.hex() not in text
        assert str(len(SECRET)) in text


def test_secret_buffer_zero_keeps_length() -> None:
    buffer = _core.SecretBuffer(SECRET)
    buffer.zero()
    assert len(buffer) == len(SECRET)
    assert bytes(buffer) == bytes(len(SECRET))


def test_secret_buffer_close_is_final_and_idempotent() -> None:
    buffer = _core.SecretBuffer(SECRET)
    buffer.close()
    assert len(buffer) == 0
    assert bytes(buffer) == b""
    buffer.close()
    buffer.zero()
    assert len(buffer) == 0


def test_secret_buffer_context_manager_closes() -> None:
    with _core.SecretBuffer(SECRET) as buffer:
        assert bytes(buffer) == SECRET
    assert len(buffer) == 0
    with pytest.raises(ValueError, match="inside"), _core.SecretBuffer(SECRET) as failing:
        raise ValueError("inside")
    assert len(failing) == 0


def test_secret_buffer_sources() -> None:
    source = bytearray(SECRET)
    assert bytes(_core.SecretBuffer(source)) == SECRET
    assert source == bytearray(len(SECRET))  # a bytearray source is wiped
    plain = bytes(SECRET)
    assert bytes(_core.SecretBuffer(plain)) == SECRET
    assert plain == SECRET
    for empty in (_core.SecretBuffer(), _core.SecretBuffer(b""), _core.SecretBuffer(None)):  # type: ignore[arg-type]
        assert len(empty) == 0
    with pytest.raises(TypeError):
        _core.SecretBuffer("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _core.SecretBuffer(12)  # type: ignore[arg-type]


def test_secret_buffer_without_lock() -> None:
    buffer = _core.SecretBuffer(SECRET, lock=False)
    assert buffer.locked is False
    assert bytes(buffer) == SECRET


def test_secret_buffer_large() -> None:
    data = os.urandom(5 * 1024 * 1024)
    buffer = _core.SecretBuffer(data)
    assert len(buffer) == len(data)
    assert bytes(buffer) == data
    buffer.close()


def test_seal_bytes_accepts_what_the_stub_declares() -> None:
    # _core.pyi: seal_bytes(data: bytes | bytearray | memoryview, recipient).
    key = _core.PrivateKey.generate(2048)
    problems = []
    for data in (bytes(SECRET), bytearray(SECRET), memoryview(SECRET)):
        try:
            envelope = _core.seal_bytes(data, key.public_key())
        except TypeError as exc:
            problems.append(f"seal_bytes({type(data).__name__}): {exc}")
            continue
        assert bytes(_core.open_bytes(envelope, key)) == SECRET
    assert problems == []


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_CORE / prctl on Linux")
def test_disable_core_dumps_in_a_subprocess() -> None:
    script = (
        "import json, resource, nomyo._core as c; ok = c.disable_core_dumps();"
        "print(json.dumps([ok, resource.getrlimit(resource.RLIMIT_CORE)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    ok, limits = json.loads(proc.stdout)
    assert ok is True
    assert limits == [0, 0]


def test_disable_core_dumps_in_a_child_process() -> None:
    """Opt-in only: importing nomyo changes nothing; the call sets RLIMIT_CORE to 0."""
    import subprocess
    import sys

    code = (
        "import resource, nomyo\n"
        "before = resource.getrlimit(resource.RLIMIT_CORE)\n"
        "ok = nomyo.disable_core_dumps()\n"
        "print(before != (0, 0), ok, resource.getrlimit(resource.RLIMIT_CORE))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split(maxsplit=2)
    assert out[1] == "True"
    assert out[2].strip() == "(0, 0)"
