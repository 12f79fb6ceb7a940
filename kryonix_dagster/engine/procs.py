"""Child processes that die with their parent.

A session killed with SIGKILL must not leave pg_dump or restic running on as orphans:
children get SIGINT when the process that started them goes away (Linux PR_SET_PDEATHSIG).
SIGINT because restic 0.14 removes its repository lock on SIGINT only.
"""
from __future__ import annotations

import ctypes
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
        except OSError:
            pass


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent, **kwargs)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, preexec_fn=_die_with_parent, **kwargs)
