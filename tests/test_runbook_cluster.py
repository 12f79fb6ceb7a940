"""Runbook scenario 6, executed: the PostgreSQL cluster is lost and comes back whole from pgBackRest
(`pitr restore-cluster`), on a cluster of this module's own (tests/pitr_world.py: initdb on /dev/shm,
real WAL archiving, a full base backup, then rows t1..t3 per tenant). Never the shared cluster."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .conftest import run_cli
from .pitr_world import PG_BIN, as_postgres, pitr_world_fixture

__all__ = ["pitr_world_fixture"]  # the module-scoped `pitr_world` fixture (this module's own cluster)


def _rows(tid: str, upto: int) -> list[str]:
    return [f"{i}:{tid}-t{i}" for i in range(1, upto + 1)]


def _switch_and_see_in_repository(world, timeout: float = 60) -> str:
    """pg_switch_wal, then poll the pgBackRest repository's folder (not the server's own view) for it."""
    segment = world.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
    archive = world.base / "pgbackrest" / "archive" / world.env["KRYONIX_PITR_STANZA"]
    deadline = time.monotonic() + timeout
    while not list(archive.glob(f"*/{segment[:16]}/{segment}-*")):
        assert time.monotonic() < deadline, f"WAL segment {segment} never reached the repository"
        time.sleep(0.2)
    return segment


def _utc_iso(server_timestamp: str) -> str:
    return datetime.fromisoformat(server_timestamp).astimezone(timezone.utc).isoformat()


def _lose_the_cluster(world) -> None:
    """A crash (immediate stop), then the data directory is gone."""
    with tempfile.TemporaryFile() as out:
        subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(world.data_dir), "-m", "immediate", "-w",
                                   "stop"), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=True)
    shutil.rmtree(world.data_dir)


def test_refusals_touch_nothing(pitr_world):
    world = pitr_world
    before = sorted(p.name for p in world.data_dir.iterdir())
    live = world.cli("pitr", "restore-cluster", "--yes")
    assert live.returncode == 2, live.stderr
    assert "running" in live.stderr or "answers" in live.stderr
    remote = run_cli("pitr", "restore-cluster", "--yes", env={
        **world.env, "KRYONIX_PG_DSN": "postgresql://postgres@db.example.invalid:5432/postgres"})
    assert remote.returncode == 2 and "not on this machine" in remote.stderr
    assert len(live.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in world.data_dir.iterdir()) == before
    assert not list(world.base.glob("data.lost-*"))
    assert world.psql("postgres", "SELECT 1") == "1"


def test_cluster_lost_restore_cluster_then_archiving_and_tenant_pitr(pitr_world):
    world = pitr_world
    a, b = world.tenants["self"], world.tenants["witness"]
    assert world.rows(a) == _rows(a, 3) and world.rows(b) == _rows(b, 3)  # t1..t3: after the base backup
    _switch_and_see_in_repository(world)  # what the archive holds is what can come back
    _lose_the_cluster(world)

    refused = world.cli("pitr", "restore-cluster")  # stdin is not a terminal and no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert not world.data_dir.exists()

    result = world.cli("pitr", "restore-cluster", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["success"] is True and doc["target"] is None and doc["archive_checked"] is True
    assert doc["timeline"] >= 2 and doc["moved_aside"] is None and doc["delta"] is False
    assert Path(doc["data_dir"]) == world.data_dir
    assert world.rows(a) == _rows(a, 3) and world.rows(b) == _rows(b, 3)
    assert world.psql("postgres", "SELECT pg_is_in_recovery()") == "f"
    status = world.cli("pitr", "status", "--json")  # the runbook's next command
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["archiving"]["healthy"] is True

    # archiving works on the new timeline: a new row, its segment in the repository
    world.psql(f"kryonix_cliente_{a}", f"INSERT INTO app.orders VALUES (4, '{a}-t4')")
    segment = _switch_and_see_in_repository(world)
    assert int(segment[:8], 16) == doc["timeline"]

    # and a tenant's point-in-time restore still works after it, across the timeline switch
    moment = world.psql("postgres", "SELECT clock_timestamp()")
    deadline = time.monotonic() + 5
    while world.psql("postgres", f"SELECT clock_timestamp() > '{moment}'::timestamptz") != "t":
        assert time.monotonic() < deadline
    world.psql(f"kryonix_cliente_{a}", f"INSERT INTO app.orders VALUES (5, '{a}-t5')")
    world.psql(f"kryonix_cliente_{b}", f"INSERT INTO app.orders VALUES (5, '{b}-t5')")
    at = world.psql("postgres", f"SELECT to_char('{moment}'::timestamptz AT TIME ZONE 'UTC', "
                                "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    restored = world.cli("restore", a, "--at", at, "--yes", "--json")
    assert restored.returncode == 0, restored.stderr
    assert world.rows(a) == _rows(a, 4)
    assert world.rows(b) == _rows(b, 3) + [f"5:{b}-t5"]


def test_at_a_moment_and_a_left_over_data_directory_is_moved_aside(pitr_world):
    """`--at` recovers the whole cluster to that moment; a data directory that is there but unusable
    (a stale postmaster.pid, garbage) is kept aside, never deleted."""
    world = pitr_world
    b = world.tenants["witness"]
    before = world.rows(b)
    moment = world.psql("postgres", "SELECT clock_timestamp()")
    deadline = time.monotonic() + 5
    while world.psql("postgres", f"SELECT clock_timestamp() > '{moment}'::timestamptz") != "t":
        assert time.monotonic() < deadline
    world.psql(f"kryonix_cliente_{b}", f"INSERT INTO app.orders VALUES (9, '{b}-late')")
    _switch_and_see_in_repository(world)  # the late row is in the archive: --at must leave it out
    _lose_the_cluster(world)
    world.data_dir.mkdir()
    (world.data_dir / "postmaster.pid").write_text("999999\n")  # a dead pid: nothing runs there
    (world.data_dir / "evidence").write_text("keep me")
    shutil.chown(world.data_dir, "postgres", "postgres")
    at = _utc_iso(moment)
    result = world.cli("pitr", "restore-cluster", "--at", at, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["moved_aside"] and (Path(doc["moved_aside"]) / "evidence").read_text() == "keep me"
    assert doc["target"] and doc["archive_checked"] is True
    assert world.rows(b) == before
    shutil.rmtree(doc["moved_aside"])
