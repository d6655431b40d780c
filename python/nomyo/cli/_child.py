"""``nomyo run -- CMD ARGS...``: a child program whose OpenAI SDK talks to a private proxy.

The proxy (started by the CLI on a free loopback port, with a fresh random token) is the
only OpenAI and Anthropic endpoint the child sees: ``OPENAI_BASE_URL``, ``OPENAI_API_BASE``
and ``ANTHROPIC_BASE_URL`` point at it and ``OPENAI_API_KEY``/``ANTHROPIC_API_KEY`` are its
token, so no other local user can use it. Signals sent to
``nomyo run`` reach the child; ``nomyo run`` exits with the child's status (128 + N when a
signal N ended it).

The child's environment is ours minus the router's secrets and address
(:data:`WITHHELD_VARIABLES`, unless passed on purpose with ``--pass-env``): the wrapped
program reaches the router only through the proxy. The child cannot outlive ``nomyo run``
(``_tether``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence

from ._support import CLIError
from ._tether import SUPPORTED, become_subreaper, end_descendants, launch_argv, reap_orphans

__all__ = [
    "CHILD_VARIABLES",
    "WITHHELD_VARIABLES",
    "child_environment",
    "new_token",
    "run_with_proxy",
]

#: What the child's environment gets: the OpenAI SDKs' base URL (new and legacy names) and key,
#: and the Anthropic SDK's.
CHILD_VARIABLES = (
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
)
#: Signals passed on to the child.
_FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
    if hasattr(signal, name)
)
_EXIT_NOT_EXECUTABLE = 126
_EXIT_NOT_FOUND = 127
#: What nomyo reads that holds the router's secrets or address: never handed to the child
#: (the API key, the key password, the proxy token, the router's URL).
WITHHELD_VARIABLES = ("NOMYO_API_KEY", "NOMYO_KEY_PASSWORD", "NOMYO_PROXY_TOKEN", "NOMYO_BASE_URL")
#: Seconds between two reaps of orphans re-parented to ``nomyo run``.
_REAP_EVERY = 2.0


def child_environment(
    parent: Mapping[str, str] | None = None, pass_env: Iterable[str] = ()
) -> dict[str, str]:
    """The child's base environment: ``parent`` (default ours) minus
    :data:`WITHHELD_VARIABLES`, except the names in ``pass_env``."""
    source = os.environ if parent is None else parent
    passed = set(pass_env)
    return {k: v for k, v in source.items() if k not in WITHHELD_VARIABLES or k in passed}


def _resolve(program: str) -> str:
    """The file ``program`` names (as ``execvp`` would find it).

    Raises:
        CLIError: not found (127) or not executable (126).
    """
    if os.sep in program or (os.altsep and os.altsep in program):
        if not os.path.exists(program):
            raise CLIError(f"nomyo run: command not found: {program}", _EXIT_NOT_FOUND)
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise CLIError(f"nomyo run: command not executable: {program}", _EXIT_NOT_EXECUTABLE)
        return program
    found = shutil.which(program)
    if found is None:
        if shutil.which(program, mode=os.F_OK) is not None:
            raise CLIError(f"nomyo run: command not executable: {program}", _EXIT_NOT_EXECUTABLE)
        raise CLIError(f"nomyo run: command not found: {program}", _EXIT_NOT_FOUND)
    return found


def new_token() -> str:
    """A fresh proxy token (256 random bits)."""
    return "nomyo-run-" + secrets.token_urlsafe(32)


def _terminal_delivers_to_child() -> bool:
    """True when our process group is a terminal's foreground group.

    Then Ctrl-C (SIGINT) and Ctrl-\\ (SIGQUIT) from that terminal reach the child, which
    shares the group, directly; passing them on again would deliver them twice.
    """
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            if stream is not None and os.isatty(stream.fileno()):
                return os.tcgetpgrp(stream.fileno()) == os.getpgrp()
    return False


async def run_with_proxy(
    command: Sequence[str],
    base_url: str,
    token: str,
    extra_env: Mapping[str, str] | None = None,
    *,
    pass_env: Iterable[str] = (),
) -> int:
    """Run ``command`` with the proxy's variables (and ``extra_env``: the egress guard's);
    returns its exit status.

    Raises:
        CLIError: the command cannot be started (exit code 127 not found, 126 not executable).
    """
    env = child_environment(pass_env=pass_env)
    env.update({"OPENAI_BASE_URL": base_url, "OPENAI_API_BASE": base_url, "OPENAI_API_KEY": token})
    # Anthropic's SDK appends /v1/messages itself.
    env.update({"ANTHROPIC_BASE_URL": base_url.removesuffix("/v1"), "ANTHROPIC_API_KEY": token})
    env.update(extra_env or {})
    argv = launch_argv(_resolve(command[0]), command)
    become_subreaper()
    try:
        child = await asyncio.create_subprocess_exec(*argv, env=env)
    except FileNotFoundError:
        raise CLIError(f"nomyo run: command not found: {command[0]}", _EXIT_NOT_FOUND) from None
    except PermissionError:
        raise CLIError(
            f"nomyo run: command not executable: {command[0]}", _EXIT_NOT_EXECUTABLE
        ) from None
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def forward(sig: signal.Signals) -> None:
        from_terminal = sig in (signal.SIGINT, signal.SIGQUIT) and _terminal_delivers_to_child()
        if child.returncode is None and not from_terminal:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    for sig in _FORWARDED:
        try:
            loop.add_signal_handler(sig, forward, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
            continue
        installed.append(sig)
    try:
        code = await _wait_reaping(child)
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if child.returncode is None:  # cancelled while the child runs: do not leave it
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
        # Whatever the child started and left behind goes with it.
        await asyncio.to_thread(end_descendants)
    return code if code >= 0 else 128 - code


async def _wait_reaping(child: asyncio.subprocess.Process) -> int:
    """The child's status; meanwhile reap the orphans re-parented to us (no zombies pile up)."""
    if not SUPPORTED:
        return await child.wait()
    waiting = asyncio.ensure_future(child.wait())
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=_REAP_EVERY)
            if done:
                return waiting.result()
            reap_orphans(keep=child.pid)
    finally:
        waiting.cancel()
