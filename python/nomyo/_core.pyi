"""Type stubs for the native module ``nomyo._core`` (built from ``rust/nomyo-python``).

Every secret (private keys, AES keys, plaintext) lives in native memory owned by these
objects and is zeroed when they are dropped. Errors are raised as the exception classes of
``nomyo._exceptions``: ``SecurityError`` (opaque crypto failure), ``EnvelopeError`` (a
structural problem with an envelope), ``KeyFormatError`` (a key that cannot be loaded).
"""

import os
from collections.abc import Callable
from typing import Any, Literal, TypedDict, final

from typing_extensions import Required

__all__ = [
    "ENVELOPE_ALGORITHM",
    "ENVELOPE_VERSION",
    "Completions",
    "Pending",
    "PrivateKey",
    "PublicKey",
    "Reply",
    "SecretBuffer",
    "Transport",
    "TransportError",
    "__version__",
    "crypto_info",
    "disable_core_dumps",
    "dumps",
    "lock_bytearray",
    "memory_protection_info",
    "open_bytes",
    "open_json",
    "seal_bytes",
    "seal_json",
    "secure_memory_needed",
    "unlock_bytearray",
    "verify_attestation",
    "wipe_bytearray",
    "write_dev_certificates",
    "write_file",
]

__version__: str

#: Version string of the envelope format ("1.0").
ENVELOPE_VERSION: str
#: Algorithm name of the envelope format ("hybrid-aes256-rsa4096").
ENVELOPE_ALGORITHM: str

@final
class PublicKey:
    """An RSA public key (SubjectPublicKeyInfo)."""

    @staticmethod
    def from_pem(data: bytes | str) -> PublicKey:
        """Parse SPKI PEM. Raises KeyFormatError (also for RSA keys under 2048 bits)."""

    @staticmethod
    def from_der(data: bytes) -> PublicKey:
        """Parse SPKI DER. Raises KeyFormatError."""

    @property
    def key_size(self) -> int:
        """Modulus size in bits."""

    def to_pem(self) -> str:
        """SPKI PEM text, 64-character lines, trailing newline (as pyca/cryptography writes)."""

    def to_der(self) -> bytes:
        """SPKI DER bytes."""

    def fingerprint(self) -> str:
        """``"sha256:<hex>"``: SHA-256 over the SPKI DER."""

    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class PrivateKey:
    """An RSA private key held in native memory; never exposed unless exported explicitly."""

    @staticmethod
    def generate(bits: int = 4096) -> PrivateKey:
        """Generate an RSA key pair (e = 65537); bits is 2048, 3072 or 4096. GIL released."""

    @staticmethod
    def from_pem(data: bytes | str, password: str | bytes | None = None) -> PrivateKey:
        """Load PKCS#8 PEM, encrypted ("ENCRYPTED PRIVATE KEY") or not.

        Raises KeyFormatError for a corrupt file, a wrong or missing password, a non-RSA key
        or an RSA key under 2048 bits.
        """

    @staticmethod
    def load(
        path: str | os.PathLike[str],
        password: str | bytes | None = None,
        allow_readable: bool = False,
    ) -> PrivateKey:
        """Read and parse a PEM private key file natively (no Python copy of its bytes).

        The file is opened without following a symlink and checked on the open descriptor: it
        must be a regular file of at most 1 MiB and (Unix) not accessible by group or others
        unless ``allow_readable``. Raises FileNotFoundError for a missing file, OSError for
        other I/O failures and KeyFormatError for a refused or unparsable file. GIL released.
        """

    @property
    def key_size(self) -> int:
        """Modulus size in bits."""

    def public_key(self) -> PublicKey: ...
    def to_pem(self, password: str | bytes | None = None) -> bytes:
        """Export PKCS#8 PEM; with a password, PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC)."""

    def save(self, path: str, password: str | bytes | None = None, overwrite: bool = False) -> None:
        """Write the PKCS#8 PEM to ``path``, created 0600 atomically and fsync'ed.

        Raises FileExistsError unless ``overwrite`` is true.
        """

@final
class SecretBuffer:
    """A page-aligned, best-effort locked, dump-excluded, zero-on-drop native buffer."""

    def __new__(cls, data: bytes | bytearray | None = None, lock: bool = True) -> SecretBuffer: ...
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes:
        """An explicit copy as ``bytes`` (which cannot be wiped)."""

    def to_bytearray(self) -> bytearray:
        """An explicit copy as a ``bytearray`` (which the caller can wipe)."""

    def __enter__(self) -> SecretBuffer: ...
    def __exit__(self, exc_type: object, exc: object, tb: object, /) -> None: ...
    @property
    def locked(self) -> bool:
        """True if the pages are locked in RAM (mlock succeeded)."""

    @property
    def dump_excluded(self) -> bool:
        """True if the pages are excluded from core dumps (MADV_DONTDUMP succeeded)."""

    def zero(self) -> None:
        """Overwrite the contents with zeros now (also done on drop)."""

    def close(self) -> None:
        """Zero, unlock and release the memory now; the buffer is empty afterwards."""

def seal_json(
    obj: Any,
    recipient: PublicKey,
    processed_at: int | float | None = None,
    *,
    secure_memory: str = "best_effort",
) -> bytes:
    """Serialize ``obj`` to JSON inside native memory and seal it to ``recipient``.

    Returns the envelope as UTF-8 JSON bytes. ``processed_at`` (server side) is added to the
    envelope when given. Raises TypeError/ValueError for objects JSON cannot represent, and
    RecursionError for a value inside more than 256 arrays or objects (or a circular one).
    ``secure_memory`` (``off``, ``best_effort``, ``require``) is the policy of the secret
    buffers; under ``require`` a buffer that cannot be locked raises SecureMemoryError
    before anything is written to it.
    """

def open_json(
    envelope: bytes,
    key: PrivateKey,
    max_size: int | None = None,
    *,
    secure_memory: str = "best_effort",
) -> tuple[Any, int | float | None, str]:
    """Open an envelope sealed to ``key`` and parse its plaintext JSON into Python objects.

    Returns ``(value, processed_at, algorithm)``. Raises EnvelopeError for structural
    problems and SecurityError (opaque) for any unwrap or authentication failure;
    SecureMemoryError under ``secure_memory="require"`` (see ``seal_json``).
    """

def seal_bytes(data: bytes | bytearray | memoryview, recipient: PublicKey) -> bytes:
    """Seal raw bytes (the caller's own buffer) into an envelope."""

def open_bytes(envelope: bytes, key: PrivateKey, max_size: int | None = None) -> SecretBuffer:
    """Open an envelope into a SecretBuffer holding the plaintext."""

def dumps(obj: Any, *, secure_memory: str = "best_effort") -> SecretBuffer:
    """Serialize ``obj`` to compact JSON into a SecretBuffer (what ``seal_json`` encrypts),
    under the ``secure_memory`` policy (see ``seal_json``)."""

def crypto_info() -> dict[str, Any]:
    """The crypto library ("aws-lc"), its random generator's seed ("os"; "cpu-jitter" in a
    build without the project's cargo settings) and how many RSA key generations race."""

def memory_protection_info() -> dict[str, Any]:
    """What this process has achieved for secret memory: a probe page now (locking, dump
    exclusion, wipe-on-fork), the memlock limits and capability, and counters since the
    start (see ``nomyo.get_memory_protection_info``)."""

def secure_memory_needed(size: int) -> int:
    """Locked bytes a request of ``size`` JSON bytes (mostly one message) needs at its peak."""

def disable_core_dumps() -> bool:
    """Set RLIMIT_CORE to 0 and PR_SET_DUMPABLE to 0 (Linux). Returns True on success."""

def lock_bytearray(data: bytearray) -> bool:
    """Lock the pages holding a bytearray in RAM (best effort); True on success."""

def unlock_bytearray(data: bytearray) -> bool:
    """Unlock the pages holding a bytearray; True on success."""

def wipe_bytearray(data: bytearray) -> None:
    """Overwrite a bytearray with zeros (writes the compiler cannot elide)."""

def verify_attestation(
    attestation: dict[str, Any] | None,
    payload_id: str,
    expected_pcrs: dict[str, dict[int, str]] | None = None,
    trusted_aiks: list[str] | None = None,
) -> dict[str, Any]:
    """Verify a ``_metadata.tpm_attestation`` block for ``payload_id`` (PROTOCOL.md §5).

    Returns a dict saying what was proven: ``available``, ``valid``, ``reason``, ``detail``,
    ``signature_valid``, ``bound_to_request``, ``pcr_digest_valid``, ``pcr_values``,
    ``pcr_policy_matched``, ``aik_type``, ``aik_fingerprint`` (``sha256:<hex>`` of the AIK's
    SubjectPublicKeyInfo DER), ``signature_scheme``, and, honestly, what was not:
    ``aik_trusted`` and ``genuine_tpm_proven`` are False (the AIK comes from the server),
    with a ``caveat``, unless ``trusted_aiks`` pins the AIK: then a quote by any other key
    fails with reason ``aik_untrusted``, and a valid one has both True.
    """

def write_file(
    path: str | os.PathLike[str], data: bytes | str, overwrite: bool = False, mode: int = 0o644
) -> None:
    """Create ``path`` holding ``data`` (``str`` is written as UTF-8) atomically.

    The data goes to a new file with a random name in the same directory (exclusive create,
    no symlink following, created with ``mode`` under the umask), is fsync'ed, and is then
    hard-linked into place, or renamed over ``path`` when ``overwrite`` is true. The temporary
    file is removed on failure. Raises FileExistsError if ``path`` exists and ``overwrite`` is
    false, ValueError for a ``mode`` above 0o7777.
    """

class TransportError(Exception):
    """A network failure of the native transport. What to decide on is in attributes, never
    in the message: ``kind`` is ``"connect"`` (no connection could be made: see ``cause``),
    ``"proxy"`` (a forward proxy did not open the tunnel: see ``status``), ``"timeout"``
    (see ``phase``) or ``"closed"`` (the connection broke after it was made)."""

    kind: Literal["connect", "proxy", "timeout", "closed"]
    #: Why a connection failed (kind ``connect``), else None.
    cause: (
        Literal["dns", "dns-transient", "refused", "reset", "unreachable", "tls", "certificate"]
        | None
    )
    #: The status a forward proxy refused the tunnel with (kind ``proxy``); None when it gave
    #: no usable answer, or for other kinds.
    status: int | None
    #: What timed out (kind ``timeout``), else None.
    phase: Literal["connect", "read", "pool"] | None

_Timeouts = tuple[float | None, float | None, float | None, float | None]

class _Request(TypedDict, total=False):
    """One request for :class:`Transport` (``method``, ``url``, ``headers``, ``ok_limit``,
    ``error_limit`` and ``timeouts`` are required)."""

    method: Required[Literal["GET", "POST"]]
    url: Required[str]
    headers: Required[list[tuple[str, str]]]
    #: Bytes sent as they are (not with ``seal``).
    body: bytes | None
    #: ``(payload, server_key)``: the payload is serialized to JSON and sealed to the key.
    seal: tuple[Any, PublicKey] | None
    #: ``(client_key, max_size)``: a 200 reply is opened with the key.
    open: tuple[PrivateKey, int] | None
    ok_limit: Required[int]
    error_limit: Required[int]
    timeouts: Required[_Timeouts]
    body_deadline: float | None
    proxy: str | None

@final
class Reply:
    """One finished request: status, headers, timings, the digests of both sealed bodies, and
    the body or the opened reply."""

    @property
    def status(self) -> int: ...
    @property
    def sent_bytes(self) -> int: ...
    @property
    def received_bytes(self) -> int: ...
    @property
    def timings(self) -> tuple[float, float, float]:
        """Seconds spent ``(sealing, exchanging, opening)``."""
    @property
    def request_sha256(self) -> bytes:
        """SHA-256 (32 bytes) of the request body exactly as sent (the sealed envelope)."""
    @property
    def reply_sha256(self) -> bytes:
        """SHA-256 (32 bytes) of the reply body exactly as received, before opening."""
    @property
    def opened(self) -> bool:
        """True when the reply was opened (``open`` was given and the status was 200)."""
    def headers(self) -> dict[str, str]:
        """Lower-case header names; repeated headers joined with ", "."""
    def body(self) -> bytes:
        """The body as read (empty when the reply was opened)."""
    def reply(self) -> tuple[Any, int | float | None, str]:
        """The opened reply parsed from JSON: ``(value, processed_at, algorithm)``, once.

        Raises SecurityError or EnvelopeError when the reply could not be opened.
        """

@final
class Completions:
    """Finished requests for one event loop (POSIX only): the native workers queue them
    and make ``fileno()`` readable; ``drain()`` returns them. Workers never wait for the
    GIL."""

    def __new__(cls) -> Completions: ...
    def fileno(self) -> int:
        """Readable when requests have finished (watch it with ``loop.add_reader``)."""
    def drain(self) -> list[tuple[int, bool, Any]]:
        """``[(token, ok, Reply or the exception to raise)]`` since the last call."""

@final
class Pending:
    """A request in flight."""

    def cancel(self) -> None:
        """Stop the request (its connection is closed)."""
    @property
    def done(self) -> bool: ...

@final
class Transport:
    """The native HTTP/1.1 + HTTP/2 transport: verified TLS (rustls) trusting the PEM files or
    folders in ``ca_paths``, a keep-alive pool (one shared connection where ALPN chose
    ``h2``), forward proxies per request, envelopes sealed and opened without the GIL.

    Raises ConfigurationError when no CA certificate can be loaded.
    """

    def __new__(
        cls,
        ca_paths: list[str],
        *,
        max_connections: int = 100,
        max_idle: int = 32,
        keepalive: float = 5.0,
        secure_memory: str = "best_effort",
    ) -> Transport: ...
    def start(
        self,
        done: Completions | Callable[[bool, Any], object],
        request: _Request,
        *,
        token: int = 0,
    ) -> Pending:
        """Start ``request``. Its outcome, a ``Reply`` (ok) or the exception to raise, goes to
        ``done``: a ``Completions`` queue under ``token``, or a callable ``done(ok, value)``
        called from a worker thread. OSError when the I/O runtime cannot be started."""
    def send(self, request: _Request) -> Reply:
        """The blocking twin of ``start`` (waits without the GIL; Ctrl-C interrupts). A request
        task that ended without an outcome raises RuntimeError."""
    def close_idle(self) -> None:
        """Close idle keep-alive connections."""
    @property
    def idle_connections(self) -> int:
        """Connections currently open (with no request in flight: the idle ones)."""

def write_dev_certificates(
    ca_path: str | os.PathLike[str],
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    days: int = 30,
) -> None:
    """Make a throwaway CA and a server certificate for localhost, 127.0.0.1 and ::1.

    P-256 keys and ECDSA-SHA256 signatures from aws-lc; valid from an hour ago for ``days``
    days (1-3650). Writes ``ca_path`` and ``cert_path`` (0644) and the server's PKCS#8 key
    ``key_path`` (0600), each atomically, replacing existing files. The CA's key is never
    written. Raises ValueError for ``days`` out of range, OSError when a file cannot be
    written.
    """
