"""``nomyo._retry``, the retry policy: which statuses and network failures are retried, how
``Retry-After`` is read, the backoff; and the pipeline's retry loop run over
``httpx.MockTransport`` (each attempt counted)."""

from __future__ import annotations

import email.utils
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from chat_support import HELLO, sync_chat

import nomyo
from nomyo import _core, _pipeline, _retry
from nomyo._constants import INITIAL_RETRY_DELAY, MAX_RETRY_AFTER, MAX_RETRY_DELAY
from nomyo._retry import (
    is_certificate_failure,
    is_permanent_network_failure,
    parse_retry_after,
    retry_delay,
    should_retry,
)
from nomyo.testing import DevRouter, Fault, RouterThread, make_test_certificates

KEY = _core.PrivateKey.generate(2048)
SERVER_KEY = _core.PrivateKey.generate(2048)


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        *[(status, False) for status in (200, 400, 401, 404, 413, 422, 501)],
        *[(status, True) for status in (429, 500, 502, 503, 504)],
    ],
)
def test_should_retry(status: int, retried: bool) -> None:
    assert should_retry(status) is retried


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("3", 3.0, 3.0),
        ("0.25", 0.25, 0.25),
        (" 7 ", 7.0, 7.0),
        ("-5", 0.0, 0.0),  # never a negative wait
        (-3600, 0.0, 0.0),  # a date in the past: now
        (3600, 1.0, 3600.0),  # a date: within the hour
    ],
    ids=["seconds", "fraction", "spaces", "negative", "past-date", "future-date"],
)
def test_parse_retry_after(value: str | int, low: float, high: float) -> None:
    text = http_date(value) if isinstance(value, int) else value
    seconds = parse_retry_after({"retry-after": text})
    assert seconds is not None and low <= seconds <= high


@pytest.mark.parametrize("value", ["soon", "", "nan", "Mon, 99 Foo"])
def test_unreadable_retry_after_is_none(value: str) -> None:
    assert parse_retry_after({"retry-after": value}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_doubles_with_jitter_up_to_the_cap(attempt: int) -> None:
    full = min(INITIAL_RETRY_DELAY * 2**attempt, MAX_RETRY_DELAY)
    delays = [retry_delay(attempt) for _ in range(50)]
    assert all(0.75 * full <= d <= full for d in delays)
    assert len(set(delays)) > 1  # jittered: many clients do not retry in lockstep


def test_retry_after_wins_over_the_backoff() -> None:
    assert retry_delay(5, retry_after=1.5) == 1.5
    assert retry_delay(0, retry_after=0.0) == 0.0


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def transient_gaierror() -> socket.gaierror:
    return socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


@pytest.mark.parametrize(
    ("failure", "permanent"),
    [
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), True),
        (ssl.SSLError(1, "handshake failure"), True),
        (ssl.SSLEOFError(8, "EOF in violation of protocol"), False),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), True),
        (transient_gaierror(), False),
        (ConnectionRefusedError(111, "refused"), False),
        (ConnectionResetError(104, "reset"), False),
        (TimeoutError(), False),
    ],
    ids=[
        "certificate",
        "tls",
        "tls-eof",
        "no-such-host",
        "eai-again",
        "refused",
        "reset",
        "timeout",
    ],
)
def test_permanent_network_failures_through_their_causes(
    failure: BaseException, permanent: bool
) -> None:
    """Decided on the failure's type, also where the transport wrapped it (httpx's errors
    chain the socket's, nomyo's chain httpx's)."""
    wrapped = chained(
        nomyo.APIConnectionError("request failed"), chained(httpx.ConnectError("x"), failure)
    )
    assert is_permanent_network_failure(failure) is permanent
    assert is_permanent_network_failure(wrapped) is permanent
    certificate = isinstance(failure, ssl.SSLCertVerificationError)
    assert is_certificate_failure(wrapped) is certificate


def native_failure(kind: str, **attributes: object) -> _core.TransportError:
    """A native transport failure with the attributes the Rust side sets."""
    failure = _core.TransportError("native failure")
    for name, value in {"kind": kind, "cause": None, "status": None, "phase": None}.items():
        setattr(failure, name, attributes.get(name, value))
    return failure


def test_native_failures_are_decided_on_their_attributes() -> None:
    """A proxy's 4xx refusal, a DNS, TLS or certificate failure stand; a proxy's 5xx (or no
    usable answer), a refused connection and a timeout may change."""
    for permanent in (
        native_failure("proxy", status=407),
        native_failure("proxy", status=403),
        native_failure("connect", cause="dns"),
        native_failure("connect", cause="tls"),
        native_failure("connect", cause="certificate"),
    ):
        assert is_permanent_network_failure(permanent), permanent
    for transient in (
        native_failure("proxy", status=502),
        native_failure("proxy"),
        native_failure("connect", cause="refused"),
        native_failure("connect", cause="dns-transient"),
        native_failure("timeout", phase="read"),
    ):
        assert not is_permanent_network_failure(transient), transient
    assert is_certificate_failure(native_failure("connect", cause="certificate"))
    assert not is_certificate_failure(native_failure("connect", cause="tls"))


# -- the pipeline's retry loop, over httpx.MockTransport ----------------------------------


def sync_client(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> Any:
    client = nomyo.SyncSecureCompletionClient(
        "https://router.test", transport=httpx.MockTransport(handler), **options
    )
    client._set_key(KEY)
    client._server_key = SERVER_KEY.public_key()
    return client


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the loop asked for (it does not wait them)."""
    asked: list[float] = []
    monkeypatch.setattr(_pipeline.Sleep, "run", lambda self, io: asked.append(self.seconds))
    return asked


def answers(*replies: httpx.Response | BaseException) -> tuple[Callable[..., Any], list[int]]:
    """A handler giving ``replies`` in turn (raising the exceptions), and the attempt count."""
    queue = list(replies)
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    return handler, attempts


def certificate_refused() -> httpx.ConnectError:
    refused = httpx.ConnectError("certificate verify failed")
    refused.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    return refused


PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("reply", "max_retries", "attempts", "error"),
    [
        (httpx.Response(503), 2, 3, nomyo.ServiceUnavailableError),
        (httpx.Response(429), 1, 2, nomyo.RateLimitError),
        (httpx.Response(500), 0, 1, nomyo.ServerError),
        (httpx.Response(400, json={"detail": "bad"}), 3, 1, nomyo.InvalidRequestError),
        (httpx.Response(401), 3, 1, nomyo.AuthenticationError),
        (httpx.ConnectError("refused"), 2, 3, nomyo.APIConnectionError),
        (httpx.ReadTimeout("slow"), 1, 2, nomyo.APITimeoutError),
        (certificate_refused(), 3, 1, nomyo.APIConnectionError),
    ],
    ids=["503", "429", "500-no-retries", "400", "401", "refused", "timeout", "certificate"],
)
def test_attempts_per_failure(
    no_sleep: list[float],
    reply: httpx.Response | BaseException,
    max_retries: int,
    attempts: int,
    error: type[Exception],
) -> None:
    handler, made = answers(reply)
    with sync_client(handler, max_retries=max_retries) as client, pytest.raises(error):
        client.send_secure_request(PAYLOAD, "p-1")
    assert len(made) == attempts
    assert len(no_sleep) == attempts - 1


def test_retry_after_is_waited_and_a_long_one_raises_at_once(no_sleep: list[float]) -> None:
    handler, made = answers(httpx.Response(429, headers={"Retry-After": "2"}))
    with sync_client(handler, max_retries=2) as client, pytest.raises(nomyo.RateLimitError):
        client.send_secure_request(PAYLOAD, "p-2")
    assert (len(made), no_sleep) == (3, [2.0, 2.0])
    no_sleep.clear()
    too_long = str(int(MAX_RETRY_AFTER) + 1)
    handler, made = answers(httpx.Response(503, headers={"Retry-After": too_long}))
    with sync_client(handler, max_retries=5) as client, pytest.raises(nomyo.APIError):
        client.send_secure_request(PAYLOAD, "p-3")
    assert (len(made), no_sleep) == (1, [])


def test_per_call_max_retries_overrides_the_clients(no_sleep: list[float]) -> None:
    handler, made = answers(httpx.Response(502))
    with sync_client(handler, max_retries=4) as client, pytest.raises(nomyo.APIError):
        client.send_secure_request(PAYLOAD, "p-4", max_retries=1)
    assert len(made) == 2


@pytest.fixture(scope="module")
def tls_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    certs = make_test_certificates(tmp_path_factory.mktemp("certs"))
    router = DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key)
    with router.run_in_thread() as handle:
        yield handle


@pytest.mark.usefixtures("_clean")
def test_untrusted_certificate_is_not_retried(
    tls_router: RouterThread,
    client_key: _core.PrivateKey,
    transport: str,
    fast_retries: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nomyo")
    # No verify=: the system/certifi store does not hold the test CA.
    with nomyo.SyncSecureChatCompletion(tls_router.url, max_retries=2) as client:
        client.client._set_key(client_key)
        with pytest.raises(nomyo.APIConnectionError) as info:
            client.create("m", HELLO)
    assert fast_retries == [], "no retry was scheduled"
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    text = str(info.value).lower()
    assert "certificate" in text or "verify" in text
    assert _retry.is_certificate_failure(info.value)  # what the CLI's exit code 4 needs
    assert tls_router.router.key_fetches == 0


@pytest.mark.usefixtures("_clean")
def test_failed_tls_handshake_is_not_retried(
    router: RouterThread, client_key: _core.PrivateKey, transport: str, fast_retries: list[float]
) -> None:
    """https:// to a server that speaks plain HTTP: the handshake cannot succeed."""
    url = router.url.replace("http://", "https://")
    before = router.router.connections
    with nomyo.SyncSecureChatCompletion(url, max_retries=2) as client:
        client.client._set_key(client_key)
        with pytest.raises(nomyo.APIConnectionError) as info:
            client.create("m", HELLO)
    assert router.router.connections - before == 1
    assert fast_retries == []
    assert not _retry.is_certificate_failure(info.value)


@pytest.mark.usefixtures("_clean")
def test_unresolvable_host_is_not_retried(
    client_key: _core.PrivateKey, transport: str, fast_retries: list[float]
) -> None:
    # RFC 6761: .invalid names never resolve ("no such name"). A machine whose resolver
    # cannot be reached answers EAI_AGAIN instead, which can change, and is retried.
    host = "nomyo-router.invalid"
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror as exc:
        transient = exc.errno == socket.EAI_AGAIN
    else:
        pytest.fail(f"{host} resolved")
    with nomyo.SyncSecureChatCompletion(f"https://{host}", max_retries=2) as client:
        client.client._set_key(client_key)
        with pytest.raises(nomyo.APIConnectionError) as info:
            client.create("m", HELLO)
    assert fast_retries == ([0, 1] if transient else []), str(info.value)


@pytest.mark.usefixtures("_clean")
def test_what_can_change_is_still_retried(
    router: RouterThread, client_key: _core.PrivateKey, transport: str, fast_retries: list[float]
) -> None:
    # A dropped connection, then a refused one (nothing listens on the port any more).
    router.router.faults.push(Fault(drop_connection=True))
    with sync_chat(router.url, client_key, max_retries=1) as client:
        assert client.create("m", HELLO).choices[0].message.content == "hello"
    assert fast_retries == [0]
    spare = DevRouter(key_bits=2048)
    with spare.run_in_thread() as handle:
        url = handle.url
    fast_retries.clear()
    with (
        sync_chat(url, client_key, max_retries=2) as client,
        pytest.raises(nomyo.APIConnectionError),
    ):
        client.create("m", HELLO)
    assert fast_retries == [0, 1], "connection refused is retried"
