"""docs/runbook.md, executed: one test per scenario, the runbook's commands in its order, on
real services, with the off-site copy behind the real append-only endpoint. (Scenario 6, the
PostgreSQL cluster lost, is tests/test_runbook_cluster.py: it needs a cluster of its own.)"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from kryonix_dagster.engine import keys, pg
from kryonix_dagster.engine.naming import repository_in
from kryonix_dagster.engine.repository import restic_location

from . import faults, observe
from .offsite_world import new_master_key_file
from .recovery_checks import assert_restored, kill9_running, lose_everything, poll

RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "runbook.md"

pytest_plugins = ["tests.offsite_world"]  # the world shared with the other off-site module, set up once


@pytest.fixture
def world(dr_world):
    if not hasattr(dr_world, "checksums"):
        dr_world.checksums = observe.table_checksums(f"kryonix_cliente_{dr_world.tenant_id}")
    return dr_world


def damage(world) -> None:
    observe.psql(f"kryonix_cliente_{world.tenant_id}", "UPDATE crm.contatos SET nome = 'ALTERADO'; DROP TABLE financeiro.faturas;")
    assert observe.table_checksums(f"kryonix_cliente_{world.tenant_id}") != world.checksums


def ok(result) -> None:
    assert result.returncode == 0, result.stderr[-2000:]


def primary_dir(world) -> Path:
    return Path(restic_location(repository_in(world.settings.repo, world.tenant_id)))


def test_the_runbook_names_every_scenario():
    text = RUNBOOK.read_text()
    for heading in ("A tenant's data is lost", "primary repository storage is lost", "main database is lost",
                    "master key leaked", "worker was killed mid-session", "PostgreSQL cluster is lost",
                    "One tenant's key row was deleted", "The main database is lost, with PITR configured",
                    "Cluster restored to an earlier time after erasures"):
        assert heading in text


def test_1_a_tenants_data_lost_restore(world):
    session = world.cli_json("snapshots", world.tenant_id)[0]["session"]
    before = lose_everything(world.settings, world.tenant_id)  # tables, buckets, keys, vhost, files
    ok(world.cli("restore", world.tenant_id, "--snapshot", session, "--yes"))
    assert_restored(world.settings, world.tenant_id, before)
    assert observe.table_checksums(f"kryonix_cliente_{world.tenant_id}") == world.checksums
    damage(world)  # the runbook's other form: one module's tables
    ok(world.cli("restore", world.tenant_id, "--snapshot", session, "--services", "postgresql", "--yes"))
    assert observe.table_checksums(f"kryonix_cliente_{world.tenant_id}") == world.checksums


def test_2_primary_storage_lost_restore_from_the_secondary(world):
    """The tenant's data lost in every service and the primary repository gone: a full restore
    from the copy brings back every tier as it was, judged by psql, boto3, redis-py, RabbitMQ's
    API and AMQP, and the files' bytes."""
    settings = world.settings
    secondary = world.cli_json("snapshots", world.tenant_id, "--from", "secondary", env=world.worker_env)
    assert secondary[0]["session"] == world.cli_json("snapshots", world.tenant_id)[0]["session"]  # copied
    before = lose_everything(settings, world.tenant_id)
    lost = primary_dir(world).with_name(primary_dir(world).name + ".lost")
    primary_dir(world).rename(lost)
    try:
        gone = world.cli("snapshots", world.tenant_id)
        assert gone.returncode == 1 and "its repository is missing" in gone.stderr  # the primary is gone
        ok(world.cli("restore", world.tenant_id, "--from", "secondary", "--yes", env=world.worker_env))
        assert_restored(settings, world.tenant_id, before)
        assert observe.table_checksums(f"kryonix_cliente_{world.tenant_id}") == world.checksums
    finally:
        shutil.rmtree(primary_dir(world), ignore_errors=True)
        lost.rename(primary_dir(world))


def test_3_main_database_lost_keys_recover_then_restore(world):
    empty = {"KRYONIX_MAIN_DB": f"{world.settings.main_db}_lost{secrets.token_hex(2)}"}
    try:
        recovered = world.cli_json("keys", "recover", "--from", "secondary", env=empty)
        assert [t["tenant_id"] for t in recovered["recovered"]] == [world.tenant_id]
        listed = world.cli_json("tenants", "list", env=empty)
        assert [(t["id"], t["plano"], t["status"]) for t in listed] == [(world.tenant_id, "basic", "ativo")]
        points = world.cli_json("snapshots", world.tenant_id, env=empty)
        assert len(points) == recovered["recovered"][0]["restore_points"] >= 1
        before = lose_everything(world.settings, world.tenant_id)  # the tenant's data was lost too
        ok(world.cli("restore", world.tenant_id, "--yes", env=empty))
        assert_restored(world.settings, world.tenant_id, before)
        assert observe.table_checksums(f"kryonix_cliente_{world.tenant_id}") == world.checksums
    finally:
        pg.drop_database(world.settings.pg_dsn, empty["KRYONIX_MAIN_DB"])


def opens_with(location: str, password: str) -> bool:
    env = dict(os.environ, RESTIC_REPOSITORY=location, RESTIC_PASSWORD=password)
    return subprocess.run(["restic", "--no-cache", "--no-lock", "cat", "config"], env=env,
                          capture_output=True, timeout=120).returncode == 0


def test_4_master_key_leaked_rotate_master_then_every_password(world, tmp_path):
    leaked_password = keys.repository_password(world.settings, world.tenant_id)
    admin_copy = restic_location(repository_in(world.settings.repo_secondary_admin, world.tenant_id))
    assert opens_with(str(primary_dir(world)), leaked_password) and opens_with(admin_copy, leaked_password)
    new_key = new_master_key_file(tmp_path / "new.key")
    rotated = world.cli_json("keys", "rotate-master", "--new-key-file", str(new_key))
    assert rotated["rewrapped"] == [world.tenant_id]
    assert Path(world.settings.master_key_file).read_text() == new_key.read_text()
    assert not keys.pending_key_file(world.settings).exists()
    passwords = world.cli_json("keys", "rotate", "--all")
    assert passwords["failed"] == [] and passwords["rotated"][0]["repositories"] == ["primary", "secondary-admin"]
    fresh = keys.repository_password(world.settings, world.tenant_id)
    assert fresh != leaked_password
    for location in (str(primary_dir(world)), admin_copy):
        assert not opens_with(location, leaked_password)  # the leaked key's passwords open nothing
        assert opens_with(location, fresh)
    assert len(world.cli_json("snapshots", world.tenant_id, "--from", "secondary", env=world.worker_env)) >= 1
    assert len(world.cli_json("snapshots", world.tenant_id)) >= 1


def lease_live(world) -> bool:
    """The tenant's lease row is unexpired, read with psql from the world's main database."""
    return observe.psql(world.settings.main_db, "SELECT count(*) FROM tenants.backup_leases "
                        f"WHERE cliente_id = '{world.tenant_id}' AND expires_at > now()") == "1"


def test_5_worker_killed_mid_session_next_run_fine(world):
    """About the lease's expiry: the killed worker's lease has a short TTL (10 s, renewed every
    3.3 s while it lives); the test waits for its expiry by polling the lease row."""
    short = {"KRYONIX_LEASE_TTL_SECONDS": "10"}
    before = world.cli_json("snapshots", world.tenant_id)
    snapshots = primary_dir(world) / "snapshots"
    count = len(list(snapshots.iterdir()))
    proc = faults.start_cli("backup", world.tenant_id, env={**world.env, **short})
    # the first tier snapshot of the session
    poll(lambda: len(list(snapshots.iterdir())) > count, proc, "a tier snapshot")
    kill9_running(proc)
    assert world.cli_json("snapshots", world.tenant_id) == before  # no half-visible restore point
    poll(lambda: not lease_live(world), None, "the dead worker's lease expire", timeout=10 + 60)  # TTL + margin
    after = world.cli_json("backup", world.tenant_id)  # the default TTL; nothing to wait for
    assert after["sessions"][0]["success"], after
    points = world.cli_json("snapshots", world.tenant_id)
    assert len(points) == len(before) + 1
    copied = world.cli_json("copy", world.tenant_id)
    assert copied["copies"][0]["copied_sessions"] == [after["sessions"][0]["session"]]
    secondary = world.cli_json("snapshots", world.tenant_id, "--from", "secondary", env=world.worker_env)
    assert [p["session"] for p in secondary] == [p["session"] for p in points]
