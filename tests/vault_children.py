"""Child processes for tests/test_key_vault.py: each runs one real engine path of the key vault
in a process of its own, so a test can overlap it with others or kill it with SIGKILL.

    python -m tests.vault_children rotate-master NEW_KEY_FILE PAUSE_STEP MARKER GO
        keys rotate-master; at step PAUSE_STEP (rotate_master's `after_each`) it creates MARKER,
        then waits for the file GO to exist before going on (a test kills it there, or lets it go)
    python -m tests.vault_children first-backup TENANT
        a tenant's first backup: its repository and password are created, one snapshot written
    python -m tests.vault_children ledger-key TENANT
        the ledger key `lgpd erase` creates for a tenant's first erasure

Settings come from the KRYONIX_* environment, as for the CLI.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from kryonix_dagster.engine.config import load_settings

PAUSE_DEADLINE_SECONDS = 300


def _pause_at(step: str, marker: Path, go: Path):
    def after_each(current: str) -> None:
        if current != step:
            return
        marker.write_text(current)
        deadline = time.monotonic() + PAUSE_DEADLINE_SECONDS
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"paused at {step}: nobody released or killed this process")
            time.sleep(0.05)
    return after_each


def main(argv: list[str]) -> None:
    settings = load_settings()
    verb = argv[0]
    if verb == "rotate-master":
        from kryonix_dagster.engine.key_rotation import rotate_master
        new_key, step, marker, go = argv[1:5]
        rotate_master(settings, Path(new_key), after_each=_pause_at(step, Path(marker), Path(go)))
    elif verb == "first-backup":
        from kryonix_dagster.engine.tenant_repository import open_repository
        repo = open_repository(settings, argv[1], create=True)
        repo.backup_bytes(b"first backup\n", "first.txt", ["vault-race"])
    elif verb == "ledger-key":
        from kryonix_dagster.engine.lgpd import ledger
        ledger.ledger_key(settings, argv[1], create=True)
    else:
        raise SystemExit(f"unknown verb {verb}")


if __name__ == "__main__":
    main(sys.argv[1:])
