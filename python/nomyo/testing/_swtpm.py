"""Real TPM 2.0 quotes for the development router, from a software TPM (swtpm + tpm2-tools).

``SwtpmAttestation`` starts one ``swtpm socket`` process (127.0.0.1 only, free ports, state in
a private temporary folder), creates an endorsement key and an attestation key once, extends a
few PCRs so that they are not all zero, and then answers every call with a fresh quote bound to
the request: the qualifying data is ``SHA-256(payload_id)[:16]`` (PROTOCOL.md section 5)::

    from nomyo.testing import DevRouter, SwtpmAttestation

    with SwtpmAttestation() as tpm, DevRouter(attestation_provider=tpm).run_in_thread() as r:
        ...  # replies carry a genuine (software) TPM quote in _metadata.tpm_attestation

Needs the ``swtpm`` and ``tpm2-tools`` packages (Debian: ``scripts/install-system-deps.sh``);
``SwtpmAttestation.available()`` says whether they are installed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from .._lifecycle import Closeable

__all__ = ["SwtpmAttestation"]

#: Signature schemes of the attestation key: RSA-2048 (PKCS#1 v1.5 or PSS) or ECC P-256.
Scheme = Literal["rsassa", "rsapss", "ecdsa"]

_TOOLS = (
    "swtpm",
    "tpm2_createek",
    "tpm2_createak",
    "tpm2_pcrextend",
    "tpm2_quote",
    "tpm2_flushcontext",
    "tpm2_getcap",
)
#: Measurements extended once at start: (PCR index, label hashed into the sha256 bank).
_MEASUREMENTS = ((0, "nomyo-dev-firmware"), (7, "nomyo-dev-secureboot"), (10, "nomyo-dev-ima"))
_SELECTION_RE = re.compile(r"^[a-z0-9]+:\d+(,\d+)*(\+[a-z0-9]+:\d+(,\d+)*)*$")


class SwtpmAttestation(Closeable):
    """An attestation provider for ``DevRouter`` that makes real quotes with a software TPM.

    Calling the object with a payload id returns the ``_metadata.tpm_attestation`` block:
    ``is_available``, ``pcr_banks``, ``pcr_values`` (``{bank: {index: hex}}``), ``quote_b64``
    (TPMS_ATTEST), ``signature_b64`` (TPMT_SIGNATURE) and ``aik_pubkey_b64`` (TPM2B_PUBLIC).
    Calls are serialised (one TPM, no resource manager) and safe from any thread.

    Args:
        pcr_selection: the PCRs quoted, in tpm2-tools syntax (``"sha256:0,7,10"``).
        scheme: the attestation key's signature scheme.
        measure: texts extended (SHA-256 of each, in order) into sha256 PCR ``measure_pcr``
            at start, after the fixed measurements: a "changed software" to show a
            remembered measurement refused (``nomyo serve-dev --tpm --tpm-measure TEXT``).
        measure_pcr: the PCR ``measure`` extends (default 10, quoted by default).
        timeout: seconds allowed for swtpm to start and for each tpm2-tools command.

    Raises:
        RuntimeError: swtpm or tpm2-tools is missing, or the TPM could not be set up.
    """

    def __init__(
        self,
        pcr_selection: str = "sha256:0,7,10",
        *,
        scheme: Scheme = "rsassa",
        timeout: float = 30.0,
        measure: Sequence[str] = (),
        measure_pcr: int = 10,
    ) -> None:
        if not _SELECTION_RE.match(pcr_selection):
            raise ValueError(f"not a PCR selection like 'sha256:0,7,10': {pcr_selection!r}")
        if scheme not in ("rsassa", "rsapss", "ecdsa"):
            raise ValueError(f"scheme must be rsassa, rsapss or ecdsa, not {scheme!r}")
        if not self.available():
            raise RuntimeError(
                "SwtpmAttestation needs swtpm and tpm2-tools "
                "(Debian/Ubuntu: bash scripts/install-system-deps.sh)"
            )
        if isinstance(measure, str) or not 0 <= measure_pcr <= 23:
            raise ValueError("measure must be a sequence of texts and measure_pcr 0-23")
        self.measure = tuple(measure)
        self.measure_pcr = measure_pcr
        self.pcr_selection = pcr_selection
        self.scheme: Scheme = scheme
        self.timeout = timeout
        self.quotes = 0
        self.port = 0
        self._lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="nomyo-swtpm-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}
        self._aik_public = b""
        self._finalizer = weakref.finalize(self, _cleanup, self._dir, [None])
        try:
            self._start()
            self._setup_keys()
        except BaseException:
            self.close()
            raise

    # -- availability -------------------------------------------------------------------

    @staticmethod
    def available() -> bool:
        """True when ``swtpm`` and the tpm2-tools commands used here are on ``PATH``."""
        return all(shutil.which(tool) is not None for tool in _TOOLS)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the swtpm process runs."""
        return self._process is not None and self._process.poll() is None

    def _start(self) -> None:
        state = self._dir / "state"
        state.mkdir(mode=0o700)
        last_error = ""
        for _ in range(5):  # a free port can be taken between picking and binding it
            port = _free_port_pair()
            ctrl = port + 1  # the tcti "swtpm" talks to the control channel on port + 1
            log = self._dir / "swtpm.log"
            process = subprocess.Popen(
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={state}",
                    "--server",
                    f"type=tcp,port={port},bindaddr=127.0.0.1",
                    "--ctrl",
                    f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                    "--flags",
                    "not-need-init,startup-clear",
                    "--log",
                    f"file={log},level=1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self._process = process
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _cleanup, self._dir, [process])
            self._env = {
                **os.environ,
                "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={port}",
                "TSS2_LOG": "all+NONE",
            }
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline and process.poll() is None:
                probe = subprocess.run(
                    ["tpm2_getcap", "properties-fixed"],
                    env=self._env,
                    capture_output=True,
                    check=False,
                    timeout=self.timeout,
                )
                if probe.returncode == 0:
                    self.port = port
                    return
                last_error = probe.stderr.decode(errors="replace").strip()
                time.sleep(0.05)
            _stop(process)
            self._process = None
            with contextlib.suppress(OSError):
                last_error = log.read_text(errors="replace").strip() or last_error
        raise RuntimeError(f"swtpm did not start: {last_error[-500:]}")

    def _tool(self, *args: str) -> bytes:
        """Run one tpm2-tools command against our swtpm; returns its stdout."""
        proc = subprocess.run(
            list(args),
            cwd=self._dir,
            env=self._env,
            capture_output=True,
            check=False,
            timeout=self.timeout,
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {err[-500:]}")
        return proc.stdout

    def _flush(self) -> None:
        # No resource manager: transient objects and sessions stay loaded unless flushed
        # (swtpm has only 3 transient slots).
        self._tool("tpm2_flushcontext", "-t")
        self._tool("tpm2_flushcontext", "-s")

    def _setup_keys(self) -> None:
        key_type = "ecc" if self.scheme == "ecdsa" else "rsa"
        self._tool("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
        self._flush()
        self._tool(
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            "ak.ctx",
            "-G",
            key_type,
            "-g",
            "sha256",
            "-s",
            self.scheme,
            "-f",
            "tss",
            "-u",
            "ak.tpm2b_public",
        )
        self._flush()
        self._aik_public = (self._dir / "ak.tpm2b_public").read_bytes()
        for index, label in _MEASUREMENTS:
            digest = hashlib.sha256(label.encode()).hexdigest()
            self._tool("tpm2_pcrextend", f"{index}:sha256={digest}")
        for text in self.measure:
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            self._tool("tpm2_pcrextend", f"{self.measure_pcr}:sha256={digest}")

    def close(self) -> None:
        """Stop swtpm and delete its state (idempotent); waits for a quote in progress."""
        with self._lock:
            self._process = None
            self._finalizer()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed"
        return f"SwtpmAttestation({self.pcr_selection!r}, scheme={self.scheme!r}, {state})"

    # -- quotes ---------------------------------------------------------------------------

    def __call__(self, payload_id: str) -> dict[str, Any]:
        """A fresh quote whose qualifying data is ``SHA-256(payload_id)[:16]``.

        Raises:
            RuntimeError: the provider is closed or tpm2_quote failed.
        """
        qualifying = hashlib.sha256(payload_id.encode("utf-8")).digest()[:16]
        with self._lock:
            if not self.running:
                raise RuntimeError("SwtpmAttestation is closed")
            args = ["tpm2_quote", "-c", "ak.ctx", "-l", self.pcr_selection]
            args += ["-q", qualifying.hex(), "-g", "sha256", "-f", "tss"]
            args += ["-m", "quote.attest", "-s", "quote.sig", "-o", "quote.pcrs"]
            if self.scheme == "rsapss":  # tpm2_quote does not take the scheme from the key
                args += ["--scheme", "rsapss"]
            try:
                stdout = self._tool(*args)
            finally:
                self._flush()
            attest = (self._dir / "quote.attest").read_bytes()
            signature = (self._dir / "quote.sig").read_bytes()
            self.quotes += 1
        return {
            "is_available": True,
            "pcr_banks": self.pcr_selection,
            "pcr_values": _quoted_pcrs(stdout.decode("utf-8", errors="replace")),
            "quote_b64": _b64(attest),
            "signature_b64": _b64(signature),
            "aik_pubkey_b64": _b64(self._aik_public),
        }

    def pcr_values(self) -> dict[str, dict[str, str]]:
        """The current values of the quoted PCRs, ``{bank: {index: hex}}`` (from a quote)."""
        return dict(self("nomyo-swtpm-pcr-read")["pcr_values"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _free_port_pair() -> int:
    """A loopback port ``p`` with ``p + 1`` free as well (both checked by binding)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free pair of loopback ports for swtpm")


def _quoted_pcrs(yaml: str) -> dict[str, dict[str, str]]:
    """The ``pcrs:`` section of tpm2_quote's output: ``{bank: {"index": lower-case hex}}``."""
    out: dict[str, dict[str, str]] = {}
    bank: str | None = None
    inside = False
    for line in yaml.splitlines():
        if line.startswith("pcrs:"):
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break
        match = re.match(r"^  (\w+):\s*$", line)
        if match:
            bank = match.group(1)
            out[bank] = {}
            continue
        match = re.match(r"^\s+(\d+)\s*:\s*0x([0-9A-Fa-f]+)", line)
        if match and bank is not None:
            out[bank][str(int(match.group(1)))] = match.group(2).lower()
    if not out:
        raise RuntimeError("tpm2_quote printed no PCR values")
    return out


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def _cleanup(directory: Path, processes: list[subprocess.Popen[bytes] | None]) -> None:
    for process in processes:
        if process is not None:
            _stop(process)
    shutil.rmtree(directory, ignore_errors=True)
