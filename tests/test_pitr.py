"""Point-in-time recovery per tenant (issue 11), against a real cluster of the tests' own, real
pgBackRest and real WAL archiving (tests/pitr_world.py)."""
from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest

from .pitr_world import pitr_world_fixture

__all__ = ["pitr_world_fixture"]  # the module-scoped `pitr_world` fixture


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def _rows(world, tid: str, upto: int) -> list[str]:
    return [f"{i}:{tid}-t{i}" for i in range(1, upto + 1)]


def test_setup_says_restart_then_restarts_and_is_idempotent(pitr_world):
    world = pitr_world
    assert world.setup_without_restart.returncode == 1
    assert "restart" in world.setup_without_restart.stderr
    assert world.setup_with_restart.returncode == 0, world.setup_with_restart.stderr
    again = world.cli("pitr", "setup", "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["restarted"] is False and doc["needs_restart"] == [] and doc["checked"] is True
    assert world.psql("postgres", "SHOW archive_mode") == "on"
    conf = (world.base / "pitr-work" / f"pgbackrest-{world.env['KRYONIX_PITR_STANZA']}.conf")
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    passphrase = [line for line in conf.read_text().splitlines() if line.startswith("repo1-cipher-pass=")]
    assert passphrase and len(passphrase[0]) > 40
    secret = passphrase[0].split("=", 1)[1]
    assert secret not in again.stdout + again.stderr
    # the repository is encrypted: no plaintext backup.info header
    info = next((world.base / "pgbackrest" / "backup").glob("*/backup.info"))
    assert b"[backup:current]" not in info.read_bytes()


def test_status_shows_healthy_archiving_and_the_window(pitr_world):
    result = pitr_world.cli("pitr", "status", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["archiving"]["healthy"] is True, doc["archiving"]
    assert doc["archiving"]["last_archived_wal"]
    assert [b["type"] for b in doc["backups"]] == ["full"]
    earliest = datetime.fromisoformat(doc["window"]["earliest"].replace("Z", "+00:00"))
    latest = datetime.fromisoformat(doc["window"]["latest"].replace("Z", "+00:00"))
    assert earliest <= latest
    assert earliest < pitr_world.t_mid


def test_restore_at_between_t2_and_t3_leaves_the_other_tenant_alone(pitr_world):
    world = pitr_world
    tid, witness = world.tenants["self"], world.tenants["witness"]
    assert world.rows(tid) == _rows(world, tid, 3)
    result = world.cli("restore", tid, "--at", _iso(world.t_mid), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["success"] is True and doc["into"] == tid
    assert doc["other_tiers_from"]["session"] is None  # never backed up by a session
    assert world.rows(tid) == _rows(world, tid, 2)
    assert world.rows(witness) == _rows(world, witness, 3)
    assert not list(world.scratch_root.glob("*"))


def test_restore_at_into_another_tenant(pitr_world):
    world = pitr_world
    source, target = world.tenants["into"], world.tenants["into_target"]
    before = world.rows(target)
    result = world.cli("restore", source, "--at", _iso(world.t_mid), "--into", world.tenants["witness"] + "x",
                       "--yes")
    assert result.returncode == 2 and "not registered" in result.stderr  # an unregistered target is bad input
    assert world.rows(target) == before
    # into a registered tenant: its database gets the source's rows as of t_mid, renamed nowhere else
    result = world.cli("restore", source, "--at", _iso(world.t_mid), "--into", target, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert world.rows(target) == _rows(world, source, 2)
    assert world.rows(source) == _rows(world, source, 3)


def test_bad_timestamps_exit_2(pitr_world):
    world = pitr_world
    tid = world.tenants["witness"]
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    for raw in ("yesterday", "2026-11-29T02:00:00", future):
        result = world.cli("restore", tid, "--at", raw, "--yes")
        assert result.returncode == 2, (raw, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert world.rows(tid) == _rows(world, tid, 3)


def test_before_the_window_is_refused_with_the_window(pitr_world):
    world = pitr_world
    tid = world.tenants["witness"]
    backup = json.loads(world.extra["backup"])
    before = datetime.fromisoformat(backup["started"]) - timedelta(minutes=5)
    result = world.cli("restore", tid, "--at", _iso(before), "--yes", "--json")
    assert result.returncode == 1, result.stderr
    assert "outside the recoverable window" in result.stderr
    assert backup["stopped"][:19] in result.stderr.replace("Z", "+00:00")
    assert world.rows(tid) == _rows(world, tid, 3)


def _postmaster_pids(root) -> list[int]:
    pids = []
    for pidfile in root.glob("*/data/postmaster.pid"):
        try:
            pids.append(int(pidfile.read_text().splitlines()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
    except OSError:
        return False


def test_kill_9_of_a_restore_then_the_next_run_sweeps_the_scratch_cluster(pitr_world):
    world = pitr_world
    killed, after = world.tenants["killed"], world.tenants["after_kill"]
    proc = world.popen_cli("restore", killed, "--at", _iso(world.t_mid), "--yes")
    deadline = time.monotonic() + 120
    pids: list[int] = []
    while time.monotonic() < deadline and not pids and proc.poll() is None:
        pids = [p for p in _postmaster_pids(world.scratch_root) if _alive(p)]
        time.sleep(0.05)
    assert pids, f"no scratch postmaster seen; restore exited {proc.poll()}: {proc.stderr.read() if proc.poll() is not None else ''}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(world.scratch_root.glob("*")), "the kill left nothing behind: the test proves nothing"
    assert world.rows(killed) == _rows(world, killed, 3)  # killed before any swap
    result = world.cli("restore", after, "--at", _iso(world.t_mid), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tiers"]["postgresql"]["restored"] == 2
    assert world.rows(after) == _rows(world, after, 2)
    assert not list(world.scratch_root.glob("*"))
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


@pytest.mark.parametrize("value", ["2026-13-01T00:00:00Z"])
def test_malformed_at_is_bad_input_before_any_service(value, cli, tmp_path):
    result = cli("restore", "abc", "--at", value, "--yes", env={"KRYONIX_PG_DSN": "postgresql://nobody@127.0.0.1:1/x"})
    assert result.returncode == 2
