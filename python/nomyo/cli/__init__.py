"""The ``nomyo`` command: encrypted chat, a local OpenAI-compatible proxy, a dev router, keys.

One module per command (``chat``, ``proxy``, ``run``, ``serve_dev``, ``keys``, ``doctor``);
``_args`` holds the options they share, ``_support`` exit codes, error wording and helpers.

Exit codes: 0 ok, 1 other failure, 2 usage, 3 server unreachable, 4 refused plain HTTP, a
refused TLS certificate or a failed security check, 5 bad key or wrong password, 6 the server
answered 4xx/5xx, 130 interrupted.
"""

from __future__ import annotations

from ._args import DEFAULT_MODEL
from ._main import build_parser, main

__all__ = ["DEFAULT_MODEL", "build_parser", "main"]
