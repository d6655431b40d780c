"""Envelopes against an independent oracle (tests/oracle_server.py, pure ``cryptography``).

(a) what we seal (``_core.seal_json``, ``SecureCompletionClient.encrypt_payload``) opens in
the oracle to the JSON of the input; (b) what the oracle seals to our key opens in
``SecureCompletionClient.decrypt_response`` with ``_metadata`` completed; plus the raw layer
(``seal_bytes``/``open_bytes``) and our JSON serializer (``_core.dumps``) against ``json``.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jsoncheck import assert_same_json
from oracle_server import ENVELOPE_FIELDS, OracleServer, open_envelope, seal_envelope

from nomyo import ChatCompletion, EnvelopeError, SecureCompletionClient, _core

MIB = 1024 * 1024

# Payloads whose JSON must survive both directions unchanged (key: test id).
PAYLOADS: dict[str, dict[Any, Any]] = {
    "chat": {
        "model": "Qwen/Qwen3-0.6B",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hello!"},
        ],
        "temperature": 0.7,
        "max_tokens": 128,
        "stream": False,
        "stop": None,
    },
    "unicode": {
        "accents": "café naïve Ünïcödé Ångström ﬁ",
        "cjk": "漢字 かな カナ 한국어 中文",
        "rtl": "שלום עולם مرحبا بالعالم",
        "bidi_marks": "a\u200fb\u202ec\u2066d",
        "combining": "e\u0301 n\u0303",
        "keys_ünï": {"日本": "語", "עברית": "ערבית"},
    },
    "emoji": {
        "simple": "😀🎉🚀",
        "skin_tone": "👍🏽👋🏿",
        "zwj_family": "👨\u200d👩\u200d👧\u200d👦",
        "zwj_flag": "🏳️\u200d🌈 🏴\u200d☠️",
        "regional_flags": "🇩🇪🇯🇵",
        "keycap": "1️⃣#️⃣",
        "emoji_key_😀": 1,
    },
    "control_and_quotes": {
        "controls": "".join(chr(i) for i in range(32)),
        "quotes": "\"'`\\ \\\\ \\n \\u0000 / </script>",
        "del_and_separators": "\x7f\u0085\u2028\u2029\ufeff",
        "nul": "a\x00b",
        "": "empty key",
    },
    "big_ints": {
        "googol": 10**100,
        "neg_googol": -(10**100),
        "u64_max": 2**64 - 1,
        "u64_over": 2**64,
        "i64_min": -(2**63),
        "i64_under": -(2**63) - 1,
        "zero": 0,
    },
    "floats": {
        "huge": 1e300,
        "neg_zero": -0.0,
        "tenth": 0.1,
        "max": 1.7976931348623157e308,
        "tiny": 5e-324,
        "third": 1 / 3,
        "int_valued": 2.0,
        "big_int_valued": 1e16,
        "neg": -123.456e-7,
    },
    "nested": {
        "tuple": (1, (2, [3, (4,)])),
        "lists": [[[]], [{}], [[[[["deep"]]]]]],
        "mixed": [None, True, False, 0, "s", {"k": [1.5, {"z": None}]}],
        "empties": {"l": [], "d": {}, "s": ""},
    },
    "non_str_keys": {1: "int", 2.5: "float", False: "bool", None: "none", 10**20: "big"},
}


def _roundtrip_json(obj: Any) -> Any:
    """What the other side must see: json.loads(json.dumps(obj))."""
    return json.loads(json.dumps(obj))


@pytest.fixture(scope="module")
def oracle() -> Iterator[OracleServer]:
    """The oracle router (2048-bit key), serving its public key over plain HTTP."""
    with OracleServer(key_bits=2048) as server:
        yield server


@pytest.fixture(scope="module")
def client(oracle: OracleServer) -> SecureCompletionClient:
    """Our client with a 2048-bit key pair and the oracle's key fetched over HTTP."""
    client = SecureCompletionClient(oracle.url, allow_http=True)
    client.key_size = 2048
    client.generate_keys()

    async def fetch() -> str:
        try:
            return await client.fetch_server_public_key()
        finally:
            await client.aclose()

    assert asyncio.run(fetch()).strip() == oracle.public_key_pem.strip()
    return client


@pytest.fixture(scope="module")
def client_public(client: SecureCompletionClient) -> rsa.RSAPublicKey:
    """Our client's public key, as the oracle (cryptography) sees it."""
    assert client.public_key_pem is not None
    key = serialization.load_pem_public_key(client.public_key_pem.encode("ascii"))
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def encrypt(client: SecureCompletionClient, payload: dict[Any, Any]) -> bytes:
    return asyncio.run(client.encrypt_payload(payload))


def decrypt(client: SecureCompletionClient, envelope: bytes, payload_id: str) -> dict[str, Any]:
    return asyncio.run(client.decrypt_response(envelope, payload_id))


def server_key(client: SecureCompletionClient) -> _core.PublicKey:
    key = client.server_public_key
    assert key is not None
    return key


# --- (a) we seal, the oracle opens -------------------------------------------------------------


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_encrypt_payload_opens_in_oracle(
    client: SecureCompletionClient, oracle: OracleServer, name: str
) -> None:
    payload = PAYLOADS[name]
    envelope = encrypt(client, payload)
    plaintext = open_envelope(envelope, oracle.private_key)
    assert_same_json(json.loads(plaintext), _roundtrip_json(payload))


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_seal_json_opens_in_oracle(
    client: SecureCompletionClient, oracle: OracleServer, name: str
) -> None:
    payload = PAYLOADS[name]
    envelope = _core.seal_json(payload, server_key(client), processed_at=1700000000)
    assert isinstance(envelope, bytes)
    parsed = json.loads(envelope)
    assert set(parsed) == {*ENVELOPE_FIELDS, "processed_at"}
    assert parsed["processed_at"] == 1700000000
    assert_same_json(
        json.loads(open_envelope(envelope, oracle.private_key)), _roundtrip_json(payload)
    )


def test_seal_json_of_non_dict_values(client: SecureCompletionClient, oracle: OracleServer) -> None:
    for value in ([1, "two", 3.0], "just a string", 42, None, True, 10**40):
        envelope = _core.seal_json(value, server_key(client))
        assert "processed_at" not in json.loads(envelope)
        assert_same_json(json.loads(open_envelope(envelope, oracle.private_key)), value)


def test_our_envelope_is_utf8_json_and_fresh_each_time(
    client: SecureCompletionClient, oracle: OracleServer
) -> None:
    payload = PAYLOADS["chat"]
    first, second = encrypt(client, payload), encrypt(client, payload)
    one, two = json.loads(first.decode("utf-8")), json.loads(second.decode("utf-8"))
    assert set(one) == set(ENVELOPE_FIELDS)
    assert (one["version"], one["algorithm"]) == ("1.0", "hybrid-aes256-rsa4096")
    assert (one["key_algorithm"], one["payload_algorithm"]) == ("RSA-OAEP-SHA256", "AES-256-GCM")
    for field in ("ciphertext", "nonce"):
        assert one["encrypted_payload"][field] != two["encrypted_payload"][field]
    assert one["encrypted_aes_key"] != two["encrypted_aes_key"]
    assert open_envelope(first, oracle.private_key) == open_envelope(second, oracle.private_key)


def test_lone_surrogates_are_refused(client: SecureCompletionClient) -> None:
    # A lone surrogate is not Unicode text and has no UTF-8 form; rather than send an escape
    # that strict JSON parsers reject, the request is refused before anything is encrypted.
    for payload in ({"lone_high": "a\ud800b"}, {"lone_low": "\udfff"}, {"\ud800": 1}):
        with pytest.raises(ValueError, match="lone surrogate"):
            encrypt(client, payload)
    plaintext = _core.dumps({"pair": "\U0001f600"})
    assert json.loads(bytes(plaintext)) == {"pair": "\U0001f600"}


def test_ten_mib_request_opens_in_oracle(
    client: SecureCompletionClient, oracle: OracleServer
) -> None:
    unit = "äbc 😀 字 "
    content = unit * (10 * MIB // len(unit.encode()) + 1)
    payload = {"model": "m", "messages": [{"role": "user", "content": content}]}
    assert len(json.dumps(payload, ensure_ascii=False).encode("utf-8")) > 10 * MIB
    plaintext = open_envelope(encrypt(client, payload), oracle.private_key)
    assert json.loads(plaintext) == payload


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"x": object()}, TypeError),
        ({"x": b"bytes"}, TypeError),
        ({"x": {1, 2}}, TypeError),
        ({(1, 2): "tuple key"}, TypeError),
        ({"x": float("nan")}, ValueError),
        ({"x": float("inf")}, ValueError),
        ({"x": [1, float("-inf")]}, ValueError),
    ],
    ids=["object", "bytes", "set", "tuple-key", "nan", "inf", "-inf"],
)
def test_unserialisable_payload_raises(
    client: SecureCompletionClient, payload: dict[Any, Any], error: type[Exception]
) -> None:
    secret = {"secret": "hunter2-plaintext", **payload}
    with pytest.raises(error) as raised:
        encrypt(client, secret)
    assert "hunter2" not in str(raised.value)
    with pytest.raises(error):
        _core.seal_json(secret, server_key(client))
    with pytest.raises(error):
        _core.dumps(secret)


# --- (b) the oracle seals, we open ---------------------------------------------------------------


def _reply(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        **extra,
    }


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["ascii", "utf8"])
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_oracle_reply_opens_in_decrypt_response(
    client: SecureCompletionClient, client_public: rsa.RSAPublicKey, name: str, ensure_ascii: bool
) -> None:
    reply = _reply({"payload": PAYLOADS[name]})
    plaintext = json.dumps(reply, ensure_ascii=ensure_ascii).encode("utf-8")
    payload_id = str(uuid.uuid4())
    envelope = seal_envelope(plaintext, client_public, processed_at=1700000001)
    result = decrypt(client, envelope, payload_id)
    expected = json.loads(plaintext)
    expected["_metadata"] = {
        "payload_id": payload_id,
        "processed_at": 1700000001,
        "is_encrypted": True,
        "encryption_algorithm": "hybrid-aes256-rsa4096",
    }
    assert isinstance(result, ChatCompletion)
    assert_same_json(result.to_dict(), expected)  # replies are dict subclasses; leaves exact


def test_decrypt_response_keeps_server_metadata(
    client: SecureCompletionClient, client_public: rsa.RSAPublicKey
) -> None:
    payload_id = str(uuid.uuid4())
    server_meta = {
        "payload_id": payload_id,
        "security_tier": "high",
        "memory_protection": {"platform": "linux"},
        "tpm_attestation": {"is_available": False},
    }
    envelope = seal_envelope(
        json.dumps(_reply({"_metadata": server_meta})).encode(), client_public, processed_at=17
    )
    meta = decrypt(client, envelope, payload_id)["_metadata"]
    assert meta == {
        **server_meta,
        "processed_at": 17,
        "is_encrypted": True,
        "encryption_algorithm": "hybrid-aes256-rsa4096",
    }


def test_decrypt_response_without_processed_at(
    client: SecureCompletionClient, client_public: rsa.RSAPublicKey
) -> None:
    envelope = seal_envelope(json.dumps(_reply({})).encode(), client_public)
    meta = decrypt(client, envelope, "pid-1")["_metadata"]
    assert meta == {
        "payload_id": "pid-1",
        "processed_at": None,
        "is_encrypted": True,
        "encryption_algorithm": "hybrid-aes256-rsa4096",
    }


def test_float_processed_at_is_kept(client: SecureCompletionClient) -> None:
    key = client.private_key
    assert key is not None
    envelope = _core.seal_json({"a": 1}, key.public_key(), processed_at=1700000000.25)
    assert json.loads(envelope)["processed_at"] == 1700000000.25
    value, processed_at, algorithm = _core.open_json(envelope, key)
    assert (value, processed_at, algorithm) == ({"a": 1}, 1700000000.25, "hybrid-aes256-rsa4096")


def test_decrypt_response_accepts_bytearray_and_memoryview(
    client: SecureCompletionClient, client_public: rsa.RSAPublicKey
) -> None:
    envelope = seal_envelope(json.dumps(_reply({})).encode(), client_public)
    for wrapped in (bytearray(envelope), memoryview(envelope)):
        assert decrypt(client, wrapped, "p")["choices"][0]["message"]["content"] == "hi"  # type: ignore[arg-type]


def test_ten_mib_reply_opens_in_decrypt_response(
    client: SecureCompletionClient, client_public: rsa.RSAPublicKey
) -> None:
    unit = "ünï 漢字 🚀 "
    content = unit * (10 * MIB // len(unit.encode()) + 1)
    plaintext = json.dumps(_reply({"big": content}), ensure_ascii=False).encode("utf-8")
    assert len(plaintext) > 10 * MIB
    result = decrypt(client, seal_envelope(plaintext, client_public), "big")
    assert result["big"] == content
    assert result["_metadata"]["is_encrypted"] is True


@pytest.mark.parametrize(
    "plaintext",
    [b'{"hidden": "\\ud800"}', b'{"hidden": "\\udc00x"}'],
    ids=["lone-high", "lone-low"],
)
def test_decrypt_response_refuses_lone_surrogates(
    client: SecureCompletionClient, client_public: rsa.RSAPublicKey, plaintext: bytes
) -> None:
    # Not valid Unicode: a clear EnvelopeError, with no plaintext in the message.
    with pytest.raises(EnvelopeError, match="not valid JSON") as info:
        decrypt(client, seal_envelope(plaintext, client_public), "p")
    assert "hidden" not in str(info.value)


@pytest.mark.parametrize(
    "plaintext",
    [
        b'{"x": NaN}',
        b'{"x": Infinity, "y": -Infinity}',
        b'{"x": 1e400}',
        b'{"x": -0, "y": -0.0}',
    ],
    ids=["nan", "infinity", "overflow", "neg-zero"],
)
def test_decrypt_response_accepts_what_json_loads_accepts(
    client: SecureCompletionClient, client_public: rsa.RSAPublicKey, plaintext: bytes
) -> None:
    # The reference client parses the decrypted reply with json.loads, and the server's
    # json.dumps writes NaN/Infinity (allow_nan).
    result = decrypt(client, seal_envelope(plaintext, client_public), "p")
    expected = json.loads(plaintext)
    result.pop("_metadata")
    assert_same_json(result.to_dict(), expected)


# --- the raw layer ---------------------------------------------------------------------------


def test_seal_bytes_empty_and_binary_open_in_oracle(
    client: SecureCompletionClient, oracle: OracleServer
) -> None:
    for data in (b"", b"\x00", bytes(range(256)) * 3, b"\xff\xfe not utf-8"):
        envelope = _core.seal_bytes(data, server_key(client))
        assert open_envelope(envelope, oracle.private_key) == data
    empty = json.loads(_core.seal_bytes(b"", server_key(client)))
    assert empty["encrypted_payload"]["ciphertext"] == ""


def test_oracle_bytes_open_with_open_bytes(
    client: SecureCompletionClient, client_public: rsa.RSAPublicKey
) -> None:
    key = client.private_key
    assert key is not None
    for data in (b"", b"\x00\xff", b"x" * 100_000):
        buffer = _core.open_bytes(seal_envelope(data, client_public), key)
        assert isinstance(buffer, _core.SecretBuffer)
        assert len(buffer) == len(data)
        assert bytes(buffer) == data
        buffer.close()
        assert len(buffer) == 0


def test_ten_mib_raw_both_directions(
    client: SecureCompletionClient, oracle: OracleServer, client_public: rsa.RSAPublicKey
) -> None:
    key = client.private_key
    assert key is not None
    data = bytes(range(256)) * (10 * MIB // 256)
    assert open_envelope(_core.seal_bytes(data, server_key(client)), oracle.private_key) == data
    assert bytes(_core.open_bytes(seal_envelope(data, client_public), key)) == data


# --- our JSON serializer against json ----------------------------------------------------------


class _Str(str):
    pass


class _Int(int):
    pass


class _Float(float):
    pass


class _Dict(dict):  # type: ignore[type-arg]
    pass


class _Color(enum.IntEnum):
    RED = 1


DUMPS_CASES: list[Any] = [
    *PAYLOADS.values(),
    None,
    True,
    False,
    0,
    -1,
    2**63,
    -(2**63) - 1,
    10**300,
    0.0,
    -0.0,
    1e-7,
    1e22,
    123456789.123456789,
    "",
    "plain",
    "\U0010ffff",
    [],
    {},
    (),
    [[], [[]], ()],
    {"a": 1, "b": [1, 2, {"c": None}]},
    collections.OrderedDict([("z", 1), ("a", 2)]),
    {"1": "str one", 1: "int one"},
    {1.5: "x", -0.0: "y", 1e300: "z"},
    {True: 1, None: 2},
    [_Str("sub"), _Int(7), _Float(2.5), _Dict(k="v"), _Color.RED],
    list(range(1000)),
    {f"key{i}": i for i in range(500)},
]


@pytest.mark.parametrize("obj", DUMPS_CASES, ids=[f"case{i}" for i in range(len(DUMPS_CASES))])
def test_dumps_parses_like_json_dumps(obj: Any) -> None:
    buffer = _core.dumps(obj)
    assert isinstance(buffer, _core.SecretBuffer)
    data = bytes(buffer)
    data.decode("utf-8")  # always valid UTF-8
    assert b"\n" not in data
    assert_same_json(json.loads(data), json.loads(json.dumps(obj)))


def test_dumps_is_compact() -> None:
    assert bytes(_core.dumps({"a": [1, 2], "b": "é"})) == '{"a":[1,2],"b":"é"}'.encode()


def test_dumps_infinite_float_key_like_json() -> None:
    # json.dumps writes an infinite float key as "Infinity" (or refuses it with allow_nan=False,
    # as we refuse infinite values); "inf" is what neither does.
    try:
        data = bytes(_core.dumps({float("inf"): 1}))
    except ValueError:
        return
    assert json.loads(data) == json.loads(json.dumps({float("inf"): 1}))


def test_dumps_too_deep_or_circular_is_a_clean_error() -> None:
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises((ValueError, RecursionError)):
        _core.dumps(circular)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises((ValueError, RecursionError)):
        _core.dumps(deep)
    shallow: list[Any] = []
    for _ in range(100):
        shallow = [shallow]
    assert json.loads(bytes(_core.dumps(shallow))) == shallow


def test_open_json_too_deep_is_an_envelope_error(
    client: SecureCompletionClient, client_public: rsa.RSAPublicKey
) -> None:
    key = client.private_key
    assert key is not None
    ok = b"[" * 100 + b"]" * 100
    assert _core.open_json(seal_envelope(ok, client_public), key)[0] == json.loads(ok)
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(EnvelopeError):
        _core.open_json(seal_envelope(deep, client_public), key)
