"""Child processes that die with their parent.

A session killed with SIGKILL must not leave pg_dump or restic running on as orphans:
children get SIGINT when the process that started them goes away (Linux PR_SET_PDEATHSIG).
SIGINT because restic 0.14 removes its repository lock on SIGINT only.

No Python runs in the child: `subprocess`'s `preexec_fn` is unsafe in a process with threads
(sessions run tiers and the lease heartbeat in threads; a lock held by another thread at
fork time deadlocks the child). The death signal is set by util-linux's `setpriv
--pdeathsig INT`, which execs the command. Without `setpriv` the command runs as it is.

PR_SET_PDEATHSIG fires when the *thread* that started the child exits, not only the
process: start children from a thread that outlives them (the tiers wait for their
children in the thread that started them).
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from functools import lru_cache

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _death_signal_prefix() -> tuple[str, ...]:
    if not sys.platform.startswith("linux"):
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv (util-linux) not found: child processes will not die with their parent")
        return ()
    return (setpriv, "--pdeathsig", "INT", "--")


def with_death_signal(cmd: list[str]) -> list[str]:
    return [*_death_signal_prefix(), *cmd]


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(with_death_signal(cmd), **kwargs)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(with_death_signal(cmd), **kwargs)
