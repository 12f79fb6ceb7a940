"""Runbook scenario 6, executed: the PostgreSQL cluster is lost and comes back whole from pgBackRest
(`pitr restore-cluster`), on a cluster of this module's own (tests/pitr_world.py: initdb on /dev/shm,
real WAL archiving, a full base backup, then rows t1..t3 per tenant). Never the shared cluster."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .conftest import run_cli
from kryonix_dagster.engine.pitr.cluster_record import postmaster_options

from .pitr_world import CLUSTER_NAME, ERASED_EMAIL, PG_BIN, as_postgres, pitr_world_fixture

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


def _config(world) -> Path:
    return world.base / "pitr-work" / f"pgbackrest-{world.env['KRYONIX_PITR_STANZA']}.conf"


def _server_log(world) -> Path:
    return world.base / "pitr-work" / "log" / f"postgresql-{world.env['KRYONIX_PITR_STANZA']}.log"


def _record(world) -> Path:
    return Path(world.env["KRYONIX_STATE_DIR"]) / "pitr-clusters" / f"{world.env['KRYONIX_PITR_STANZA']}.json"


def _lose_the_cluster(world) -> None:
    """A crash (immediate stop), then the data directory is gone."""
    with tempfile.TemporaryFile() as out:
        subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(world.data_dir), "-m", "immediate", "-w",
                                   "stop"), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=True)
    shutil.rmtree(world.data_dir)


def test_postmaster_options_keep_all_but_the_data_directory_and_port():
    opts = ('/usr/lib/postgresql/15/bin/postgres "-D" "/srv/pg data" "-p" "5433" "-c" "cluster_name=a b" '
            '"-k" "/run/pg" "--port=5434" "-p5435" "-D/other"\n')
    assert postmaster_options(opts) == ("-c", "cluster_name=a b", "-k", "/run/pg")
    assert postmaster_options('/usr/lib/postgresql/15/bin/postgres "-D" "/srv/data"') == ()
    assert postmaster_options('postgres "-c" "unterminated') == ()


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

    # where the cluster lives comes from pitr setup's record, and only one the cluster's owner could not write
    record = _record(world)
    assert json.loads(record.read_text())["data_dir"] == str(world.data_dir)
    shutil.chown(record, "postgres")  # as if the cluster's owner had put its own file there
    try:
        forged = world.cli("pitr", "restore-cluster", "--yes")
    finally:
        os.chown(record, os.geteuid(), -1)
    assert forged.returncode == 2 and "not trusted" in forged.stderr and str(record) in forged.stderr
    assert len(forged.stderr.strip().splitlines()) == 1

    # PITR comes from pgBackRest's repository: --at with --from secondary is refused before anything
    a = world.tenants["self"]
    rows = world.rows(a)
    at = world.t_mid.astimezone(timezone.utc).isoformat()
    secondary = world.cli("restore", a, "--at", at, "--from", "secondary", "--yes")
    assert secondary.returncode == 2, secondary.stderr
    assert "pgBackRest" in secondary.stderr and "--from secondary" in secondary.stderr
    assert len(secondary.stderr.strip().splitlines()) == 1
    assert world.rows(a) == rows

    assert sorted(p.name for p in world.data_dir.iterdir()) == before
    assert not list(world.base.glob("data.lost-*"))
    assert not world.scratch_root.exists() or not any(world.scratch_root.iterdir())
    assert world.psql("postgres", "SELECT 1") == "1"


def test_cluster_lost_restore_cluster_then_archiving_and_tenant_pitr(pitr_world):
    world = pitr_world
    a, b = world.tenants["self"], world.tenants["witness"]
    assert world.rows(a) == _rows(a, 3) and world.rows(b) == _rows(b, 3)  # t1..t3: after the base backup
    # the world's cluster runs on a port and a cluster_name given as `pg_ctl -o`, none in postgresql.conf
    conf = (world.data_dir / "postgresql.conf").read_text()
    assert not re.search(r"(?m)^\s*(port|cluster_name)\s*=", conf)
    assert world.psql("postgres", "SHOW port") == str(world.port)
    assert world.psql("postgres", "SHOW cluster_name") == CLUSTER_NAME
    _switch_and_see_in_repository(world)  # what the archive holds is what can come back
    _lose_the_cluster(world)

    refused = world.cli("pitr", "restore-cluster")  # stdin is not a terminal and no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert not world.data_dir.exists()

    # the cluster's owner points the config file's pg1-path at another folder: not obeyed, nothing touched
    config = _config(world)
    original = config.read_text()
    elsewhere = world.base / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "canary").write_text("untouched")
    shutil.chown(elsewhere, "postgres", "postgres")
    config.write_text(original.replace(f"pg1-path={world.data_dir}\n", f"pg1-path={elsewhere}\n"))
    assert f"pg1-path={elsewhere}" in config.read_text()
    try:
        edited = world.cli("pitr", "restore-cluster", "--yes", "--json")
    finally:
        config.write_text(original)
    assert edited.returncode == 2, edited.stderr
    assert f"pg1-path={elsewhere}" in edited.stderr and f"recorded {world.data_dir}" in edited.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["canary"] and not list(world.base.glob("elsewhere.*"))
    assert not world.data_dir.exists()

    result = world.cli("pitr", "restore-cluster", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["success"] is True and doc["target"] is None and doc["archive_checked"] is True
    assert doc["timeline"] >= 2 and doc["moved_aside"] is None and doc["delta"] is False
    assert Path(doc["data_dir"]) == world.data_dir and doc["port"] == world.port and doc["warnings"] == []
    assert world.rows(a) == _rows(a, 3) and world.rows(b) == _rows(b, 3)  # on its own port, not 5432
    assert world.psql("postgres", "SELECT pg_is_in_recovery()") == "f"
    assert world.psql("postgres", "SHOW cluster_name") == CLUSTER_NAME  # its other options too
    # the cluster-wide audit row, in the restored main database
    audit = world.psql(world.env["KRYONIX_MAIN_DB"], "SELECT success, details->>'data_dir', details->>'port' "
                       "FROM tenants.backup_audit WHERE cliente_id = '*' AND operation = 'restore-cluster' "
                       f"AND (details->>'timeline')::int = {doc['timeline']}")
    assert audit == f"t|{world.data_dir}|{world.port}" and doc["audited"] is True
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


def _key_row(world, tid: str) -> str:
    return world.psql(world.env["KRYONIX_MAIN_DB"], "SELECT master_key_id || ':' || encode(nonce, 'hex') || ':' || "
                      f"encode(wrapped_password, 'hex') FROM tenants.backup_keys WHERE cliente_id = '{tid}'")


def _restic_snapshots(world, tid: str, password: str) -> subprocess.CompletedProcess:
    """The restic binary itself on the tenant's repository, with `password`."""
    repo = world.base / "repos" / f"cliente_{tid}"
    assert repo.is_dir(), repo
    return subprocess.run(["restic", "-r", str(repo), "--no-lock", "--json", "snapshots"], capture_output=True,
                          text=True, env={**os.environ, "RESTIC_PASSWORD": password,
                                          "RESTIC_CACHE_DIR": str(world.base / "restic-cache-test")})


def test_at_a_moment_and_a_left_over_data_directory_is_moved_aside(pitr_world, test_env):
    """`--at` recovers the whole cluster to that moment; a target beyond the archive stops the restored
    server, which the command reports at once with the log's FATAL line; a data directory that is
    there but unusable (that stopped restore, a stale postmaster.pid, garbage) is kept aside.

    docs/runbook.md, "cluster restored to an earlier time after erasures": a person erased and a
    repository password rotated after the moment come back erased and rotated: the newest stashes
    are merged into the restored main database and every ledger re-applied to live data.
    (test_env: the erasure looks in object storage too, the run's moto.)"""
    from kryonix_dagster.engine import keys
    from kryonix_dagster.engine.tenant_repository import open_repository

    world = pitr_world
    b, e = world.tenants["witness"], world.tenants["erased"]
    before = world.rows(b)
    contacts = "SELECT id || ':' || email FROM crm.contatos ORDER BY id"
    open_repository(world.settings, e, create=True)  # its first backup: key row and stash
    old_row = _key_row(world, e)
    old_password = keys.repository_password(world.settings, e)
    assert old_row and _restic_snapshots(world, e, old_password).returncode == 0
    moment = world.psql("postgres", "SELECT clock_timestamp()")
    deadline = time.monotonic() + 5
    while world.psql("postgres", f"SELECT clock_timestamp() > '{moment}'::timestamptz") != "t":
        assert time.monotonic() < deadline
    world.psql(f"kryonix_cliente_{b}", f"INSERT INTO app.orders VALUES (9, '{b}-late')")
    # after the moment: an erasure and a key rotation, both committed in the main database
    erase = world.cli("lgpd", "erase", e, "--subject", f"email={ERASED_EMAIL}", "--yes", "--json")
    assert erase.returncode == 0, erase.stderr
    assert ERASED_EMAIL not in world.psql(f"kryonix_cliente_{e}", contacts)
    rotated = world.cli("keys", "rotate", e, "--json")
    assert rotated.returncode == 0, rotated.stderr
    new_row = _key_row(world, e)
    new_password = keys.repository_password(world.settings, e)
    assert new_row != old_row and _restic_snapshots(world, e, new_password).returncode == 0
    assert _restic_snapshots(world, e, old_password).returncode != 0  # the old key file is gone
    _switch_and_see_in_repository(world)  # the late row is in the archive: --at must leave it out
    beyond = world.psql("postgres", "SELECT clock_timestamp()")  # after every commit the archive holds
    _lose_the_cluster(world)

    # a target the archive does not reach: the restored server stops with FATAL, the command at once
    log = _server_log(world)
    offset = log.stat().st_size if log.exists() else 0
    died = world.cli("pitr", "restore-cluster", "--at", _utc_iso(beyond), "--yes", "--json")
    assert died.returncode == 1, died.stderr
    with open(log, "rb") as handle:
        handle.seek(offset)
        fatal = [line for line in handle.read().decode().splitlines() if "FATAL:" in line]
    assert fatal and "recovery ended before configured recovery target was reached" in fatal[0]
    assert fatal[0].strip() in died.stderr and str(log) in died.stderr
    assert len(died.stderr.strip().splitlines()) == 1
    error = json.loads(died.stdout)
    assert error["ok"] is False and error["exit_code"] == 1 and fatal[0].strip() in error["error"]
    assert (world.data_dir / "PG_VERSION").is_file() and not (world.data_dir / "postmaster.pid").exists()

    # what that left (a stopped restore, a stale postmaster.pid, evidence) is moved aside by the next run
    (world.data_dir / "postmaster.pid").write_text("999999\n")  # a dead pid: nothing runs there
    (world.data_dir / "evidence").write_text("keep me")
    at = _utc_iso(moment)
    result = world.cli("pitr", "restore-cluster", "--at", at, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["moved_aside"] and (Path(doc["moved_aside"]) / "evidence").read_text() == "keep me"
    assert doc["target"] and doc["archive_checked"] is True
    assert world.rows(b) == before
    shutil.rmtree(doc["moved_aside"])

    # the person is erased again and the rotated key row is back (psql, restic), and the command says so
    assert world.psql(f"kryonix_cliente_{e}", contacts).splitlines() == [
        "7:anonimizado@exemplo.com", "8:contato8@exemplo.com.br"]
    assert _key_row(world, e) == new_row
    assert _restic_snapshots(world, e, keys.repository_password(world.settings, e)).returncode == 0
    merged = doc["merged"]
    assert merged["keys_replaced"] == [e] and merged["problems"] == []
    assert merged["ledger_entries"] == {e: 1} and merged["reerased"][e]["subjects_reerased"] == 1
    assert world.psql(world.env["KRYONIX_MAIN_DB"], "SELECT count(*) FROM tenants.lgpd_ledger "
                      f"WHERE cliente_id = '{e}'") == "1"
    audit = world.psql(world.env["KRYONIX_MAIN_DB"], "SELECT details->'merged'->>'keys_replaced', "
                       "details->'merged'->'reerased'->" f"'{e}'->>'subjects_reerased' FROM tenants.backup_audit "
                       "WHERE cliente_id = '*' AND operation = 'restore-cluster' AND success "
                       f"AND details->>'target' = '{doc['target']}'")
    assert audit == f'["{e}"]|1'
    assert ERASED_EMAIL not in result.stdout + result.stderr
