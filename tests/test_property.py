"""Property tests: arbitrary JSON values survive sealing, through us and through the oracle.

Profiles (conftest.py): HYPOTHESIS_PROFILE=dev (default, ~50 examples) or ci (500).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import example, given
from hypothesis import strategies as st
from jsoncheck import assert_same_json
from oracle_server import open_envelope, seal_envelope

from nomyo import _core

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
HUGE = st.integers(min_value=2**63, max_value=10**80) | st.integers(
    min_value=-(10**80), max_value=-(2**63) - 1
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def json_values(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """None, bools, ints, finite floats, text, and lists/dicts (text keys) of them."""
    scalars = st.none() | st.booleans() | ints | FLOATS | TEXT
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=6) | st.dictionaries(TEXT, children, max_size=6)
        ),
        max_leaves=40,
    )


#: What the brief asks for: any JSON-able value, huge integers included.
ANY_JSON = json_values(st.integers() | HUGE)
#: The same without integers outside 64 bits (so a big-int bug does not hide everything else).
JSON_64 = json_values(I64)


@pytest.fixture(scope="module")
def our_key() -> _core.PrivateKey:
    return _core.PrivateKey.generate(2048)


@pytest.fixture(scope="module")
def our_public(our_key: _core.PrivateKey) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(our_key.public_key().to_pem().encode())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


@pytest.fixture(scope="module")
def oracle_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def oracle_public(oracle_key: rsa.RSAPrivateKey) -> _core.PublicKey:
    pem = oracle_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _core.PublicKey.from_pem(pem)


def _expected(value: Any) -> Any:
    return json.loads(json.dumps(value))


# --- through us -------------------------------------------------------------------------------


@given(value=JSON_64)
@example(value={"": [0.0, -0.0, 1e300, 5e-324, True, False, None, "é😀\x00"]})
def test_seal_open_round_trip_64bit_ints(our_key: _core.PrivateKey, value: Any) -> None:
    opened, processed_at, algorithm = _core.open_json(
        _core.seal_json(value, our_key.public_key()), our_key
    )
    assert (processed_at, algorithm) == (None, "hybrid-aes256-rsa4096")
    assert_same_json(opened, _expected(value))


@given(value=ANY_JSON)
@example(value={"big": 2**64})
@example(value=[-(10**30)])
def test_seal_open_round_trip(our_key: _core.PrivateKey, value: Any) -> None:
    opened, _, _ = _core.open_json(_core.seal_json(value, our_key.public_key()), our_key)
    assert_same_json(opened, _expected(value))


# --- through the oracle -----------------------------------------------------------------------


@given(value=ANY_JSON)
@example(value={"big": 2**64, "f": 0.1, "s": "\u2028"})
def test_our_seal_opens_in_oracle(
    oracle_key: rsa.RSAPrivateKey, oracle_public: _core.PublicKey, value: Any
) -> None:
    plaintext = open_envelope(_core.seal_json(value, oracle_public), oracle_key)
    assert_same_json(json.loads(plaintext), _expected(value))


@given(value=JSON_64, ensure_ascii=st.booleans())
def test_oracle_seal_opens_in_ours_64bit_ints(
    our_key: _core.PrivateKey, our_public: rsa.RSAPublicKey, value: Any, ensure_ascii: bool
) -> None:
    plaintext = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8")
    opened, _, _ = _core.open_json(seal_envelope(plaintext, our_public), our_key)
    assert_same_json(opened, json.loads(plaintext))


@given(value=ANY_JSON)
@example(value=2**64)
def test_oracle_seal_opens_in_ours(
    our_key: _core.PrivateKey, our_public: rsa.RSAPublicKey, value: Any
) -> None:
    plaintext = json.dumps(value).encode("utf-8")
    opened, _, _ = _core.open_json(seal_envelope(plaintext, our_public), our_key)
    assert_same_json(opened, json.loads(plaintext))


# --- serializer and raw layer -------------------------------------------------------------------


@given(value=ANY_JSON)
def test_dumps_parses_like_json_dumps(value: Any) -> None:
    assert_same_json(json.loads(bytes(_core.dumps(value))), _expected(value))


@given(data=st.binary(max_size=2048))
def test_raw_bytes_round_trip_both_ways(
    our_key: _core.PrivateKey,
    our_public: rsa.RSAPublicKey,
    oracle_key: rsa.RSAPrivateKey,
    oracle_public: _core.PublicKey,
    data: bytes,
) -> None:
    assert open_envelope(_core.seal_bytes(data, oracle_public), oracle_key) == data
    assert bytes(_core.open_bytes(seal_envelope(data, our_public), our_key)) == data
