"""Acting as another local user (``nobody``) from tests that run as root, with ``setpriv``."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

__all__ = ["NOBODY", "as_nobody", "can_act_as_nobody", "nobody_runs_this_python"]

NOBODY = 65534


def can_act_as_nobody() -> bool:
    """Root, with ``setpriv`` (util-linux) at hand."""
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("setpriv") is not None


def as_nobody(*command: str) -> list[str]:
    """``command`` run as the user nobody."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


@functools.cache
def nobody_runs_this_python() -> bool:
    """Whether nobody can start this interpreter: not when it lives under a directory only
    root may enter (a pyenv build in /root whose libpython the loader cannot open)."""
    if not can_act_as_nobody():
        return False
    done = subprocess.run(
        as_nobody(sys.executable, "-c", "import nomyo"), capture_output=True, timeout=60
    )
    return done.returncode == 0
