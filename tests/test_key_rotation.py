"""Master-key rotation on the key vault alone (no repository needed): killed mid-way it leaves
every tenant readable, run again it finishes; a wrong key file is bad input."""
from __future__ import annotations

import base64
import json
import secrets
from types import SimpleNamespace

import pytest

from kryonix_dagster.engine import keys, registry
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.repository import restic_location
from kryonix_dagster.engine.tenant_repository import open_repository
from kryonix_dagster.engine.errors import BadInput, OperationFailed
from kryonix_dagster.engine import pg
from kryonix_dagster.engine.key_rotation import rotate_master, rotate_tenant
from kryonix_dagster.engine.lgpd import ledger
from kryonix_dagster.engine.pitr.config import repository_passphrase

from . import faults, observe
from .conftest import run_cli
from .offsite_world import new_master_key_file
from .recovery_checks import RowHold, kill9_running, poll, restic_at


@pytest.fixture
def vault(own_registry, tmp_path):
    own = own_registry.with_overrides(master_key_file=tmp_path / "keys" / "master.key",
                                      repo=f"file://{tmp_path / 'repos'}", repo_secondary=None,
                                      repo_secondary_admin=None)
    tenants = [f"k{secrets.token_hex(3)}{n}" for n in range(3)]
    passwords = {tid: keys.repository_password(own, tid, create=True) for tid in tenants}
    return own, passwords


def vault_env(own) -> dict[str, str]:
    """What a `kryonix-backup` child needs to see the test's own vault, and nothing else."""
    return {"KRYONIX_MAIN_DB": own.main_db, "KRYONIX_MASTER_KEY_FILE": str(own.master_key_file),
            "KRYONIX_REPO": own.repo, "KRYONIX_REPO_SECONDARY": "", "KRYONIX_REPO_SECONDARY_ADMIN": ""}


def kill_while_blocked_on(own, table: str, tenant_id: str, done: str, *args: str) -> None:
    """Start the CLI with the tenant's row of `table` locked by the test: the child re-wraps the
    rows before it and then waits on that one; once it waits there and `done` (psql) says the
    earlier row is re-wrapped, SIGKILL it (checked to be running), end the statement it was
    waiting in, as the kill would have before that statement ran, and let the row go."""
    hold = RowHold(own.main_db, f"SELECT cliente_id FROM tenants.{table} WHERE cliente_id = %s FOR UPDATE",
                   (tenant_id,))
    try:
        proc = faults.start_cli(*args, env=vault_env(own))
        waiting = poll(lambda: hold.waiters() if observe.psql(own.main_db, done) == "1" else None, proc,
                       f"the child waiting on {table} of {tenant_id} with the earlier row re-wrapped")
        kill9_running(proc)
        hold.end_backends(waiting)
    finally:
        hold.release()


def test_a_rotation_killed_mid_way_leaves_every_tenant_readable_and_resumes(vault, tmp_path):
    own, passwords = vault
    old_key = own.master_key_file.read_text()
    new_key = new_master_key_file(tmp_path / "new.key")
    first, second = observe.psql(own.main_db, "SELECT cliente_id FROM tenants.backup_keys ORDER BY 1").split()[:2]
    passphrase = repository_passphrase(own, "rotstanza", create=True)  # pgBackRest's, wrapped alike
    ledger_keys = {tid: ledger.ledger_key(own, tid, create=True) for tid in passwords}  # LGPD ledgers' too
    old_id = keys.fingerprint(keys.master_key(own))
    new_id = keys.fingerprint(keys.read_key_file(new_key))

    # killed (SIGKILL) with the first tenant's password re-wrapped and the second's next
    kill_while_blocked_on(own, "backup_keys", second,
                          f"SELECT count(*) FROM tenants.backup_keys WHERE cliente_id = '{first}' "
                          f"AND master_key_id = '{new_id}'",
                          "keys", "rotate-master", "--new-key-file", str(new_key))
    wrapped_by = dict(line.split("|") for line in observe.psql(
        own.main_db, "SELECT cliente_id, master_key_id FROM tenants.backup_keys").splitlines())
    assert wrapped_by == {tid: new_id if tid == first else old_id for tid in passwords}  # mixed
    assert own.master_key_file.read_text() == old_key and keys.pending_key_file(own).exists()
    assert {tid: keys.repository_password(own, tid) for tid in passwords} == passwords
    assert repository_passphrase(own, "rotstanza") == passphrase
    other = new_master_key_file(tmp_path / "other.key")
    with pytest.raises(BadInput, match="under way"):
        rotate_master(own, other)  # a second, different rotation is refused until this one ends

    # killed again, now among the ledger keys: the first tenant's re-wrapped, the second's next
    kill_while_blocked_on(own, "lgpd_ledger_keys", second,
                          f"SELECT count(*) FROM tenants.lgpd_ledger_keys WHERE cliente_id = '{first}' "
                          f"AND master_key_id = '{new_id}'",
                          "keys", "rotate-master", "--new-key-file", str(new_key))
    ledger_by = {tid: ledger.wrapped_ledger_key(own, tid).master_key_id for tid in passwords}
    assert ledger_by == {tid: new_id if tid == first else old_id for tid in passwords}  # mixed
    assert {w.master_key_id for w in keys.wrapped_keys(own)} == {new_id}  # every password done before
    assert {tid: ledger.ledger_key(own, tid) for tid in passwords} == ledger_keys  # every one readable mid-way
    assert {tid: keys.repository_password(own, tid) for tid in passwords} == passwords
    assert own.master_key_file.read_text() == old_key
    rerun = run_cli("keys", "rotate-master", "--new-key-file", str(new_key), "--json", env=vault_env(own))
    assert rerun.returncode == 0, rerun.stderr
    done = SimpleNamespace(**json.loads(rerun.stdout))
    assert sorted(done.ledger_keys) == sorted(set(passwords) - {first})  # resumed where it stopped
    assert {ledger.wrapped_ledger_key(own, tid).master_key_id for tid in passwords} == {done.new_key_id}
    assert {tid: ledger.ledger_key(own, tid) for tid in passwords} == ledger_keys
    assert sorted(done.rewrapped + done.already) == sorted(passwords)
    assert own.master_key_file.read_text() == new_key.read_text()
    assert not keys.pending_key_file(own).exists()
    assert {w.master_key_id for w in keys.wrapped_keys(own)} == {done.new_key_id}
    assert {tid: keys.repository_password(own, tid) for tid in passwords} == passwords
    assert (own.master_key_file.stat().st_mode & 0o777) == 0o600
    assert done.pitr_stanzas == ["rotstanza"] and repository_passphrase(own, "rotstanza") == passphrase
    with pg.connection(own.pg_dsn, own.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT master_key_id FROM tenants.pitr_keys")
        assert cur.fetchall() == [(done.new_key_id,)]
    own.master_key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    with pytest.raises(OperationFailed):  # the ledger keys are really under the new key only
        ledger.ledger_key(own, first)


def test_a_malformed_new_key_file_is_bad_input_and_changes_nothing(vault, tmp_path):
    own, passwords = vault
    before = own.master_key_file.read_text()
    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(b"x" * 16).decode())
    for path in (short, tmp_path / "missing.key"):
        with pytest.raises(BadInput):
            rotate_master(own, path)
    assert own.master_key_file.read_text() == before and not keys.pending_key_file(own).exists()


def test_rotating_passwords_needs_the_copys_admin_path_when_a_copy_exists(vault):
    own, passwords = vault
    worker = own.with_overrides(repo_secondary="rest:http://127.0.0.1:9/", repo_secondary_admin=None)
    tenant_id = next(iter(passwords))
    with pytest.raises(BadInput, match="KRYONIX_REPO_SECONDARY_ADMIN"):
        rotate_tenant(worker, tenant_id)
    assert keys.repository_password(own, tenant_id) == passwords[tenant_id]  # nothing changed



@pytest.fixture
def repository(own_registry, tmp_path):
    """A registered tenant of the test's own vault with a real primary repository holding one file."""
    own = own_registry.with_overrides(master_key_file=tmp_path / "keys" / "master.key",
                                      repo=f"file://{tmp_path / 'repos'}", repo_secondary=None,
                                      repo_secondary_admin=None)
    tid = f"k{secrets.token_hex(4)}"
    registry.add_tenant(own, tid, "Rotacao", "basic")
    open_repository(own, tid, create=True)
    location = restic_location(names_for(own, tid).repository)
    content = secrets.token_hex(256)
    saved = restic_at(location, keys.repository_password(own, tid), "backup", "--stdin", "--stdin-filename",
                      "probe.txt", stdin=content)
    assert saved.returncode == 0, saved.stderr
    return own, tid, location, content


def opens(location: str, password: str, content: str) -> bool:
    """restic itself opens the repository with `password` and reads the file back."""
    dumped = restic_at(location, password, "dump", "--no-lock", "latest", "/probe.txt")
    return dumped.returncode == 0 and dumped.stdout == content


def key_count(location: str, password: str) -> int:
    listed = restic_at(location, password, "key", "list", "--json", "--no-lock")
    assert listed.returncode == 0, listed.stderr
    return len(json.loads(listed.stdout))


def wrapped_digest(own, tid: str) -> str:
    return observe.psql(own.main_db, f"SELECT md5(wrapped_password) FROM tenants.backup_keys WHERE cliente_id = '{tid}'")


def test_a_password_rotation_killed_between_its_steps_keeps_the_repository_open_and_resumes(repository):
    """`keys rotate` SIGKILLed after the new key was added (vault not yet updated), then after the
    vault was updated (old keys not yet removed): each time restic opens the repository with the
    vault's password, and a rerun (which takes over the dead child's lease) finishes with one key left."""
    own, tid, location, content = repository
    env = vault_env(own)
    first_password = keys.repository_password(own, tid)
    assert key_count(location, first_password) == 1

    # 1. new key added, vault not updated: the vault's row is held, the child waits on it
    vault_row = RowHold(own.main_db, "SELECT cliente_id FROM tenants.backup_keys WHERE cliente_id = %s FOR UPDATE",
                        (tid,))
    try:
        proc = faults.start_cli("keys", "rotate", tid, env=env)
        waiting = poll(lambda: vault_row.waiters() if key_count(location, first_password) == 2 else None, proc,
                       "the new key added and the child waiting to update the vault")
        kill9_running(proc)
        vault_row.end_backends(waiting)
    finally:
        vault_row.release()
    assert keys.repository_password(own, tid) == first_password  # the vault kept the old password ...
    assert opens(location, first_password, content)  # ... which opens the repository
    assert key_count(location, first_password) == 2  # beside the killed run's key, whose password is lost

    # 2. vault updated, old keys not removed: the child is let through the vault's row and held
    # on the registry table, which it reads (the key stash) before it removes the old keys
    before = wrapped_digest(own, tid)
    vault_row = RowHold(own.main_db, "SELECT cliente_id FROM tenants.backup_keys WHERE cliente_id = %s FOR UPDATE",
                        (tid,))
    registry_table = None
    try:
        proc = faults.start_cli("keys", "rotate", tid, env=env)
        poll(vault_row.waiters, proc, "the child waiting to update the vault")
        registry_table = RowHold(own.main_db, "LOCK TABLE tenants.clientes IN ACCESS EXCLUSIVE MODE; SELECT 1", ())
        vault_row.release()
        waiting = poll(lambda: registry_table.waiters() if wrapped_digest(own, tid) != before else None, proc,
                       "the vault updated and the child waiting before it removes the old keys")
        kill9_running(proc)
        registry_table.end_backends(waiting)
    finally:
        vault_row.release()
        if registry_table is not None:
            registry_table.release()
    second_password = keys.repository_password(own, tid)
    assert second_password != first_password
    assert opens(location, second_password, content)  # the vault's new password opens it
    assert key_count(location, second_password) == 3  # old, the first killed run's, the new

    # 3. the rerun finishes: one key, the vault's; no earlier password opens anything
    rerun = run_cli("keys", "rotate", tid, "--json", env=env)
    assert rerun.returncode == 0, rerun.stderr
    doc = json.loads(rerun.stdout)
    assert doc["failed"] == [] and [(r["tenant_id"], r["removed_keys"]) for r in doc["rotated"]] == [(tid, 3)], doc
    final_password = keys.repository_password(own, tid)
    assert final_password not in (first_password, second_password)
    assert opens(location, final_password, content) and key_count(location, final_password) == 1
    assert not opens(location, first_password, content) and not opens(location, second_password, content)
