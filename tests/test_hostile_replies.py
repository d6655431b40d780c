"""The client (async and sync) against the hostile router's replies: for every hostile mode a
typed ``nomyo.NomyoError`` within its bound, then, on the SAME client instance, a normal
request succeeds once the server is back in ``good`` mode; odd but authentic replies pass,
and a hostile public key endpoint is refused."""

from __future__ import annotations

import os

import pytest
from hostile_client import A, C, E, S, T, expect_typed, make_client, then_good
from hostile_client import kind as kind
from hostile_client import server as server
from hostile_server import MODES, TIMEOUT, HostileServer, MiB

import nomyo

#: mode -> (the exceptions allowed, bound on the time to raise in seconds)
HOSTILE: dict[str, tuple[tuple[type[BaseException], ...], float]] = {
    "empty_200": ((E,), 2.0),
    "not_json": ((E,), 2.0),
    "invalid_utf8": ((E,), 2.0),
    "json_array": ((E,), 2.0),
    "json_string": ((E,), 2.0),
    "missing_fields": ((E,), 2.0),
    "wrong_types": ((E,), 2.0),
    "null_fields": ((E,), 2.0),
    "wrong_content_type_garbage": ((E,), 2.0),
    "huge_base64_fields": ((E, S), 2.0),
    "sealed_to_another_key": ((S,), 2.0),
    "plaintext_not_json": ((E,), 2.0),
    "plaintext_json_array": ((E,), 2.0),
    "plaintext_metadata_not_object": ((E,), 2.0),
    "reply_for_another_payload_id": ((S,), 2.0),
    "declared_1GiB_closes_early": ((E,), 2.0),
    "declared_70MiB": ((E,), 2.0),
    "streamed_70MiB_chunked": ((E,), 3.0),
    "streamed_70MiB_http10_no_length": ((E,), 3.0),
    "gzip_bomb_64MiB": ((E,), 3.0),
    "truncated_headers": ((C,), 2.0),
    "headers_never_end": ((T,), TIMEOUT + 1.5),
    "garbage_status_line": ((C,), 2.0),
    "huge_header": ((C,), 3.0),
    "reset_mid_body": ((C,), 2.0),
    "reset_before_reply": ((C,), 2.0),
    "close_without_reply": ((C,), 2.0),
    "content_length_larger_than_body": ((C,), 2.0),
    "http10_no_length_garbage": ((E,), 2.0),
    "chunked_stalls": ((T,), TIMEOUT + 1.5),
    "bad_chunk_size": ((C,), 2.0),
    "slow_loris_over_read_timeout": ((T,), TIMEOUT + 1.5),
    "redirect": ((A,), 2.0),
}


@pytest.mark.parametrize("mode", sorted(HOSTILE))
def test_hostile_reply_raises_typed_error_then_client_recovers(
    server: HostileServer, kind: str, mode: str
) -> None:
    expected, bound = HOSTILE[mode]
    client = make_client(kind, server.url)
    try:
        then_good(server, client)  # a pooled keep-alive connection exists before the attack
        server.reset(mode)
        expect_typed(client, expected, bound)
        assert server.secure_hits == 1, "no retries with max_retries=0"
        if "70MiB" in mode:
            assert server.sent < 32 * MiB, f"the client read {server.sent} bytes"
        then_good(server, client)
    finally:
        server.reset("good")
        client.close()


def test_compressed_error_status_keeps_its_status(server: HostileServer, kind: str) -> None:
    """A proxy that gzips a 503 anyway: still the (retryable) status, not an EnvelopeError."""
    client = make_client(kind, server.url)
    try:
        then_good(server, client)
        server.reset("compressed_503")
        with pytest.raises(nomyo.ServiceUnavailableError) as info:
            client.send("x", "c-1")
        assert info.value.status_code == 503
        then_good(server, client)
    finally:
        server.reset("good")
        client.close()


@pytest.mark.parametrize(
    "mode", ["good_wrong_content_type", "good_http10_close_delimited"], ids=lambda m: m
)
def test_odd_but_authentic_replies_are_accepted(
    server: HostileServer, kind: str, mode: str
) -> None:
    """The envelope is authenticated: an odd content type or framing does not matter."""
    client = make_client(kind, server.url)
    try:
        server.reset(mode)
        reply = client.send("odd framing", "odd-1")
        assert reply["choices"][0]["message"]["content"] == "odd framing"
        then_good(server, client)
    finally:
        server.reset("good")
        client.close()


def test_undecodable_content_encoding_raises_typed_error(server: HostileServer, kind: str) -> None:
    client = make_client(kind, server.url)
    try:
        server.reset("bad_gzip")
        try:
            client.send("x", "gz")
        except nomyo.NomyoError:
            pass
        except Exception as exc:
            pytest.fail(f"untyped {type(exc).__module__}.{type(exc).__name__}: {exc}")
        then_good(server, client)
    finally:
        server.reset("good")
        client.close()


@pytest.mark.parametrize("key_mode", ["key_streamed_70MiB", "key_bad_gzip"])
def test_hostile_public_key_endpoint(server: HostileServer, kind: str, key_mode: str) -> None:
    client = make_client(kind, server.url)
    try:
        server.reset("good")
        server.key_mode = key_mode
        try:
            client.send("x", "key")
        except nomyo.NomyoError:
            pass
        except Exception as exc:
            pytest.fail(f"untyped {type(exc).__module__}.{type(exc).__name__}: {exc}")
        else:
            pytest.fail("a hostile key was accepted")
        assert server.sent < 32 * MiB, f"the client read {server.sent // MiB} MiB of key"
    finally:
        server.reset("good")
        client.close()


def test_cases_are_all_exercised() -> None:
    """Every hostile mode is used by one of the tests above or in ``test_hostile_retries``."""
    used = set(HOSTILE) | {
        "good",
        "good_wrong_content_type",
        "good_http10_close_delimited",
        "5xx_storm_garbage_retry_after",
        "503_retry_after_infinite",
        "429_storm",
        "429_retry_after_one_hour",
        "slow_loris_1_byte_per_0.5s",
        "chunked_trickle_forever",
        "bad_gzip",
        "compressed_503",
    }
    assert used == set(MODES)
    assert os.environ.get("NOMYO_PRINT_SECRETS") is None
