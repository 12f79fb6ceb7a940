"""Helpers of the recovery tests (runbook, off-site, key rotation, erasure): a real SIGKILL of a
child that is checked to be running, a tenant's whole state seen through independent clients
(with Redis's absolute expiry times), a row lock that holds a CLI at one step of its work, and
restic run directly on a repository."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psycopg2
import redis

from kryonix_dagster.engine.naming import names_for

from . import observe
from .faults import CatalogStepper, hand_over_lock
from .helpers_tenant import destroy

PG = {"host": "127.0.0.1", "user": "postgres"}


def kill9_running(proc: subprocess.Popen) -> None:
    """SIGKILL a child that is still running (checked right before), and reap it."""
    assert proc.poll() is None, ("the child ended before the kill", proc.returncode, proc.communicate()[1][-800:])
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.returncode


def poll(condition, proc: subprocess.Popen | None, what: str, timeout: float = 120):
    """Call `condition` until it returns something truthy (returned); fail at the deadline or
    when `proc` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the child ended ({proc.returncode}) before {what}: {err[-800:]}")
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


def redis_expiries(url: str, prefix: str) -> dict[bytes, int]:
    """key → absolute expiry (unix seconds, EXPIRETIME) of every key of the prefix that has one."""
    client = redis.Redis.from_url(url)
    found = {}
    for key in client.scan_iter(match=prefix + "*", count=1000):
        at = client.execute_command("EXPIRETIME", key)
        if at > 0:
            found[key] = at
    return found


def whole_state(settings, tenant_id: str) -> dict:
    """observe.tenant_state (rows, objects with metadata and tags, Redis values, vhost definitions
    and messages, app-data file bytes) plus the Redis keys' absolute expiry times."""
    state = observe.tenant_state(settings, tenant_id)
    state["redis_expiry"] = redis_expiries(settings.redis_url, names_for(settings, tenant_id).redis_prefix)
    return state


def lose_everything(settings, tenant_id: str) -> dict:
    """The tenant's data as it is now (whole_state), then destroyed in every service (checked)."""
    before = whole_state(settings, tenant_id)
    assert all(before[tier] for tier in ("tables", "objects", "redis", "vhost", "files", "messages", "redis_expiry"))
    assert any(before["messages"].values())
    destroy(settings, tenant_id)
    lost = whole_state(settings, tenant_id)
    assert (lost["tables"], lost["objects"], lost["redis"], lost["vhost"], lost["files"]) == (None, {}, {}, None, {})
    return before


def assert_restored(settings, tenant_id: str, before: dict) -> None:
    """Every tier as `before`, seen through the independent clients. Biometric templates are
    device-local and never backed up (docs/architecture.md): lost with the folder, they stay lost."""
    after = whole_state(settings, tenant_id)
    same_expiries(after.pop("redis_expiry"), before["redis_expiry"])
    templates = {f for f in before["files"] if "/biometric/templates/" in f"/{f}"}  # none once lost before
    assert not templates & set(after["files"])
    expected = {**before, "files": {f: h for f, h in before["files"].items() if f not in templates}}
    expected.pop("redis_expiry")
    assert set(after) == set(expected)
    for tier in expected:
        assert after[tier] == expected[tier], tier


def same_expiries(after: dict[bytes, int], before: dict[bytes, int], slack: int = 1) -> None:
    """The same keys expire, each at the same second (restored expiries are rounded to a second)."""
    assert set(after) == set(before) and before, (len(after), len(before))
    drift = {k: after[k] - before[k] for k in before if abs(after[k] - before[k]) > slack}
    assert not drift, drift


class RowHold:
    """Holds FOR UPDATE locks on rows of the main database from a connection of the test's own,
    so a CLI that updates one of them waits there (a step of its work, observable in
    pg_stat_activity) until the test kills it or lets it go."""

    def __init__(self, main_db: str, query: str, params: tuple):
        self.conn = psycopg2.connect(dbname=main_db, application_name="recovery-row-hold", **PG)
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            self.rows = cur.fetchall()
        assert self.rows, ("nothing to hold", query, params)
        self.main_db = main_db

    def waiters(self) -> list[int]:
        """Backends (other than ours) waiting on a lock we hold."""
        with psycopg2.connect(dbname=self.main_db, **PG) as watch, watch.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                        (self.conn.get_backend_pid(),))
            found = [r[0] for r in cur.fetchall()]
        watch.close()
        return found

    def end_backends(self, pids: list[int]) -> None:
        end_backends(self.main_db, pids)

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def restic_at(location: str, password: str, *args: str, extra_env: dict[str, str] | None = None,
              cache: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESTIC_REPOSITORY=location, RESTIC_PASSWORD=password, **(extra_env or {}))
    flags = ["--cache-dir", cache] if cache else ["--no-cache"]
    return subprocess.run(["restic", *flags, *args], env=env, capture_output=True, text=True, timeout=300,
                          input=stdin)


def restic_snapshots(location: str, password: str, **kwargs) -> list[dict]:
    listed = restic_at(location, password, "snapshots", "--json", "--no-lock", **kwargs)
    assert listed.returncode == 0, listed.stderr[-1000:]
    return json.loads(listed.stdout)


def sessions_in(snapshots: list[dict]) -> set[str]:
    """The sessions whose manifest (kind=manifest) is among restic's snapshots."""
    found = set()
    for snap in snapshots:
        tags = set(snap.get("tags") or [])
        if "kind=manifest" in tags:
            found |= {t[len("session="):] for t in tags if t.startswith("session=")}
    return found


class TableStepper:
    """Holds SHARE on one table of a database, so every write of a child to it waits; lets the
    writes through one at a time. Two connections take turns holding the lock: before one lets
    the waiting statement through, the other's request is already queued behind that statement,
    so the child's next write waits again however slowly the test runs (as faults.CatalogStepper
    does for pg_database)."""

    def __init__(self, dbname: str, table: str):
        self.lock, self.table = f"LOCK TABLE {table} IN SHARE MODE", table
        self.dbname = dbname
        self.conns = [psycopg2.connect(dbname=dbname, application_name=f"recovery-stepper-{i}", **PG) for i in (0, 1)]
        self.current = 0
        self.conns[0].cursor().execute(self.lock)

    def _ours(self) -> list[int]:
        return [c.get_backend_pid() for c in self.conns]

    def waiting(self) -> list[tuple[int, str]]:
        """(pid, query) of the statements (not ours) waiting on the held lock."""
        with psycopg2.connect(dbname=self.dbname, **PG) as watch, watch.cursor() as cur:
            cur.execute("SELECT pid, query FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)) "
                        "AND NOT pid = ANY(%s) ORDER BY query_start",
                        (self.conns[self.current].get_backend_pid(), self._ours()))
            found = cur.fetchall()
        watch.close()
        return found

    def let_through(self, timeout: float = 60) -> None:
        watch = psycopg2.connect(dbname=self.dbname, **PG)
        watch.autocommit = True
        try:
            self.current = hand_over_lock(self.lock, self.table, watch.cursor(), self.conns, self.current,
                                          time.monotonic() + timeout)
        finally:
            watch.close()

    def end_backends(self, pids: list[int]) -> None:
        end_backends(self.dbname, pids)

    def close(self) -> None:
        for conn in self.conns:
            if not conn.closed:
                conn.rollback()
                conn.close()


def end_backends(dbname: str, pids: list[int]) -> None:
    """What a SIGKILL of the client does to a statement not yet run: its backend ends (so a
    released lock grants it nothing); polled until they are gone."""
    watch = psycopg2.connect(dbname=dbname, **PG)
    watch.autocommit = True
    try:
        with watch.cursor() as cur:
            for pid in pids:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            CatalogStepper._wait_gone(cur, pids, time.monotonic() + 60)
    finally:
        watch.close()
