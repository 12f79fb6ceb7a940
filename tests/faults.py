"""Fault-injection tools for tests/test_fault_injection.py.

Everything here observes or disturbs the product from the outside: CLI processes killed
with SIGKILL (checked to be running right before, and to have died of it), the tenant's
restic repository damaged on disk, and a `sitecustomize` hook in the CLI process that stops it
(SIGSTOP) at a chosen step so it can be looked at or killed there: right after it started its
n-th tool (restic, pg_dump, pg_restore), before each CREATE/DROP/ALTER DATABASE of the tenant,
right after it moved a tenant's live folder away; or that logs its lease statements. The
product's code is never patched in the test process itself, and nothing of the shared cluster
is locked.
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
    """A certain kill: the process still runs (or is stopped) right before SIGKILL, and SIGKILL
    is what ended it."""
    assert proc.poll() is None, f"pid {proc.pid} ended ({proc.returncode}) before the kill: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"pid {proc.pid} ended with {proc.returncode}, not by SIGKILL"


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, D, T for stopped, Z), None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[0]


def marker_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_stopped(proc: subprocess.Popen, marker: Path, count: int, deadline: float) -> list[str] | None:
    """Poll until the hook has written its `count`-th stop line to `marker` and the process is
    stopped there (SIGSTOP); returns the marker's lines. None when the process ended first."""
    while True:
        lines = marker_lines(marker)
        if len(lines) >= count and process_state(proc.pid) == "T":
            return lines
        if proc.poll() is not None:
            return None
        assert time.monotonic() < deadline, f"pid {proc.pid} never stopped at step {count} (seen: {lines})"
        time.sleep(0.01)


def stop_after_spawn(args: tuple[str, ...], step: int, hook: Path, marker: Path, env: dict[str, str] | None = None,
                     timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start the CLI with the hook, which stops it (SIGSTOP) right after it started its `step`-th
    tool (restic, pg_dump, pg_restore, psql); returns the stopped process and that tool's line."""
    full = {**(env or {}), "H7_STOP_AFTER_SPAWN": str(step), "H7_STOP_MARKER": str(marker)}
    proc = start_cli(*args, env=full, extra_pythonpath=str(hook))
    lines = wait_stopped(proc, marker, 1, time.monotonic() + timeout)
    if lines is None:
        out, err = proc.communicate()
        raise AssertionError(f"{args[0]} ended ({proc.returncode}) before its tool #{step}: {err[-800:]}")
    return proc, lines[0]


def tool_steps(args: tuple[str, ...], hook: Path, log: Path, env: dict[str, str] | None = None,
               timeout: float = 300) -> list[str]:
    """Run the CLI to its end with the hook logging every tool it starts; the list of tools."""
    log.unlink(missing_ok=True)
    proc = start_cli(*args, env={**(env or {}), "H7_SPAWN_LOG": str(log)}, extra_pythonpath=str(hook))
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-1000:] + err[-1000:]
    steps = marker_lines(log)
    assert steps, f"{args[0]} started no tool"
    return steps


def lease_holder(tenant_id: str) -> str | None:
    with psycopg2.connect(dbname=MAIN_DB, **PG) as conn, conn.cursor() as cur:
        cur.execute("SELECT holder FROM tenants.backup_leases WHERE cliente_id = %s AND expires_at > now()",
                    (tenant_id,))
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


def holder_of(proc: subprocess.Popen) -> str:
    """The lease holder name a CLI process writes (host:pid)."""
    return f"{socket.gethostname()}:{proc.pid}"


def start_logged(*args: str, hook: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the CLI with the hook logging each SQL statement it sends about leases to `log`."""
    full = {**(env or {}), "H7_SQL_LOG": str(log), "H7_SQL_MATCH": "tenants.backup_leases"}
    return start_cli(*args, env=full, extra_pythonpath=str(hook))


def start_at_one_lease_barrier(commands: list[tuple[str, ...]], hook: Path, barrier: Path,
                               env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Start the CLI commands together; the hook holds each one right before its first lease
    attempt until all of them are there, so their attempts overlap for certain."""
    barrier.mkdir()
    full = {**(env or {}), "H7_LEASE_BARRIER": str(barrier), "H7_LEASE_PARTIES": str(len(commands))}
    return [start_cli(*args, env=full, extra_pythonpath=str(hook)) for args in commands]


def wait_for_lease_attempts(proc: subprocess.Popen, log: Path, count: int, timeout: float = 120) -> None:
    """Poll until `proc` has tried to take a lease `count` times (each try is one INSERT): with
    count >= 2 it was refused at least once and is waiting."""
    deadline = time.monotonic() + timeout
    while sum(line.startswith("INSERT INTO tenants.backup_leases") for line in marker_lines(log)) < count:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"pid {proc.pid} ended ({proc.returncode}) before {count} lease attempts: "
                                 f"{marker_lines(log)} {err[-800:]}")
        assert time.monotonic() < deadline, f"pid {proc.pid}: fewer than {count} lease attempts: {marker_lines(log)}"
        time.sleep(0.05)


def stratified_steps(rng, count: int, steps: int) -> list[int]:
    """`count` step numbers spread over 1..`steps`: one uniformly drawn in each equal slice."""
    return [rng.randint(1 + i * steps // count, max(1 + i * steps // count, (i + 1) * steps // count))
            for i in range(count)]


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
    return database_oid(name) is not None


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
    """Single-steps a CLI restore through its catalog changes: the hook (`hook_dir`) stops the
    CLI process (SIGSTOP) right before each CREATE/DROP/ALTER DATABASE naming the tenant; the
    test looks at the databases, then lets it go on (SIGCONT). Nothing of the shared cluster is
    locked, so other tests' CREATE/DROP DATABASE never wait on this one.

    `kill_when_live_missing`: SIGKILL the CLI at the first step where the live database is gone.
    Otherwise only record every step at which neither the live database nor `previous` exists.
    """

    tenant_id: str
    kill_when_live_missing: bool
    marker: Path
    steps: int = 0
    killed: bool = False
    violations: list[str] = field(default_factory=list)
    seen_queries: list[str] = field(default_factory=list)

    @property
    def live(self) -> str:
        return f"kryonix_cliente_{self.tenant_id}"

    @property
    def previous(self) -> str:
        return f"{self.live}__previous"

    def start(self, *args: str, hook: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        stops = {"H7_STOP_BEFORE_DDL": self.tenant_id, "H7_STOP_MARKER": str(self.marker)}
        return start_cli(*args, env={**(env or {}), **stops}, extra_pythonpath=str(hook))

    def run(self, proc: subprocess.Popen, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        watch = psycopg2.connect(dbname="postgres", application_name="h7-stepper-watch", **PG)
        watch.autocommit = True
        try:
            cur = watch.cursor()
            while (lines := wait_stopped(proc, self.marker, self.steps + 1, deadline)) is not None:
                self.steps += 1
                self.seen_queries.append(lines[self.steps - 1])
                cur.execute("SELECT datname FROM pg_database WHERE datname IN (%s, %s)", (self.live, self.previous))
                present = {r[0] for r in cur.fetchall()}
                if not present:
                    self.violations.append(f"step {self.steps}: neither {self.live} nor {self.previous} exists "
                                           f"(next: {lines[self.steps - 1][:120]})")
                if self.kill_when_live_missing and self.live not in present:
                    kill9(proc)
                    self.killed = True
                    return
                os.kill(proc.pid, signal.SIGCONT)
        finally:
            watch.close()

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
import os, shutil, signal, subprocess, threading, time
_stop_marker = os.environ.get("H7_STOP_MARKER")
_spawn_log = os.environ.get("H7_SPAWN_LOG")
_stop_after = int(os.environ.get("H7_STOP_AFTER_SPAWN") or 0)
_ddl_tenant = os.environ.get("H7_STOP_BEFORE_DDL")
_sql_log = os.environ.get("H7_SQL_LOG")
_sql_match = os.environ.get("H7_SQL_MATCH", "")
_barrier = os.environ.get("H7_LEASE_BARRIER")
_parties = int(os.environ.get("H7_LEASE_PARTIES") or 2)
_barrier_passed = []
_tools = {"restic", "pg_dump", "pg_restore", "psql", "pgbackrest"}
_spawned = [0]
_spawn_lock = threading.Lock()
def _stop_here(line):
    with open(_stop_marker, "a") as out:
        out.write(line.replace("\\n", " ") + "\\n")
    os.kill(os.getpid(), signal.SIGSTOP)
def _tool_of(cmd):
    if isinstance(cmd, (str, bytes)) or not cmd:
        return None
    cmd = [os.fsdecode(c) for c in cmd]
    if os.path.basename(cmd[0]) == "setpriv" and "--" in cmd:
        cmd = cmd[cmd.index("--") + 1:]
    if os.path.basename(cmd[0]) not in _tools or "version" in cmd or "--version" in cmd:
        return None
    tiers = [t for c in cmd for t in c.split(",") if t.startswith(("tier=", "part="))]
    return " ".join([os.path.basename(cmd[0])] + [c for c in cmd[1:] if not c.startswith("-") and "=" not in c][:2]
                    + tiers)
if _spawn_log or _stop_after:
    class _CountedPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            super().__init__(args, *rest, **kwargs)
            tool = _tool_of(args)
            if tool is None:
                return
            with _spawn_lock:
                _spawned[0] += 1
                n = _spawned[0]
                if _spawn_log:
                    with open(_spawn_log, "a") as out:
                        out.write(tool + "\\n")
            if n == _stop_after:
                _stop_here(f"after tool #{n}: {tool}")
    subprocess.Popen = _CountedPopen
def _lease_barrier():
    """Before the first lease attempt: wait (up to 120 s) until every party has reached its own."""
    _barrier_passed.append(True)
    open(os.path.join(_barrier, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 120
    while len(os.listdir(_barrier)) < _parties and time.monotonic() < deadline:
        time.sleep(0.002)
if _ddl_tenant or _sql_log or _barrier:
    import re
    import psycopg2, psycopg2.extensions, psycopg2.sql
    _DDL = re.compile(r"\\s*(CREATE|DROP|ALTER)\\s+DATABASE\\b", re.I)
    class _SteppedCursor(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            text = query.as_string(self) if isinstance(query, psycopg2.sql.Composable) else query
            text = text.decode() if isinstance(text, bytes) else text
            if _sql_log and _sql_match in text:
                with open(_sql_log, "a") as out:
                    out.write(" ".join(text.split()) + "\\n")
            if _barrier and not _barrier_passed and text.startswith("INSERT INTO tenants.backup_leases"):
                _lease_barrier()
            if _ddl_tenant and _DDL.match(text) and _ddl_tenant in text:
                _stop_here(" ".join(text.split()))
            return super().execute(query, vars)
    _connect = psycopg2.connect
    def _stepped_connect(*args, **kwargs):
        kwargs.setdefault("cursor_factory", _SteppedCursor)
        return _connect(*args, **kwargs)
    psycopg2.connect = _stepped_connect
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
