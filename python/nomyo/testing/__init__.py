"""A development NOMYO router: a real HTTP(S) server for tests, demos and ``nomyo serve-dev``.

It speaks the server side of the secure-completion protocol with a deterministic echo
backend (or forwards to an OpenAI-compatible upstream), and can inject faults::

    from nomyo.testing import DevRouter, Fault

    async with DevRouter(key_bits=2048) as router:
        router.faults.push(Fault(status=503, retry_after="1"))
        ...  # talk to router.url

    with DevRouter(key_bits=2048).run_in_thread() as handle:
        ...  # synchronous code talks to handle.url
"""

from __future__ import annotations

from ._backend import echo_completion
from ._certs import DevCertificates, make_test_certificates
from ._faults import Fault, FaultQueue
from ._router import AttestationProvider, DevRouter, RecordedRequest, RouterThread
from ._swtpm import SwtpmAttestation

__all__ = [
    "AttestationProvider",
    "DevCertificates",
    "DevRouter",
    "Fault",
    "FaultQueue",
    "RecordedRequest",
    "RouterThread",
    "SwtpmAttestation",
    "echo_completion",
    "make_test_certificates",
]
