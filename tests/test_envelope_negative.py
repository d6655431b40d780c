"""Broken, tampered and hostile envelopes: always the right typed error, never a panic.

Every envelope starts as a valid one sealed to our key by the independent oracle
(tests/oracle_server.py) and is then damaged. Crypto failures must be one opaque
``SecurityError``; structural problems an ``EnvelopeError`` (a ``ValueError``) naming the
problem; no message may contain plaintext or key material.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from oracle_server import seal_envelope

from nomyo import EnvelopeError, NomyoError, SecureCompletionClient, SecurityError, _core

MARKER = "PLAINTEXT-MARKER-7f3a"
PAYLOAD_ID = "6f1c2b9e-0000-4000-8000-000000000001"
REPLY = {
    "object": "chat.completion",
    "choices": [{"message": {"role": "assistant", "content": MARKER}}],
    "_metadata": {"payload_id": PAYLOAD_ID},
}
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
REQUIRED_TOP = ("version", "algorithm", "encrypted_payload", "encrypted_aes_key")
REQUIRED_PAYLOAD = ("ciphertext", "nonce", "tag")


class Keys:
    """Our client (2048-bit key) plus the same key as cryptography objects."""

    def __init__(self) -> None:
        self.client = SecureCompletionClient()
        self.client.key_size = 2048
        self.client.generate_keys()
        assert self.client.private_key is not None
        self.native = self.client.private_key
        pem = self.native.to_pem()
        private = serialization.load_pem_private_key(pem, None)
        assert isinstance(private, rsa.RSAPrivateKey)
        self.private = private
        self.public = private.public_key()
        body = b"".join(pem.splitlines()[1:-1]).decode()
        self.pem_fragments = [body[i : i + 24] for i in range(0, len(body) - 24, 24)]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def big(keys: Keys) -> bytes:
    """A valid envelope of a few kilobytes, for the size limits."""
    reply = {**REPLY, "filler": "x" * 4000}
    return seal_envelope(json.dumps(reply).encode(), keys.public)


@pytest.fixture(scope="module")
def valid(keys: Keys) -> bytes:
    """A valid reply envelope sealed to our key."""
    return seal_envelope(json.dumps(REPLY).encode(), keys.public, processed_at=1700000000)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def mutate(envelope: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    parsed = json.loads(envelope)
    change(parsed)
    return json.dumps(parsed).encode()


def set_payload(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda env: env["encrypted_payload"].__setitem__(field, value)


def edit_payload(field: str, edit: Callable[[bytes], bytes]) -> Callable[[dict[str, Any]], None]:
    return lambda env: env["encrypted_payload"].__setitem__(
        field, b64(edit(unb64(env["encrypted_payload"][field])))
    )


def edit_key(edit: Callable[[bytes], bytes]) -> Callable[[dict[str, Any]], None]:
    return lambda env: env.__setitem__(
        "encrypted_aes_key", b64(edit(unb64(env["encrypted_aes_key"])))
    )


def flip(index: int) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        out = bytearray(data)
        out[index] ^= 0x01
        return bytes(out)

    return edit


def secrets_of(keys: Keys, envelope: bytes) -> list[str]:
    """Strings no error message may contain: plaintext, AES key, private key PEM."""
    parsed = json.loads(envelope)
    found = [MARKER, *keys.pem_fragments]
    try:
        aes_key = keys.private.decrypt(unb64(parsed["encrypted_aes_key"]), OAEP)
    except (ValueError, KeyError, TypeError):
        return found
    return [*found, aes_key.hex(), aes_key.hex().upper(), b64(aes_key), repr(aes_key)[2:-1]]


def decrypt_error(
    keys: Keys, envelope: Any, *, payload_id: str = PAYLOAD_ID, forbidden: list[str] | None = None
) -> BaseException:
    """Run decrypt_response, return what it raised (anything but a NomyoError fails)."""
    start = time.monotonic()
    try:
        result = asyncio.run(keys.client.decrypt_response(envelope, payload_id))
    except BaseException as exc:  # a pyo3 PanicException derives from BaseException
        error = exc
    else:
        pytest.fail(f"no error raised; got {str(result)[:200]}")
    assert time.monotonic() - start < 10, "took too long"
    assert isinstance(error, NomyoError), (
        f"{type(error).__module__}.{type(error).__name__}: {error}"
    )
    message = f"{error} {error!r}"
    for secret in forbidden or [MARKER, *keys.pem_fragments]:
        assert secret not in message, f"message leaks {secret[:16]!r}: {message}"
    return error


def assert_envelope_error(keys: Keys, envelope: Any, *words: str) -> str:
    error = decrypt_error(keys, envelope, forbidden=_forbidden(keys, envelope))
    assert type(error) is EnvelopeError, repr(error)
    assert isinstance(error, ValueError)
    for word in words:
        assert word in str(error), f"{word!r} not in {error}"
    return str(error)


def assert_security_error(keys: Keys, envelope: bytes) -> str:
    error = decrypt_error(keys, envelope, forbidden=_forbidden(keys, envelope))
    assert type(error) is SecurityError, repr(error)
    assert not isinstance(error, ValueError)
    return str(error)


def _forbidden(keys: Keys, envelope: Any) -> list[str]:
    try:
        return secrets_of(keys, bytes(envelope))
    except (ValueError, TypeError, KeyError, AttributeError):
        return [MARKER, *keys.pem_fragments]


# --- the valid envelope opens ------------------------------------------------------------------


def test_the_valid_envelope_opens(keys: Keys, valid: bytes) -> None:
    result = asyncio.run(keys.client.decrypt_response(valid, PAYLOAD_ID))
    assert result["choices"][0]["message"]["content"] == MARKER
    assert result["_metadata"]["processed_at"] == 1700000000


# --- tampering: one opaque SecurityError ---------------------------------------------------------


def test_flipped_bits_give_one_opaque_security_error(keys: Keys, valid: bytes) -> None:
    tampered = {
        "ciphertext": mutate(valid, edit_payload("ciphertext", flip(0))),
        "ciphertext-last": mutate(valid, edit_payload("ciphertext", flip(-1))),
        "tag": mutate(valid, edit_payload("tag", flip(15))),
        "nonce": mutate(valid, edit_payload("nonce", flip(5))),
        "wrapped-key-first": mutate(valid, edit_key(flip(0))),
        "wrapped-key-middle": mutate(valid, edit_key(flip(128))),
        "wrapped-key-last": mutate(valid, edit_key(flip(-1))),
    }
    messages = {name: assert_security_error(keys, env) for name, env in tampered.items()}
    assert len(set(messages.values())) == 1, messages
    message = next(iter(messages.values()))
    for word in ("nonce", "tag", "ciphertext", "padding", "OAEP", "key"):
        assert word.lower() not in message.lower(), message


def test_envelope_for_another_key_is_the_same_security_error(keys: Keys, valid: bytes) -> None:
    reference = assert_security_error(keys, mutate(valid, edit_payload("tag", flip(0))))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign = seal_envelope(json.dumps(REPLY).encode(), other.public_key())
    assert assert_security_error(keys, foreign) == reference


def test_envelope_for_a_key_of_another_size_is_structural(keys: Keys) -> None:
    # A 4096-bit wrapped key cannot be unwrapped by a 2048-bit key: its length alone (public
    # information) says so, so this is an EnvelopeError, not an oracle for the padding.
    other = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    foreign = seal_envelope(json.dumps(REPLY).encode(), other.public_key())
    assert_envelope_error(keys, foreign, "encrypted_aes_key", "512")


@pytest.mark.parametrize(
    "edit",
    [lambda d: d[:-1], lambda d: d + b"\x00", lambda d: b"", lambda d: d[:1]],
    ids=["minus-1", "plus-1", "empty", "one-byte"],
)
def test_ciphertext_length_is_not_structural(
    keys: Keys, valid: bytes, edit: Callable[[bytes], bytes]
) -> None:
    # Any ciphertext length is valid GCM input: a wrong one fails authentication.
    assert_security_error(keys, mutate(valid, edit_payload("ciphertext", edit)))


def test_swapped_fields_from_another_valid_envelope(keys: Keys, valid: bytes) -> None:
    second = json.loads(seal_envelope(json.dumps(REPLY).encode(), keys.public))
    for field in ("ciphertext", "nonce", "tag"):
        env = mutate(valid, set_payload(field, second["encrypted_payload"][field]))
        assert_security_error(keys, env)
    assert_security_error(
        keys,
        mutate(valid, lambda e: e.__setitem__("encrypted_aes_key", second["encrypted_aes_key"])),
    )


# --- wrong lengths and encodings: EnvelopeError naming the field --------------------------------


@pytest.mark.parametrize(
    ("field", "edit", "words"),
    [
        ("nonce", lambda d: d[:11], ("nonce", "12", "11")),
        ("nonce", lambda d: d + b"\x00", ("nonce", "12", "13")),
        ("nonce", lambda d: b"", ("nonce",)),
        ("tag", lambda d: d[:15], ("tag", "16", "15")),
        ("tag", lambda d: d + b"\x00", ("tag", "16", "17")),
        ("tag", lambda d: b"", ("tag",)),
    ],
    ids=["nonce-11", "nonce-13", "nonce-0", "tag-15", "tag-17", "tag-0"],
)
def test_wrong_nonce_or_tag_length(
    keys: Keys,
    valid: bytes,
    field: str,
    edit: Callable[[bytes], bytes],
    words: tuple[str, ...],
) -> None:
    assert_envelope_error(keys, mutate(valid, edit_payload(field, edit)), *words)


@pytest.mark.parametrize(
    ("edit", "size"),
    [(lambda d: d[:-1], "255"), (lambda d: d + b"\x00", "257"), (lambda d: b"", "0")],
    ids=["short", "long", "empty"],
)
def test_wrong_wrapped_key_length(
    keys: Keys, valid: bytes, edit: Callable[[bytes], bytes], size: str
) -> None:
    assert_envelope_error(keys, mutate(valid, edit_key(edit)), "encrypted_aes_key", "256", size)


BAD_BASE64 = ["!!!not base64!!!", "QUJD\nREVG", "QUJDRA", "QUJD RA==", "QUJDRA===", "ü"]


@pytest.mark.parametrize(
    "bad", BAD_BASE64, ids=["punct", "newline", "unpadded", "space", "pad3", "nonascii"]
)
@pytest.mark.parametrize("field", [*REQUIRED_PAYLOAD, "encrypted_aes_key"])
def test_bad_base64(keys: Keys, valid: bytes, field: str, bad: str) -> None:
    if field == "encrypted_aes_key":
        env = mutate(valid, lambda e: e.__setitem__(field, bad))
    else:
        env = mutate(valid, set_payload(field, bad))
    assert_envelope_error(keys, env, field)


def test_unpadded_tag_is_refused(keys: Keys, valid: bytes) -> None:
    # A 16-byte tag is 22 base64 characters plus "=="; the protocol requires the padding.
    env = mutate(
        valid,
        lambda e: e["encrypted_payload"].__setitem__(
            "tag", e["encrypted_payload"]["tag"].rstrip("=")
        ),
    )
    assert_envelope_error(keys, env, "tag", "base64")


WRONG_TYPES = [5, None, ["QUJD"], {"b64": "QUJD"}, True]


def _set_field(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    if field in REQUIRED_PAYLOAD:
        return set_payload(field, value)
    return lambda e: e.__setitem__(field, value)


@pytest.mark.parametrize("value", WRONG_TYPES)
@pytest.mark.parametrize("field", [*REQUIRED_PAYLOAD, "encrypted_aes_key"])
def test_binary_field_of_wrong_type(keys: Keys, valid: bytes, field: str, value: Any) -> None:
    assert_envelope_error(keys, mutate(valid, _set_field(field, value)))


def test_wrong_type_errors_name_the_field(keys: Keys, valid: bytes) -> None:
    # PROTOCOL.md 3: a structural error "names the problem"; "invalid type: null, expected a
    # string at line 1 column 381" does not say which of the envelope's fields is wrong.
    cases = [(f, v) for f in (*REQUIRED_PAYLOAD, "encrypted_aes_key") for v in WRONG_TYPES]
    cases += [("version", 1.0), ("version", None), ("algorithm", None), ("key_algorithm", 0)]
    cases += [("processed_at", "yesterday")]
    unnamed = []
    for field, value in cases:
        message = assert_envelope_error(keys, mutate(valid, _set_field(field, value)))
        if field not in message:
            unnamed.append(f"{field}={value!r}: {message}")
    assert unnamed == [], "\n".join(unnamed)


# --- missing fields, wrong constants ------------------------------------------------------------


@pytest.mark.parametrize("field", REQUIRED_TOP)
def test_missing_envelope_field(keys: Keys, valid: bytes, field: str) -> None:
    assert_envelope_error(keys, mutate(valid, lambda e: e.pop(field)), field)


@pytest.mark.parametrize("field", REQUIRED_PAYLOAD)
def test_missing_payload_field(keys: Keys, valid: bytes, field: str) -> None:
    assert_envelope_error(keys, mutate(valid, lambda e: e["encrypted_payload"].pop(field)), field)


@pytest.mark.parametrize("field", ["key_algorithm", "payload_algorithm", "processed_at"])
def test_optional_fields_may_be_missing(keys: Keys, valid: bytes, field: str) -> None:
    # Like the reference client, only version/algorithm/encrypted_payload/encrypted_aes_key
    # are required; an absent descriptive field is not an error, a wrong one is (below).
    result = asyncio.run(
        keys.client.decrypt_response(mutate(valid, lambda e: e.pop(field)), PAYLOAD_ID)
    )
    assert result["choices"][0]["message"]["content"] == MARKER


def test_unknown_extra_fields_are_ignored(keys: Keys, valid: bytes) -> None:
    env = mutate(valid, lambda e: e.update({"extra": {"x": 1}, "signature": "abc"}))
    assert asyncio.run(keys.client.decrypt_response(env, PAYLOAD_ID))["_metadata"]["is_encrypted"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", "2.0"),
        ("version", "1.1"),
        ("version", ""),
        ("version", "1.0 "),
        ("algorithm", "hybrid-aes128-rsa2048"),
        ("algorithm", "none"),
        ("algorithm", "HYBRID-AES256-RSA4096"),
        ("key_algorithm", "RSA-OAEP-SHA1"),
        ("key_algorithm", "RSA-PKCS1v15"),
        ("payload_algorithm", "AES-128-GCM"),
        ("payload_algorithm", "AES-256-CBC"),
    ],
)
def test_wrong_constants_are_refused(keys: Keys, valid: bytes, field: str, value: Any) -> None:
    assert_envelope_error(keys, mutate(valid, lambda e: e.__setitem__(field, value)), field)


@pytest.mark.parametrize("value", [[], "x", 1, None, [1, 2, 3]])
def test_encrypted_payload_not_an_object(keys: Keys, valid: bytes, value: Any) -> None:
    assert_envelope_error(keys, mutate(valid, lambda e: e.__setitem__("encrypted_payload", value)))


@pytest.mark.parametrize("value", ["yesterday", [1], {"t": 1}, True])
def test_processed_at_not_a_number(keys: Keys, valid: bytes, value: Any) -> None:
    assert_envelope_error(keys, mutate(valid, lambda e: e.__setitem__("processed_at", value)))


# --- not an envelope at all ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", ("empty",)),
        (b"not json at all", ("JSON",)),
        (b"{", ()),
        (b'{"version": "1.0"', ()),
        (b"[1, 2, 3]", ("object",)),
        (b"null", ("object",)),
        (b'"a string"', ("object",)),
        (b"42", ("object",)),
        (b"\xff\xfe\x00{}", ("UTF-8",)),
        (b'{"version": "\xc3\x28"}', ("UTF-8",)),
        (b"\x00" * 64, ()),
    ],
    ids=["empty", "text", "brace", "truncated", "array", "null", "string", "number",
         "utf16-bom", "bad-utf8", "zeros"],
)  # fmt: skip
def test_not_an_envelope(keys: Keys, data: bytes, words: tuple[str, ...]) -> None:
    assert_envelope_error(keys, data, *words)


def test_truncated_valid_envelope(keys: Keys, valid: bytes) -> None:
    for cut in (1, len(valid) // 2, len(valid) - 1):
        assert_envelope_error(keys, valid[:cut])


def test_not_bytes(keys: Keys, valid: bytes) -> None:
    assert_envelope_error(keys, valid.decode(), "bytes")
    assert_envelope_error(keys, None, "bytes")


def test_duplicate_envelope_keys_never_panic(keys: Keys, valid: bytes) -> None:
    text = valid.decode()
    doubled = text.replace('"version": "1.0"', '"version": "1.0", "version": "2.0"', 1)
    assert doubled != text
    # refusing ambiguous input is fine; a panic or a SecurityError is not
    with contextlib.suppress(EnvelopeError):
        asyncio.run(keys.client.decrypt_response(doubled.encode(), PAYLOAD_ID))


# --- what decrypts but is not a reply ------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    [
        f"{MARKER} is not JSON".encode(),
        MARKER.encode() + bytes(range(256)),
        f'{{"secret": "{MARKER}", '.encode(),
        f'{{"secret": "{MARKER}"}} trailing {MARKER}'.encode(),
        f'{{"secret": "{MARKER}\x01"}}'.encode(),
        b"\xef\xbb\xbf" + json.dumps({"secret": MARKER}).encode(),
        b"",
    ],
    ids=["text", "binary", "truncated", "trailing", "raw-control", "bom", "empty"],
)
def test_decrypted_plaintext_not_json(keys: Keys, plaintext: bytes) -> None:
    envelope = seal_envelope(plaintext, keys.public)
    message = assert_envelope_error(keys, envelope, "JSON")
    assert MARKER not in message
    assert "secret" not in message


@pytest.mark.parametrize("plaintext", [b"[1, 2]", b'"a string"', b"42", b"null", b"true", b"1.5"])
def test_decrypted_json_not_an_object(keys: Keys, plaintext: bytes) -> None:
    assert_envelope_error(keys, seal_envelope(plaintext, keys.public), "object")


@pytest.mark.parametrize("metadata", [[], "meta", 5, True])
def test_decrypted_metadata_not_an_object(keys: Keys, metadata: Any) -> None:
    plaintext = json.dumps({"choices": [], "_metadata": metadata}).encode()
    assert_envelope_error(keys, seal_envelope(plaintext, keys.public), "_metadata")


@pytest.mark.parametrize("claimed", ["another-request-id", "", PAYLOAD_ID.upper(), 0])
def test_reply_for_another_payload_id(keys: Keys, claimed: Any) -> None:
    reply = {**REPLY, "_metadata": {"payload_id": claimed}}
    envelope = seal_envelope(json.dumps(reply).encode(), keys.public)
    error = decrypt_error(keys, envelope)
    assert type(error) is SecurityError
    assert "payload" in str(error).lower()


def test_reply_with_null_payload_id_is_ours(keys: Keys) -> None:
    reply = {**REPLY, "_metadata": {"payload_id": None, "security_tier": "high"}}
    envelope = seal_envelope(json.dumps(reply).encode(), keys.public)
    meta = asyncio.run(keys.client.decrypt_response(envelope, PAYLOAD_ID))["_metadata"]
    assert (meta["payload_id"], meta["security_tier"]) == (PAYLOAD_ID, "high")


def test_no_client_key_is_a_security_error(valid: bytes) -> None:
    # No key of its own and no process-wide pair yet (an interval no other test uses): no
    # request can have been sealed, so there is nothing to open with.
    client = SecureCompletionClient(key_rotation_interval=7_006.0)
    with pytest.raises(SecurityError, match="generate_keys"):
        asyncio.run(client.decrypt_response(valid, PAYLOAD_ID))


# --- size limits -------------------------------------------------------------------------------


def test_oversized_envelope_names_the_limit(keys: Keys, big: bytes) -> None:
    assert len(big) > 1000
    with pytest.raises(EnvelopeError, match="1000") as raised:
        _core.open_json(big, keys.native, max_size=1000)
    assert isinstance(raised.value, ValueError)
    assert MARKER not in str(raised.value)
    with pytest.raises(EnvelopeError, match="1000"):
        _core.open_bytes(big, keys.native, max_size=1000)


def test_size_limit_boundary(keys: Keys, big: bytes) -> None:
    value, _, _ = _core.open_json(big, keys.native, max_size=len(big))
    assert value["choices"][0]["message"]["content"] == MARKER
    with pytest.raises(EnvelopeError, match=str(len(big) - 1)):
        _core.open_json(big, keys.native, max_size=len(big) - 1)


def test_client_max_response_size_applies_to_decrypt_response(keys: Keys, big: bytes) -> None:
    small = SecureCompletionClient(max_response_size=1000)
    small.private_key, small.public_key_pem = keys.native, keys.client.public_key_pem
    with pytest.raises(EnvelopeError, match="1000"):
        asyncio.run(small.decrypt_response(big, PAYLOAD_ID))


# --- the native layer raises the same errors ----------------------------------------------------


def test_native_open_raises_the_same_typed_errors(keys: Keys, valid: bytes) -> None:
    with pytest.raises(SecurityError):
        _core.open_json(mutate(valid, edit_payload("tag", flip(0))), keys.native)
    with pytest.raises(SecurityError):
        _core.open_bytes(mutate(valid, edit_payload("tag", flip(0))), keys.native)
    with pytest.raises(EnvelopeError):
        _core.open_json(b"{}", keys.native)
    with pytest.raises(EnvelopeError):
        _core.open_bytes(b"[]", keys.native)
    with pytest.raises(EnvelopeError):
        _core.open_json(seal_envelope(b"not json", keys.public), keys.native)
    assert bytes(_core.open_bytes(seal_envelope(b"not json", keys.public), keys.native)) == (
        b"not json"
    )
