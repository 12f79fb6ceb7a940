"""Fault-injection tools for tests/test_fault_injection.py.

Everything here observes or disturbs the product from the outside: CLI processes killed
with SIGKILL, the tenant's restic repository damaged on disk, PostgreSQL's catalog lock used
to single-step a restore between two database renames, and a `sitecustomize` hook that
pauses a CLI process right after it moved a tenant's live folder away (so it can be killed
there). The product's code is never patched in the test process itself.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from kryonix_dagster.engine import keys
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.repository import restic_location

from .conftest import MAIN_DB, ROOT, VENV_BIN

PG = {"host": "127.0.0.1", "user": "postgres"}


# --- CLI processes -----------------------------------------------------------------------------

def start_cli(*args: str, env: dict[str, str] | None = None, extra_pythonpath: str | None = None) -> subprocess.Popen:
    full = dict(os.environ, **(env or {}))
    if extra_pythonpath:
        full["PYTHONPATH"] = os.pathsep.join(p for p in (extra_pythonpath, str(ROOT), full.get("PYTHONPATH")) if p)
    return subprocess.Popen([str(VENV_BIN / "kryonix-backup"), *args], env=full, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def lease_holder(tenant_id: str) -> str | None:
    with psycopg2.connect(dbname=MAIN_DB, **PG) as conn, conn.cursor() as cur:
        cur.execute("SELECT holder FROM tenants.backup_leases WHERE cliente_id = %s AND expires_at > now()",
                    (tenant_id,))
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


def wait_for_lease(proc: subprocess.Popen, tenant_id: str, timeout: float = 60) -> float:
    """Block until `proc` holds the tenant's lease; return the monotonic time it was seen."""
    me = f"{socket.gethostname()}:{proc.pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lease_holder(tenant_id) == me:
            return time.monotonic()
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended before taking the lease: {proc.returncode} {err[-500:]}")
        time.sleep(0.05)
    raise AssertionError(f"tenant {tenant_id}: the lease was never taken by pid {proc.pid}")


def stratified_points(rng, count: int, duration: float, floor: float = 0.2) -> list[float]:
    """`count` moments spread over `duration`: one uniformly drawn in each equal slice."""
    return [max(floor, rng.uniform(i / count, (i + 1) / count) * duration) for i in range(count)]


# --- the tenant's restic repository, read independently ----------------------------------------

def repository_dir(settings, tenant_id: str) -> Path:
    location = names_for(settings, tenant_id).repository
    assert location.startswith("file://"), location
    return Path(location[len("file://"):])


def restic(settings, tenant_id: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESTIC_REPOSITORY=restic_location(names_for(settings, tenant_id).repository),
               RESTIC_PASSWORD=keys.repository_password(settings, tenant_id))
    return subprocess.run(["restic", "--no-cache", *args], env=env, capture_output=True, input=stdin, timeout=120)


def restic_json(settings, tenant_id: str, *args: str):
    proc = restic(settings, tenant_id, *args, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def latest_manifest(settings, tenant_id: str) -> dict:
    proc = restic(settings, tenant_id, "dump", "latest", "/manifest.json", "--tag", "kind=manifest")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def pack_of_blob(settings, tenant_id: str, blob_id: str) -> Path:
    """The pack file that holds a data blob (a file under restic's 512 KiB minimum chunk is
    one blob whose id is the SHA-256 of its bytes)."""
    proc = restic(settings, tenant_id, "find", "--show-pack-id", "--blob", blob_id)
    assert proc.returncode == 0, proc.stderr.decode()
    found = {line.split()[-1] for line in proc.stdout.decode().splitlines()
             if line.startswith("Object belongs to pack ")}
    assert len(found) == 1, (blob_id, proc.stdout[:500])
    pack = found.pop()
    path = repository_dir(settings, tenant_id) / "data" / pack[:2] / pack
    assert path.is_file(), path
    return path


def flip_byte(path: Path, offset: int = 64) -> bytes:
    """Flip one byte inside the pack's first blob; return the original bytes for repair."""
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[min(offset, len(damaged) // 2)] ^= 0xFF
    path.chmod(0o600)
    path.write_bytes(bytes(damaged))
    return original


def restore_file(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    path.chmod(0o400)


# --- PostgreSQL: single-step a restore through its catalog changes ------------------------------

def database_exists(name: str) -> bool:
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        found = cur.fetchone() is not None
    conn.close()
    return found


def database_oid(name: str) -> int | None:
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,))
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


@dataclass
class CatalogStepper:
    """Holds SHARE on pg_database, so every CREATE/DROP/ALTER DATABASE of the product waits;
    lets them through one at a time and looks at the databases between any two of them.

    Two connections take turns holding the lock: before one lets the waiting statement through,
    the other's SHARE request is already queued behind that statement, so the statement after it
    waits again however slowly this process runs (releasing and then re-locking left a window
    in which, on a loaded machine, the product's two renames ran back to back unseen).

    `kill_when_live_missing`: SIGKILL the CLI (and end its waiting backend, as the kill would
    have before the statement ran) at the first step where the live database is gone.
    Otherwise only record every step at which neither the live database nor `previous` exists.
    """

    tenant_id: str
    kill_when_live_missing: bool
    steps: int = 0
    killed: bool = False
    violations: list[str] = field(default_factory=list)
    seen_queries: list[str] = field(default_factory=list)

    LOCK = "LOCK TABLE pg_catalog.pg_database IN SHARE MODE"

    @property
    def live(self) -> str:
        return f"kryonix_cliente_{self.tenant_id}"

    @property
    def previous(self) -> str:
        return f"{self.live}__previous"

    def run(self, proc: subprocess.Popen, timeout: float = 180) -> None:
        holders = [psycopg2.connect(dbname="postgres", application_name=f"h7-stepper-lock-{i}", **PG) for i in (0, 1)]
        watch = psycopg2.connect(dbname="postgres", application_name="h7-stepper-watch", **PG)
        watch.autocommit = True
        deadline = time.monotonic() + timeout
        try:
            for holder in holders:
                holder.cursor().execute("SET lock_timeout = '60s'")
                holder.commit()
            cur, current = watch.cursor(), 0
            holders[current].cursor().execute(self.LOCK)
            while proc.poll() is None:
                assert time.monotonic() < deadline, "restore did not finish under the stepper"
                cur.execute("SELECT pid, query FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND NOT pid = ANY(%s) AND query LIKE %s",
                            ([h.get_backend_pid() for h in holders], f"%{self.tenant_id}%"))
                waiting = cur.fetchall()
                if not waiting:
                    time.sleep(0.02)
                    continue
                self.steps += 1
                self.seen_queries.extend(q for _, q in waiting)
                cur.execute("SELECT datname FROM pg_database WHERE datname IN (%s, %s)", (self.live, self.previous))
                present = {r[0] for r in cur.fetchall()}
                if not present:
                    self.violations.append(f"step {self.steps}: neither {self.live} nor {self.previous} exists "
                                           f"(next: {waiting[0][1][:120]})")
                if self.kill_when_live_missing and self.live not in present:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    for pid, _ in waiting:
                        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    self._wait_gone(cur, [pid for pid, _ in waiting], deadline)
                    self.killed = True
                    return
                current = self._hand_over(cur, holders, current, deadline)
        finally:
            for holder in holders:
                holder.rollback()
                holder.close()
            watch.close()

    def _hand_over(self, cur, holders, current: int, deadline: float) -> int:
        return hand_over_lock(self.LOCK, "pg_catalog.pg_database", cur, holders, current, deadline)

    @staticmethod
    def _wait_gone(cur, pids: list[int], deadline: float) -> None:
        """Poll until the terminated backends have exited, so releasing the lock grants them nothing."""
        while True:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
            if cur.fetchone()[0] == 0:
                return
            assert time.monotonic() < deadline, f"backends {pids} did not exit after pg_terminate_backend"
            time.sleep(0.02)


def hand_over_lock(lock: str, table: str, cur, holders, current: int, deadline: float) -> int:
    """Of two connections taking turns to hold `lock` on `table`: queue the other connection's
    request, then let the waiting statement through; returns the index of the connection that
    holds the lock afterwards."""
    nxt = holders[1 - current]
    failure: list[BaseException] = []

    def take() -> None:
        try:
            nxt.cursor().execute(lock)
        except BaseException as exc:  # reported below
            failure.append(exc)

    locker = threading.Thread(target=take, daemon=True)
    locker.start()
    while True:  # the request is in the table's lock queue (or granted: nobody waited on it)
        cur.execute("SELECT 1 FROM pg_locks WHERE pid = %s AND locktype = 'relation' AND relation = %s::regclass",
                    (nxt.get_backend_pid(), table))
        if cur.fetchone() or not locker.is_alive():
            break
        assert time.monotonic() < deadline, "the stepper's next lock request never reached the queue"
        time.sleep(0.01)
    holders[current].commit()  # the waiting statement is granted; our queued request follows it
    locker.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not locker.is_alive(), "the stepper's next lock was never granted"
    assert not failure, failure
    return 1 - current


# --- app data: pause a CLI right after it moved the live folder away ----------------------------

PAUSE_HOOK = '''
import os, shutil, time
_target = os.environ.get("H7_LIVE_DIR")
_marker = os.environ.get("H7_MARKER")
_mode = os.environ.get("H7_MODE", "pause")
_moved_to = []
def _wrap(orig):
    def moved(src, dst, *args, **kwargs):
        result = orig(src, dst, *args, **kwargs)
        if _target and os.path.abspath(os.fspath(src)) == _target:
            _moved_to.append(os.path.abspath(os.fspath(dst)))
            if _mode == "pause":
                with open(_marker, "w") as out:
                    out.write(os.path.abspath(os.fspath(dst)))
                time.sleep(600)
        return result
    return moved
_rmtree = shutil.rmtree
def _checked_rmtree(path, *args, **kwargs):
    copy = os.environ.get("H7_ONLY_COPY")
    if copy and os.path.abspath(os.fspath(path)) == copy and not os.path.exists(_target):
        with open(_marker, "a") as out:
            out.write("deleted the only copy " + copy + " while " + _target + " was missing\\n")
    return _rmtree(path, *args, **kwargs)
if _target:
    os.replace, os.rename = _wrap(os.replace), _wrap(os.rename)
    shutil.rmtree = _checked_rmtree
'''


def hook_dir(tmp: Path) -> Path:
    folder = tmp / "h7hook"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(PAUSE_HOOK)
    return folder


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended ({proc.returncode}) before the pause point: {err[-800:]}")
        time.sleep(0.02)
    raise AssertionError("the pause point was never reached")


class BothMissingWatcher:
    """A thread that looks, as often as it can, for a moment when neither folder exists."""

    def __init__(self, *paths: Path):
        self.paths = paths
        self.seen_missing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not any(p.exists() for p in self.paths):
                self.seen_missing = True
            time.sleep(0.0005)

    def __enter__(self) -> "BothMissingWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def file_hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}
