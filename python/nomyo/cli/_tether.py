"""Tie the lifetime of ``nomyo run``'s child (and everything it starts) to ``nomyo run``.

The child talks plaintext to the proxy on a loopback port. If it outlived ``nomyo run`` (a
``kill -9``, an OOM kill, a crash), it would keep sending its prompts and the proxy's token
to the freed port, where any local user may be listening. So, on Linux:

- the child is started through a tiny exec wrapper (``python -I -S -c``, no ``preexec_fn``,
  which is unsafe in a threaded process) that arms ``PR_SET_PDEATHSIG`` = ``SIGKILL`` and
  then checks that ``nomyo run`` is still its parent (it may have died before the signal was
  armed, and then nothing would fire): the kernel kills the child the moment ``nomyo run``
  dies, however it dies;
- ``nomyo run`` is a child subreaper (``PR_SET_CHILD_SUBREAPER``): what the child starts and
  abandons is re-parented to ``nomyo run`` rather than to init, so on every exit path
  ``nomyo run`` controls it terminates all of them (:func:`end_descendants`), and reaps them
  while it runs (:func:`reap_orphans`).

What stays open: descendants of the child still alive when ``nomyo run`` itself is killed with
``SIGKILL`` (only the direct child has the parent-death signal; a grandchild is re-parented to
init), a set-uid program as the child (the kernel clears the parent-death signal on exec),
and every platform but Linux (there the child may outlive ``nomyo run``). In those cases the
proxy's token is the safeguard left: a stranger who binds the freed port sees the requests,
plaintext and the token, which opens nothing once the proxy is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Sequence

__all__ = ["SUPPORTED", "become_subreaper", "end_descendants", "launch_argv", "reap_orphans"]

#: Linux: the parent-death signal and the subreaper are available.
SUPPORTED = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: Exit status of the wrapper when ``nomyo run`` was gone before the child could start.
EXIT_ORPHANED = 137

#: argv: -c PARENT_PID PATH ARGV0 ARGS...; replaced by PATH once the signal is armed.
_WRAPPER = f"""\
import ctypes, os, sys
parent, path, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, 9, 0, 0, 0) != 0:
    sys.stderr.write("nomyo run: cannot set the parent-death signal\\n")
    os._exit(126)
if os.getppid() != parent:
    os._exit({EXIT_ORPHANED})
try:
    os.execv(path, argv)
except OSError as exc:
    sys.stderr.write(f"nomyo run: cannot run {{path}}: {{exc.strerror}}\\n")
    os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
"""


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); True when it is."""
    return SUPPORTED and _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def launch_argv(path: str, command: Sequence[str], parent: int | None = None) -> list[str]:
    """The argv that runs ``command`` (its program resolved to ``path``) tied to this process.

    On Linux, the exec wrapper described above; elsewhere ``command`` itself.
    """
    if not SUPPORTED or not sys.executable:
        return list(command)
    parent = os.getpid() if parent is None else parent
    return [sys.executable, "-I", "-S", "-c", _WRAPPER, str(parent), path, *command]


def _children_of() -> dict[int, list[int]]:
    """Every process's children, from ``/proc/*/stat`` (empty where there is no /proc)."""
    tree: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces and parentheses.
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 1:
                tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def descendants(root: int | None = None) -> list[int]:
    """Every descendant of ``root`` (default: this process), parents before children."""
    tree = _children_of()
    found: list[int] = []
    pending = [os.getpid() if root is None else root]
    while pending:
        for child in tree.get(pending.pop(), ()):
            if child not in found:
                found.append(child)
                pending.append(child)
    return found


def reap_orphans(keep: int) -> None:
    """Reap this process's exited children other than ``keep`` (the child asyncio waits for)."""
    for pid in _children_of().get(os.getpid(), ()):
        if pid != keep:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def end_descendants(keep: int | None = None, *, grace: float = 1.0) -> int:
    """Terminate every descendant but ``keep``: ``SIGTERM``, then ``SIGKILL`` after ``grace``
    seconds for those still alive; reap the ones that are our own children. Returns how many
    were signalled.
    """
    if not SUPPORTED:
        return 0
    targets = [pid for pid in descendants() if pid != keep]
    for pid in targets:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while targets and time.monotonic() < deadline:
        reap_orphans(keep if keep is not None else -1)
        if not any(_alive(pid) for pid in targets):
            break
        time.sleep(0.02)
    for pid in targets:
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    reap_orphans(keep if keep is not None else -1)
    return len(targets)
