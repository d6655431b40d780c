"""Hypothesis fuzzing of the Python entry points of the native core.

Whatever bytes or objects go in, the only acceptable failures are typed: a
``nomyo.NomyoError`` subclass, ``TypeError`` or ``ValueError``; never a Rust panic surfacing
as ``pyo3_runtime.PanicException`` (a ``BaseException``), and every call returns quickly
(hypothesis ``deadline``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import nomyo
from nomyo import _core

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures" / "tpm"
ALLOWED = (nomyo.NomyoError, TypeError, ValueError)
FAST = settings(
    deadline=timedelta(milliseconds=1500),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PAYLOAD_ID = "fuzz-payload-id"

KEY = _core.PrivateKey.generate(2048)
PUBLIC = KEY.public_key()
OTHER_PUBLIC = _core.PrivateKey.generate(2048).public_key()


def typed(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; return its result or the (allowed) exception it raised."""
    try:
        return fn(*args)
    except BaseException as exc:
        caught = exc
    name = type(caught).__name__
    assert name != "PanicException", f"native panic: {caught!r}"
    assert isinstance(caught, ALLOWED), f"untyped {name}: {caught!r}"
    return caught


# --- strategies -----------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
B64_LENGTHS = st.sampled_from([0, 1, 11, 12, 13, 15, 16, 17, 31, 32, 33, 255, 256, 257, 512, 513])


@st.composite
def base64ish(draw: st.DrawFn) -> str:
    """Valid base64 of an interesting length, or something almost like it."""
    n = draw(B64_LENGTHS | st.integers(0, 1200))
    text = base64.b64encode(draw(st.binary(min_size=n, max_size=n))).decode()
    damage = draw(st.sampled_from(["none", "strip", "urlsafe", "insert", "space", "unicode"]))
    if damage == "strip":
        text = text.rstrip("=")
    elif damage == "urlsafe":
        text = text.replace("+", "-").replace("/", "_")
    elif damage == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["=", "!", "\n", "\x00", "é"])) + text[at:]
    elif damage == "space":
        text = " " + text + "\n"
    elif damage == "unicode":
        text = text + "\u0660"
    return text


FIELD_VALUES = (
    base64ish()
    | JSON_SCALARS
    | st.lists(JSON_SCALARS, max_size=3)
    | st.dictionaries(st.text(max_size=8), JSON_SCALARS, max_size=3)
    | st.sampled_from(["1.0", "2.0", "hybrid-aes256-rsa4096", "RSA-OAEP-SHA256", "AES-256-GCM"])
    | st.floats()  # NaN and infinities: json.dumps writes tokens that are not JSON
)
ENVELOPE_PATHS = [
    ("version",),
    ("algorithm",),
    ("encrypted_payload",),
    ("encrypted_payload", "ciphertext"),
    ("encrypted_payload", "nonce"),
    ("encrypted_payload", "tag"),
    ("encrypted_aes_key",),
    ("key_algorithm",),
    ("payload_algorithm",),
    ("processed_at",),
    ("extra",),
    ("encrypted_payload", "extra"),
]
PLAINTEXTS = [
    {"choices": [{"message": {"content": "hi"}}], "_metadata": {"payload_id": PAYLOAD_ID}},
    {"a": 1},
    [1, 2, 3],
    "just a string",
]
ENVELOPES = [_core.seal_json(p, PUBLIC, processed_at=1700000000) for p in PLAINTEXTS]


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    """A valid envelope (sealed to KEY) with a few fields replaced, deleted or retyped."""
    doc = json.loads(draw(st.sampled_from(ENVELOPES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ENVELOPE_PATHS))
        parent = doc
        for part in path[:-1]:
            if not isinstance(parent.get(part), dict):
                break
            parent = parent[part]
        else:
            if draw(st.booleans()) and path[-1] in parent:
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(FIELD_VALUES)
    text = json.dumps(doc, allow_nan=True)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = (
            text[:cut] + draw(st.sampled_from(["", "}", "]", ",", '"', "\\", "\x00"])) + text[cut:]
        )
    return text.encode("utf-8", errors="surrogatepass")


# --- open_json / open_bytes -----------------------------------------------------------------------


def _check_opened(result: Any) -> None:
    if isinstance(result, BaseException):
        return
    if isinstance(result, tuple):  # open_json
        _, processed_at, algorithm = result
        assert processed_at is None or isinstance(processed_at, (int, float))
        assert algorithm == "hybrid-aes256-rsa4096"
    else:  # open_bytes
        assert isinstance(result, _core.SecretBuffer)
        result.close()


@FAST
@given(data=st.binary(max_size=4096))
@example(data=b"")
@example(data=b"{}")
@example(data=b"\xff\xfe{")
@example(data=b"[" * 5000)
def test_open_arbitrary_bytes(data: bytes) -> None:
    for fn in (_core.open_json, _core.open_bytes):
        result = typed(fn, data, KEY)
        assert isinstance(result, ALLOWED), "random bytes never open"


@FAST
@given(envelope=mutated_envelopes())
def test_open_mutated_envelopes(envelope: bytes) -> None:
    for fn in (_core.open_json, _core.open_bytes):
        _check_opened(typed(fn, envelope, KEY))
    _check_opened(typed(_core.open_json, envelope, KEY, len(envelope) // 2))


@FAST
@given(envelope=st.sampled_from(ENVELOPES), processed_at=FIELD_VALUES)
def test_processed_at_of_any_type(envelope: bytes, processed_at: Any) -> None:
    """processed_at is not authenticated: whatever a server writes there stays typed."""
    doc = json.loads(envelope)
    doc["processed_at"] = processed_at
    _check_opened(typed(_core.open_json, json.dumps(doc).encode(), KEY))


@FAST
@given(
    data=st.one_of(st.text(max_size=64), st.integers(), st.none(), st.lists(st.integers())),
    max_size=st.integers(min_value=-(2**65), max_value=2**65) | st.none(),
)
def test_open_wrong_argument_types(data: Any, max_size: Any) -> None:
    args = (data, KEY) if max_size is None else (data, KEY, max_size)
    typed(_core.open_json, *args)
    typed(_core.open_bytes, *args)
    typed(_core.open_json, ENVELOPES[0], data)


@FAST
@given(plaintext=st.binary(max_size=512))
def test_open_json_of_non_json_plaintext(plaintext: bytes) -> None:
    envelope = _core.seal_bytes(plaintext, PUBLIC)
    result = typed(_core.open_json, envelope, KEY)
    if isinstance(result, BaseException):
        assert isinstance(result, nomyo.EnvelopeError), repr(result)
    with _core.open_bytes(envelope, KEY) as buf:
        assert bytes(buf) == plaintext


# --- SecureCompletionClient.decrypt_response ------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _client(mode: str) -> nomyo.SecureCompletionClient:
    client = nomyo.SecureCompletionClient(attestation=mode)  # type: ignore[arg-type]
    client._set_key(KEY)
    return client


CLIENTS = {mode: _client(mode) for mode in ("off", "verify", "require")}


@st.composite
def reply_plaintexts(draw: st.DrawFn) -> Any:
    """Decrypted replies of every shape, including hostile _metadata and attestation blocks."""
    kind = draw(st.sampled_from(["any", "metadata", "attestation"]))
    if kind == "any":
        return draw(JSON_VALUES)
    metadata: Any = draw(
        st.dictionaries(
            st.sampled_from(["payload_id", "processed_at", "tpm_attestation", "x"]),
            JSON_VALUES | st.just(PAYLOAD_ID),
            max_size=3,
        )
        | JSON_VALUES
    )
    if kind == "attestation":
        metadata = {"payload_id": PAYLOAD_ID, "tpm_attestation": draw(attestation_blocks())}
    return {"choices": [], "_metadata": metadata}


@FAST
@given(
    reply=reply_plaintexts(),
    mode=st.sampled_from(["off", "verify", "require"]),
    sealed_to_us=st.booleans(),
)
def test_decrypt_response_of_hostile_replies(
    loop: asyncio.AbstractEventLoop, reply: Any, mode: str, sealed_to_us: bool
) -> None:
    envelope = _core.seal_json(reply, PUBLIC if sealed_to_us else OTHER_PUBLIC)
    client = CLIENTS[mode]
    result = typed(loop.run_until_complete, client.decrypt_response(envelope, PAYLOAD_ID))
    if not sealed_to_us:
        assert isinstance(result, nomyo.SecurityError)
    if isinstance(result, BaseException):
        assert isinstance(result, nomyo.NomyoError), f"not a NomyoError: {result!r}"
    else:
        assert isinstance(result, dict)
        assert result["_metadata"]["payload_id"] == PAYLOAD_ID
        if mode == "require":
            assert result["_metadata"]["attestation_verification"]["valid"] is True


@FAST
@given(envelope=mutated_envelopes() | st.binary(max_size=2048))
def test_decrypt_response_of_mutated_envelopes(
    loop: asyncio.AbstractEventLoop, envelope: bytes
) -> None:
    result = typed(loop.run_until_complete, CLIENTS["verify"].decrypt_response(envelope, "p"))
    if isinstance(result, BaseException):
        assert isinstance(result, nomyo.NomyoError), f"not a NomyoError: {result!r}"


# --- verify_attestation ---------------------------------------------------------------------------

FIXTURE_BLOCKS = [
    json.loads(p.read_text(encoding="utf-8")) for p in sorted(FIXTURES.glob("*/*.json"))
]
ATT_KEYS = [
    "is_available",
    "pcr_banks",
    "pcr_values",
    "quote_b64",
    "signature_b64",
    "aik_pubkey_b64",
]
PCR_BANKS = st.sampled_from(
    ["sha256:0,7,10", "sha1:0,7+sha256:0,7,10", "sha256:", "sha256:99", "md5:1", "", "sha256:0,0"]
) | st.text(max_size=20)
PCR_VALUES = st.dictionaries(
    st.sampled_from(["sha1", "sha256", "sha384", "x"]) | st.text(max_size=5),
    st.dictionaries(
        st.sampled_from(["0", "7", "10", "24", "-1", "4294967296", "a"]) | st.text(max_size=4),
        st.sampled_from(["00" * 32, "ff" * 20, "zz", ""]) | st.text(max_size=70) | JSON_SCALARS,
        max_size=4,
    )
    | JSON_VALUES,
    max_size=3,
)


@st.composite
def attestation_blocks(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["random", "shaped", "fixture"]))
    if kind == "random":
        return draw(JSON_VALUES)
    if kind == "fixture":
        block = dict(draw(st.sampled_from(FIXTURE_BLOCKS))["tpm_attestation"])
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(ATT_KEYS))
            if draw(st.booleans()):
                block.pop(key, None)
            elif key == "pcr_values":
                block[key] = draw(PCR_VALUES)
            elif key == "pcr_banks":
                block[key] = draw(PCR_BANKS)
            elif key.endswith("_b64") and isinstance(block.get(key), str):
                try:
                    raw = bytearray(base64.b64decode(block[key]))
                except ValueError:  # the bad-base64 fixture: leave that field as it is
                    continue
                if raw:
                    at = draw(st.integers(0, len(raw) - 1))
                    raw[at] ^= 1 << draw(st.integers(0, 7))
                    cut = draw(st.integers(0, len(raw)))
                    raw = raw[:cut] if draw(st.booleans()) else raw
                block[key] = base64.b64encode(bytes(raw)).decode()
            else:
                block[key] = draw(FIELD_VALUES)
        return block
    return {
        "is_available": draw(st.booleans() | JSON_SCALARS),
        "pcr_banks": draw(PCR_BANKS),
        "pcr_values": draw(PCR_VALUES),
        "quote_b64": draw(base64ish()),
        "signature_b64": draw(base64ish()),
        "aik_pubkey_b64": draw(base64ish()),
    }


POLICIES = st.none() | st.dictionaries(
    st.sampled_from(["sha1", "sha256"]) | st.text(max_size=5),
    st.dictionaries(
        st.integers(min_value=-5, max_value=40),
        st.sampled_from(["00" * 32, "AB" * 32]) | st.text(max_size=66),
        max_size=3,
    ),
    max_size=2,
)


@FAST
@given(block=attestation_blocks(), payload_id=st.text(max_size=40), policy=POLICIES)
def test_verify_attestation_never_panics(block: Any, payload_id: str, policy: Any) -> None:
    result = typed(_core.verify_attestation, block, payload_id, policy)
    if isinstance(result, BaseException):
        return
    assert isinstance(result, dict)
    assert result["genuine_tpm_proven"] is False and result["aik_trusted"] is False
    if result["valid"]:
        assert result["signature_valid"] and result["bound_to_request"]
        assert result["pcr_digest_valid"] and result["reason"] == "ok"


@FAST
@given(fixture=st.sampled_from(FIXTURE_BLOCKS))
def test_verify_attestation_fixtures_as_expected(fixture: dict[str, Any]) -> None:
    result = _core.verify_attestation(fixture["tpm_attestation"], fixture["payload_id"], None)
    assert (
        result["valid"] is fixture["expected"]["valid"]
        or fixture["description"].find("software") >= 0
    )


@FAST
@given(
    block=st.one_of(st.integers(), st.text(), st.lists(st.integers()), st.binary(), st.none()),
    payload_id=st.one_of(st.text(max_size=5), st.integers(), st.none(), st.binary(max_size=5)),
    policy=st.one_of(
        st.integers(),
        st.text(max_size=5),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.dictionaries(
            st.text(max_size=3),
            st.dictionaries(st.integers(-(2**40), 2**40), st.text(max_size=3), max_size=2),
            max_size=2,
        ),
    ),
)
def test_verify_attestation_wrong_types(block: Any, payload_id: Any, policy: Any) -> None:
    typed(_core.verify_attestation, block, payload_id, policy)


# --- PEM keys -------------------------------------------------------------------------------------

PRIVATE_PEM = KEY.to_pem()
PUBLIC_PEM = PUBLIC.to_pem().encode()


@st.composite
def mutated_pems(draw: st.DrawFn) -> bytes:
    pem = bytearray(draw(st.sampled_from([PRIVATE_PEM, PUBLIC_PEM])))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        at = draw(st.integers(0, len(pem) - 1)) if pem else 0
        if op == "flip" and pem:
            pem[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete" and pem:
            del pem[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            pem[at:at] = draw(st.sampled_from([b"A", b"=", b"-----", b"\n", b"\x00", b"\xff"]))
        elif op == "truncate":
            del pem[at:]
    return bytes(pem)


PASSWORDS = st.none() | st.binary(max_size=8) | st.text(max_size=8)


@settings(
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.binary(max_size=3000) | mutated_pems(), password=PASSWORDS)
@example(data=b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n", password=None)
@example(data=b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", password=None)
def test_pem_loaders_with_arbitrary_bytes(data: bytes, password: Any) -> None:
    private = typed(_core.PrivateKey.from_pem, data, password)
    if not isinstance(private, BaseException):
        assert private.key_size >= 2048
    for fn in (_core.PublicKey.from_pem, _core.PublicKey.from_der):
        public = typed(fn, data)
        if not isinstance(public, BaseException):
            assert public.key_size >= 2048
    text = data.decode("latin-1")
    typed(_core.PrivateKey.from_pem, text, password)
    typed(_core.PublicKey.from_pem, text)


@FAST
@given(
    data=st.one_of(
        st.integers(),
        st.none(),
        st.floats(),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.lists(st.integers(0, 255), max_size=3),  # out-of-range items: see ARGUMENT_ERRORS
    ),
    password=st.one_of(st.integers(), st.lists(st.integers(), max_size=2), PASSWORDS),
)
def test_pem_loaders_wrong_types(data: Any, password: Any) -> None:
    typed(_core.PrivateKey.from_pem, data, password)
    typed(_core.PrivateKey.from_pem, PRIVATE_PEM, password)
    typed(_core.PublicKey.from_pem, data)
    typed(_core.PublicKey.from_der, data)


def test_private_key_mutations_never_load_as_a_different_key() -> None:
    """A one-bit flip in the base64 body either fails or still loads the very same key."""
    lines = PRIVATE_PEM.splitlines()
    body = lines[1:-1]
    for row in range(0, len(body), 3):
        for col in (0, 17, 40, 63):
            if col >= len(body[row]):
                continue
            damaged = bytearray(body[row])
            damaged[col] = ord("B") if damaged[col] != ord("B") else ord("C")
            rows = [*body[:row], bytes(damaged), *body[row + 1 :]]
            pem = b"\n".join([lines[0], *rows, lines[-1]])
            result = typed(_core.PrivateKey.from_pem, pem, None)
            if not isinstance(result, BaseException):
                assert result.public_key() == PUBLIC or result.key_size >= 2048


# --- known leaks of untyped exceptions (package bugs, see the reasons) ----------------------------

_VALID = ENVELOPES[0]
ARGUMENT_ERRORS: dict[str, Callable[[], Any]] = {
    # bytes | str parameters extracted as Vec<u8>: any sequence of ints is accepted, and an
    # item outside 0..255 raises OverflowError instead of TypeError
    "PrivateKey.from_pem([-1])": lambda: _core.PrivateKey.from_pem([-1]),  # type: ignore[arg-type]
    "PublicKey.from_pem([300])": lambda: _core.PublicKey.from_pem([300]),  # type: ignore[arg-type]
    # max_size extracted as usize: OverflowError instead of ValueError
    "open_json(max_size=-1)": lambda: _core.open_json(_VALID, KEY, -1),
    "open_bytes(max_size=2**70)": lambda: _core.open_bytes(_VALID, KEY, 2**70),
}


@pytest.mark.parametrize("name", sorted(ARGUMENT_ERRORS))
def test_argument_extraction_errors_are_typed(name: str) -> None:
    typed(ARGUMENT_ERRORS[name])


UNCLIPPED = {
    "processed_at_100k_string": lambda: _with(processed_at="y" * 100_000),
    "unknown_key_5k_syntax_error": lambda: b'{"' + b"k" * 5000 + b'": [}',
    "nested_key_5k_syntax_error": lambda: b'{"encrypted_payload": {"' + b"k" * 5000 + b'": tru}}',
}


def _with(**fields: Any) -> bytes:
    doc = json.loads(ENVELOPES[0])
    doc.update(fields)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("name", sorted(UNCLIPPED))
def test_envelope_error_messages_are_bounded(name: str) -> None:
    with pytest.raises(nomyo.EnvelopeError) as info:
        _core.open_json(UNCLIPPED[name](), KEY)
    assert len(str(info.value)) <= 1024, f"{len(str(info.value))} characters"


def _nested_reply(depth: int) -> bytes:
    nested = "[" * depth + "]" * depth
    block = '{"is_available": true, "pcr_banks": "sha256:0", "pcr_values": ' + nested + "}"
    metadata = '{"payload_id": "' + PAYLOAD_ID + '", "tpm_attestation": ' + block + "}"
    return ('{"choices": [], "_metadata": ' + metadata + "}").encode()


@pytest.mark.parametrize("mode", ["verify", "require"])
def test_decrypt_response_with_deeply_nested_attestation(
    loop: asyncio.AbstractEventLoop, mode: str
) -> None:
    """A block nested 127+ levels deep (open_json accepts more) is a typed failure.

    Regression: verify_attestation used to raise a plain ValueError that escaped
    decrypt_response in verify/require mode.
    """
    envelope = _core.seal_bytes(_nested_reply(130), PUBLIC)
    result = typed(loop.run_until_complete, CLIENTS[mode].decrypt_response(envelope, PAYLOAD_ID))
    assert not isinstance(result, BaseException) or isinstance(result, nomyo.NomyoError), (
        f"not a NomyoError: {type(result).__name__}"
    )


def test_decrypt_response_with_shallow_nesting_is_fine(loop: asyncio.AbstractEventLoop) -> None:
    envelope = _core.seal_bytes(_nested_reply(100), PUBLIC)
    reply = loop.run_until_complete(CLIENTS["verify"].decrypt_response(envelope, PAYLOAD_ID))
    assert reply["_metadata"]["attestation_verification"]["reason"] == "parse_error"


# --- hostile encrypted key files (resource limits of the KDF) -------------------------------------

_KDF_SCRIPT = """
import sys
from nomyo import _core, KeyFormatError
data = sys.stdin.buffer.read()
try:
    _core.PrivateKey.from_pem(data, b"pw")
except KeyFormatError:
    print("KeyFormatError")
"""


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _int(n: int) -> bytes:
    return _tlv(0x02, n.to_bytes((n.bit_length() + 8) // 8, "big"))


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _encrypted_pem(kdf: bytes) -> bytes:
    """An EncryptedPrivateKeyInfo (PBES2, AES-256-CBC) with the given KDF AlgorithmIdentifier."""
    aes = _tlv(0x30, _oid("2.16.840.1.101.3.4.1.42") + _tlv(0x04, bytes(16)))
    pbes2 = _tlv(0x30, _oid("1.2.840.113549.1.5.13") + _tlv(0x30, kdf + aes))
    der = _tlv(0x30, pbes2 + _tlv(0x04, bytes(1232)))
    b64 = base64.b64encode(der).decode()
    rows = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    label = "ENCRYPTED PRIVATE KEY"
    return f"-----BEGIN {label}-----\n{rows}\n-----END {label}-----\n".encode()


HOSTILE_KDFS = {
    # PBKDF2-HMAC-SHA256 with 2^32-1 iterations: tens of minutes of CPU
    "pbkdf2_4G_iterations": _tlv(
        0x30,
        _oid("1.2.840.113549.1.5.12")
        + _tlv(
            0x30,
            _tlv(0x04, bytes(16))
            + _int(0xFFFFFFFF)
            + _tlv(0x30, _oid("1.2.840.113549.2.9") + b"\x05\x00"),
        ),
    ),
    # scrypt N = 2^40, r = 8: a 1 PiB allocation, which aborts the process
    "scrypt_N_2_40": _tlv(
        0x30,
        _oid("1.3.6.1.4.1.11591.4.11")
        + _tlv(0x30, _tlv(0x04, bytes(16)) + _int(1 << 40) + _int(8) + _int(1)),
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_KDFS))
def test_hostile_kdf_parameters_are_refused_quickly(name: str) -> None:
    """Regression: unbounded PBKDF2 iterations hung, a huge scrypt N aborted the process."""
    pem = _encrypted_pem(HOSTILE_KDFS[name])
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _KDF_SCRIPT],
            input=pem,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: from_pem still running after 10 s")
    assert proc.returncode == 0, f"{name}: process died ({proc.returncode}): {proc.stderr[-300:]!r}"
    assert proc.stdout.strip() == b"KeyFormatError"


def test_hostile_kdf_inputs_are_well_formed() -> None:
    """The hostile files parse as far as the KDF: a sane iteration count fails on decryption."""
    sane = _tlv(
        0x30,
        _oid("1.2.840.113549.1.5.12")
        + _tlv(
            0x30,
            _tlv(0x04, bytes(16))
            + _int(1000)
            + _tlv(0x30, _oid("1.2.840.113549.2.9") + b"\x05\x00"),
        ),
    )
    with pytest.raises(nomyo.KeyFormatError, match="wrong password or corrupt"):
        _core.PrivateKey.from_pem(_encrypted_pem(sane), b"pw")
