"""The key vault under concurrency, kills and loss (issue 20, items 1, 2 and 7), on real
services: rotate-master runs in a child process (tests/vault_children.py) that pauses at one of
its steps, while real writers run in other processes or the process is killed with SIGKILL;
afterwards every tenant's repository is opened by the restic binary with the vault's password."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest

from kryonix_dagster.engine import keys, registry
from kryonix_dagster.engine.errors import OperationFailed
from kryonix_dagster.engine.lgpd import ledger, ledger_stash
from kryonix_dagster.engine.naming import VAULT_FOLDER, names_for
from kryonix_dagster.engine.pitr.config import repository_passphrase
from kryonix_dagster.engine.tenant_repository import open_repository

from . import faults
from .conftest import ROOT, run_cli
from .offsite_world import new_master_key_file

STANZA = "vaultstanza"


@dataclass
class Vault:
    settings: object
    env: dict[str, str]
    base: Path
    tenants: list[str] = field(default_factory=list)  # with a repository

    def child(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tests.vault_children", *args], cwd=ROOT,
                                env=dict(os.environ, **self.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def cli(self, *args: str):
        return run_cli(*args, env=self.env)

    def rotation_paused_at(self, new_key: Path, step: str) -> tuple[subprocess.Popen, Path]:
        """rotate-master in a child process, returned once it waits at `step` (create the
        returned file to let it go on)."""
        marker, go = self.base / f"at-{secrets.token_hex(3)}", self.base / f"go-{secrets.token_hex(3)}"
        proc = self.child("rotate-master", str(new_key), step, str(marker), str(go))
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"rotate-master ended before step {step}: {proc.communicate()}")
            assert time.monotonic() < deadline, f"rotate-master never reached step {step}"
            time.sleep(0.05)
        return proc, go

    def opens(self, tenant_id: str) -> bool:
        """The restic binary opens the tenant's repository with the password the vault holds now."""
        password = keys.repository_password(self.settings, tenant_id)
        env = dict(os.environ, RESTIC_REPOSITORY=names_for(self.settings, tenant_id).repository.removeprefix("file://"),
                   RESTIC_PASSWORD=password)
        return subprocess.run(["restic", "--no-cache", "--no-lock", "cat", "config"], env=env,
                              capture_output=True, timeout=120).returncode == 0

    def wrapped_by(self) -> set[str]:
        """Every master key id a secret of the vault is wrapped by (read with psycopg2's own SQL)."""
        with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=self.settings.main_db) as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT master_key_id FROM tenants.backup_keys UNION SELECT master_key_id FROM "
                        "tenants.lgpd_ledger_keys UNION SELECT master_key_id FROM tenants.pitr_keys")
            found = {row[0] for row in cur.fetchall()}
        conn.close()
        return found


@pytest.fixture
def vault(own_registry, tmp_path) -> Vault:
    """Its own main database, master key and primary repositories; two tenants backed up once,
    each with a ledger key, and a PITR passphrase: every kind of wrapped secret."""
    env = {"KRYONIX_MAIN_DB": own_registry.main_db, "KRYONIX_MASTER_KEY_FILE": str(tmp_path / "keys" / "master.key"),
           "KRYONIX_REPO": f"file://{tmp_path / 'repos'}", "KRYONIX_STATE_DIR": str(tmp_path / "state")}
    own = own_registry.with_overrides(master_key_file=Path(env["KRYONIX_MASTER_KEY_FILE"]), repo=env["KRYONIX_REPO"],
                                      state_dir=tmp_path / "state", repo_secondary=None, repo_secondary_admin=None)
    world = Vault(own, env, tmp_path)
    for n in range(2):
        tid = f"v{secrets.token_hex(3)}{n}"
        registry.add_tenant(own, tid, f"Vault {tid}", "pro")
        open_repository(own, tid, create=True).backup_bytes(b"data\n", "data.txt", ["vault"])
        ledger.ledger_key(own, tid, create=True)
        world.tenants.append(tid)
    world.tenants.sort()  # rotate-master re-wraps in id order
    repository_passphrase(own, STANZA, create=True)
    return world


def finished(proc: subprocess.Popen, timeout: float = 300) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]


def test_first_backups_key_rotations_and_ledger_keys_during_rotate_master_lose_nothing(vault, tmp_path):
    """Writers run to completion while rotate-master is paused after its listing (so every write
    overlaps it): first backups of new tenants, `keys rotate` of an existing one, a first ledger key."""
    new_key = new_master_key_file(tmp_path / "new.key")
    old_id, new_id = keys.fingerprint(keys.master_key(vault.settings)), keys.fingerprint(keys.read_key_file(new_key))
    fresh = [f"n{secrets.token_hex(3)}{n}" for n in range(2)]
    erased = f"e{secrets.token_hex(3)}"
    before = keys.repository_password(vault.settings, vault.tenants[1])
    rotation, go = vault.rotation_paused_at(new_key, vault.tenants[0])  # the rows were listed, one re-wrapped
    writers = [vault.child("first-backup", tid) for tid in fresh] + [vault.child("ledger-key", erased)]
    rotate = faults.start_cli("keys", "rotate", vault.tenants[1], "--json", env=vault.env)
    for proc in writers + [rotate]:
        finished(proc)
    assert rotation.poll() is None  # still paused: every write above happened inside the rotation
    go.touch()
    finished(rotation)
    assert keys.fingerprint(keys.master_key(vault.settings)) == new_id and not keys.pending_key_file(vault.settings).exists()
    assert vault.wrapped_by() == {new_id}
    assert keys.repository_password(vault.settings, vault.tenants[1]) != before  # the rotation's new password kept
    for tid in vault.tenants + fresh:
        assert vault.opens(tid), tid
    assert len(ledger.ledger_key(vault.settings, erased)) == 32
    with pytest.raises(psycopg2.Error, match="retired"):  # the database refuses a secret under the old key
        with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=vault.settings.main_db) as conn, \
                conn.cursor() as cur:
            cur.execute("INSERT INTO tenants.lgpd_ledger_keys (cliente_id, master_key_id, nonce, wrapped_key) "
                        "VALUES ('late', %s, '\\x00', '\\x00')", (old_id,))


def test_rotate_master_killed_at_every_step_in_turn_leaves_every_tenant_open_and_resumes(vault, tmp_path):
    """SIGKILL at each step, each run resuming the one killed before it: after every kill the
    key file is still the old one and every repository opens; then the CLI finishes the rotation."""
    new_key = new_master_key_file(tmp_path / "new.key")
    new_id = keys.fingerprint(keys.read_key_file(new_key))
    old_key_text = vault.settings.master_key_file.read_text()
    passphrase = repository_passphrase(vault.settings, STANZA)
    first = vault.tenants[0]
    for step in ("pending", first, f"ledger:{first}", "stashed", "final"):
        rotation, _go = vault.rotation_paused_at(new_key, step)
        assert rotation.poll() is None  # alive right before the kill
        faults.kill9(rotation)
        assert rotation.returncode == -9
        assert vault.settings.master_key_file.read_text() == old_key_text, step  # the key file is replaced last
        assert keys.pending_key_file(vault.settings).exists(), step
        for tid in vault.tenants:
            assert vault.opens(tid), (step, tid)
        assert repository_passphrase(vault.settings, STANZA) == passphrase
    assert vault.wrapped_by() == {new_id}  # killed after the final pass: nothing left under the old key
    resumed = vault.cli("keys", "rotate-master", "--new-key-file", str(new_key), "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert vault.settings.master_key_file.read_text() == new_key.read_text()
    assert not keys.pending_key_file(vault.settings).exists()
    for tid in vault.tenants:
        assert vault.opens(tid), tid
    assert repository_passphrase(vault.settings, STANZA) == passphrase


@contextlib.contextmanager
def immutable(*folders: Path):
    """Folders nobody can add to or remove from, root included (`chattr +i`), for the block."""
    for folder in folders:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield
    finally:
        for folder in reversed(folders):
            subprocess.run(["chattr", "-i", str(folder)], check=True)


def restic_key_files(vault: Vault, tenant_id: str) -> list[str]:
    return sorted(p.name for p in (faults.repository_dir(vault.settings, tenant_id) / "keys").iterdir())


def test_a_stash_that_cannot_be_written_stops_rotations_and_the_ledger_write_before_anything_old_goes(vault, tmp_path):
    stash = tmp_path / "repos" / VAULT_FOLDER
    tid = vault.tenants[0]
    old_password = keys.repository_password(vault.settings, tid)
    old_key_files = restic_key_files(vault, tid)
    old_master = vault.settings.master_key_file.read_text()
    new_key = new_master_key_file(tmp_path / "new.key")
    stashed_before = sorted(p.name for p in (stash / "keys").iterdir())
    with immutable(stash, stash / "keys"):
        rotated = vault.cli("keys", "rotate", tid)
        assert rotated.returncode == 1 and "stash beside the primary repository could not be updated" in rotated.stdout
        assert set(old_key_files) < set(restic_key_files(vault, tid))  # the new key added, the old one kept
        assert vault.opens(tid)  # with the vault's new password
        old_env = dict(os.environ, RESTIC_REPOSITORY=str(faults.repository_dir(vault.settings, tid)),
                       RESTIC_PASSWORD=old_password)
        assert subprocess.run(["restic", "--no-cache", "--no-lock", "cat", "config"], env=old_env,
                              capture_output=True, timeout=120).returncode == 0  # and with the stashed one

        master = vault.cli("keys", "rotate-master", "--new-key-file", str(new_key))
        assert master.returncode == 1 and "could not be updated" in master.stderr, master.stderr[-2000:]
        assert vault.settings.master_key_file.read_text() == old_master  # the key file was not replaced

        ledger.append(vault.settings, tid, "email", "0" * 64, [], {})
        with pytest.raises(OperationFailed, match="erasure ledger could not be stashed beside the primary"):
            ledger_stash.stash_everywhere(vault.settings, tid)  # what `lgpd erase` calls after its ledger row
        assert sorted(p.name for p in (stash / "keys").iterdir()) == stashed_before
    resumed = vault.cli("keys", "rotate-master", "--new-key-file", str(new_key))  # the location is fixed
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert vault.settings.master_key_file.read_text() == new_key.read_text()
    for tenant_id in vault.tenants:
        assert vault.opens(tenant_id)


def rows(vault: Vault, query: str) -> list[tuple]:
    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=vault.settings.main_db) as conn, \
            conn.cursor() as cur:
        cur.execute(query)
        found = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cur.fetchall()]
    conn.close()
    return found


def sql(vault: Vault, statement: str) -> int:
    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=vault.settings.main_db) as conn, \
            conn.cursor() as cur:
        cur.execute(statement)
        count = cur.rowcount
    conn.close()
    return count


def test_keys_recover_fills_exactly_what_is_missing_in_a_live_main_database_and_ignores_forged_records(vault):
    """One tenant's key row deleted, another's registry row and erasure ledger deleted: recover
    fills exactly those and touches nothing else; a forged and an altered ledger record in the
    stash are ignored with a warning (their entries never reach the ledger)."""
    lost_key, lost_rest = vault.tenants
    ledger.append(vault.settings, lost_rest, "email", "a" * 64, ["b" * 64], {})
    ledger_stash.stash_everywhere(vault.settings, lost_rest)
    erased = rows(vault, "SELECT subject_kind, value_hash, key_hashes FROM tenants.lgpd_ledger")
    sql(vault, f"DELETE FROM tenants.lgpd_ledger WHERE cliente_id = '{lost_rest}'")  # the main database rolled back
    ledger.append(vault.settings, lost_rest, "email", "c" * 64, [], {})  # ... then another erasure
    ledger_stash.stash_everywhere(vault.settings, lost_rest)
    erased += rows(vault, "SELECT subject_kind, value_hash, key_hashes FROM tenants.lgpd_ledger")
    folder = vault.base / "repos" / VAULT_FOLDER / "keys"
    authentic = sorted(p for p in folder.iterdir() if p.name.startswith(f"ledger-{lost_rest}-"))
    assert len(authentic) == 2 and len(erased) == 2  # two versions, one entry each: recovery needs their union
    forged_doc = json.loads(authentic[0].read_bytes())
    forged_doc["entries"].append(dict(forged_doc["entries"][0], id=999, value_hash="f" * 64))
    forged_doc["mac"] = "0" * 64  # a forger without the master key
    forged = ledger_stash.LedgerRecord.from_bytes(json.dumps(forged_doc).encode())
    (folder / forged.file_name).write_text(json.dumps(forged_doc))
    altered = json.loads(authentic[0].read_bytes())
    altered["entries"][0]["value_hash"] = "e" * 64  # an authentic record with one field changed, seal kept
    altered_name = ledger_stash.LedgerRecord.from_bytes(json.dumps(altered).encode()).file_name
    (folder / altered_name).write_text(json.dumps(altered))
    untouched = rows(vault, f"SELECT * FROM tenants.backup_keys WHERE cliente_id = '{lost_rest}'")
    for statement in (f"DELETE FROM tenants.backup_keys WHERE cliente_id = '{lost_key}'",
                      f"DELETE FROM tenants.clientes WHERE id = '{lost_rest}'",
                      f"DELETE FROM tenants.lgpd_ledger WHERE cliente_id = '{lost_rest}'",
                      f"DELETE FROM tenants.lgpd_ledger_keys WHERE cliente_id = '{lost_rest}'"):
        assert sql(vault, statement) == 1, statement

    symptom = vault.cli("restic", lost_key, "--", "cat", "config")
    assert symptom.returncode == 2 and "never been backed up" in symptom.stderr  # the vault lost its password
    backup = vault.child("first-backup", lost_key)  # a backup before the recovery must not write a new password
    out, err = backup.communicate(timeout=300)
    assert backup.returncode != 0 and "run `kryonix-backup keys recover`" in err
    assert rows(vault, f"SELECT 1 FROM tenants.backup_keys WHERE cliente_id = '{lost_key}'") == []
    result = vault.cli("keys", "recover", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(result.stdout)
    filled = {t["tenant_id"]: t["filled"] for t in doc["recovered"]}
    assert filled == {lost_key: ["key"], lost_rest: ["registry", "ledger"]}
    assert doc["pitr_passphrases"] == [] and doc["skipped"] == {}
    assert f"{forged.file_name} at the primary location ignored: its seal does not verify" in result.stderr
    assert f"{altered_name} at the primary location ignored: its seal does not verify" in result.stderr
    assert vault.opens(lost_key)
    opened = vault.cli("restic", lost_key, "--", "cat", "config")
    assert opened.returncode == 0 and '"chunker_polynomial"' in opened.stdout, opened.stderr[-2000:]
    assert rows(vault, f"SELECT * FROM tenants.backup_keys WHERE cliente_id = '{lost_rest}'") == untouched
    assert rows(vault, f"SELECT nome, plano, status FROM tenants.clientes WHERE id = '{lost_rest}'") == \
        [(f"Vault {lost_rest}", "pro", "ativo")]
    assert sorted(rows(vault, "SELECT subject_kind, value_hash, key_hashes FROM tenants.lgpd_ledger")) == sorted(erased)
    assert len(ledger.ledger_key(vault.settings, lost_rest)) == 32

    again = vault.cli("keys", "recover")  # nothing missing any more: nothing filled, nothing changed
    assert again.returncode == 0 and "nothing was missing" in again.stdout, again.stderr[-2000:]
