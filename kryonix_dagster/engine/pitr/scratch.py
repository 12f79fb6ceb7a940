"""A throw-away cluster holding one tenant's database as of a moment.

`pgbackrest restore --db-include` into `<work>/scratch/<token>/data` (owned by the cluster's
owner), started with our own minimal configuration on a free port, reachable only through
its private socket folder (no TCP listener: the copy holds a tenant's data), archiving off.
The other databases come back as zeroed files (`ignore_invalid_pages=on` lets recovery replay
their WAL). A database created after the base backup the recovery starts from is not in that
backup, and `--db-include` cannot name it (pgBackRest's error 80): then the whole cluster is
restored (`info --set` lists the backup's databases; an error 80 all the same falls back too),
and WAL replay creates the database as it was created. Slower (every database is copied), but
every tenant has PITR from the moment its database exists, not from the next base backup. A marker names the process that made it: `sweep` stops and removes the scratch
clusters whose maker is gone (a restore killed with -9), and every path out of `scratch_cluster`
stops and removes its own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import psycopg2

from .. import procs
from ..errors import OperationFailed, one_line
from ..pgbackrest import DB_MISSING, PgBackRest, PgBackRestFailed, as_user, backup_before, owner_ids
from ..reporting import Reporter
from .cluster import Cluster, pg_bin, run_detached

MARKER = "kryonix-scratch.json"
_HBA = "local all all trust\n"


@dataclass(frozen=True)
class ScratchCluster:
    root: Path
    port: int
    user: str
    whole: bool = False  # the whole cluster restored: the database is not in the base backup
    backup_set: str | None = None  # the base backup the recovery started from

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        return psycopg2.extensions.make_dsn(host=str(self.root), port=str(self.port), user=self.user,
                                            dbname="postgres")

    def log_tail(self, lines: int = 3) -> str:
        """The log's FATAL/PANIC lines (else its last lines), for an error message."""
        try:
            text = (self.root / "postgres.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        worst = [line for line in text if "FATAL" in line or "PANIC" in line]
        return one_line(" ".join((worst or text)[-lines:]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age_seconds(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _stop(root: Path, owner: str, cluster: Cluster | None) -> None:
    data = root / "data"
    if (data / "postmaster.pid").exists():
        pg_ctl = pg_bin(cluster, "pg_ctl") if cluster else "pg_ctl"
        run_detached(as_user(owner, [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop"]), 90)


def _remove(root: Path, owner: str, cluster: Cluster | None) -> None:
    _stop(root, owner, cluster)
    shutil.rmtree(root, ignore_errors=True)


def sweep(scratch_root: Path, owner: str, cluster: Cluster | None = None) -> int:
    """Stop and remove the scratch clusters whose maker process is gone; returns how many."""
    removed = 0
    if not scratch_root.is_dir():
        return 0
    for root in scratch_root.iterdir():
        try:
            marker = json.loads((root / MARKER).read_text())
            pid = int(marker.get("pid", 0))
        except (OSError, ValueError, TypeError):
            marker, pid = {}, 0
            if _age_seconds(root) < 60:
                continue  # being made right now by another restore: its marker comes next
        if pid and pid != os.getpid() and _alive(pid) and marker.get("host") == socket.gethostname():
            continue  # another restore's, still running
        _remove(root, owner, cluster)
        removed += 1
    return removed


def _prepare(scratch_root: Path, owner: str) -> Path:
    uid, gid = owner_ids(owner) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chown(scratch_root, uid, gid)
    root = scratch_root / secrets.token_hex(6)
    root.mkdir(mode=0o700)
    (root / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "created": time.time()}))
    _empty_data_dir(root, uid, gid)
    (root / "postgresql.conf").write_text("# kryonix scratch cluster: everything is on the command line\n")
    (root / "pg_hba.conf").write_text(_HBA)
    (root / "pg_ident.conf").write_text("")
    for path in (root, root / "postgresql.conf", root / "pg_hba.conf", root / "pg_ident.conf"):
        os.chown(path, uid, gid)
    return root


def _empty_data_dir(root: Path, uid: int, gid: int) -> None:
    data = root / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(mode=0o700)
    os.chown(data, uid, gid)


def _restore(pgbr: PgBackRest, scratch: ScratchCluster, owner: str, database: str, target: datetime,
             report: Reporter) -> ScratchCluster:
    """`database` as of `target` into the scratch data directory: with `--db-include` when the base
    backup the recovery starts from holds it, else the whole cluster; the scratch as restored."""
    info = pgbr.info()
    chosen = backup_before(info.backups if info else (), target)
    held = pgbr.backup_databases(chosen.label) if chosen else None
    label = chosen.label if chosen else None
    if held is None or database in held:
        try:
            pgbr.restore_database(scratch.data_dir, database, target, label)
            return dataclasses.replace(scratch, backup_set=label)
        except PgBackRestFailed as exc:
            if exc.code != DB_MISSING:
                raise
        uid, gid = owner_ids(owner) if os.geteuid() == 0 else (os.getuid(), os.getgid())
        _empty_data_dir(scratch.root, uid, gid)  # what the refused restore may have begun
    report.warn(f"{database} was created after base backup {label or '(pgBackRest’s choice)'}: restoring the "
                "whole cluster into the scratch cluster (slower; a new base backup makes it per-database again)")
    pgbr.restore_database(scratch.data_dir, None, target, label)
    return dataclasses.replace(scratch, whole=True, backup_set=label)


def _options(root: Path, port: int, cluster: Cluster) -> str:
    settings = {"config_file": root / "postgresql.conf", "hba_file": root / "pg_hba.conf",
                "ident_file": root / "pg_ident.conf", "port": port, "listen_addresses": "",
                "unix_socket_directories": root, "unix_socket_permissions": "0700", "archive_mode": "off",
                "ignore_invalid_pages": "on", "hot_standby": "on", "shared_buffers": "32MB",
                "logging_collector": "off", "ssl": "off", "fsync": "off", "synchronous_commit": "off",
                **dict(cluster.standby_settings)}
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def _wait_promoted(scratch: ScratchCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with contextlib.closing(psycopg2.connect(scratch.dsn, connect_timeout=5)) as conn:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_is_in_recovery()")
                    if not cur.fetchone()[0]:
                        return
        except psycopg2.OperationalError:
            if not (scratch.data_dir / "postmaster.pid").exists():
                raise OperationFailed(f"the scratch cluster stopped during recovery: {scratch.log_tail()}") from None
        if time.monotonic() > deadline:
            raise OperationFailed(f"the scratch cluster did not finish recovery within {timeout:.0f}s: "
                                  f"{scratch.log_tail()}")
        time.sleep(0.2)


@contextlib.contextmanager
def scratch_cluster(pgbr: PgBackRest, cluster: Cluster, scratch_root: Path, database: str, target: datetime,
                    report: Reporter, timeout: float = 600) -> Iterator[ScratchCluster]:
    """A running scratch cluster with `database` as of `target`; stopped and removed on every path."""
    root = _prepare(scratch_root, cluster.owner)
    scratch = ScratchCluster(root, _free_port(), cluster.superuser)
    try:
        report.info(f"restoring {database} as of {target.isoformat()} into a scratch cluster")
        scratch = _restore(pgbr, scratch, cluster.owner, database, target, report)
        report.info("starting the scratch cluster and replaying WAL")
        code, output = run_detached(as_user(cluster.owner, [
            pg_bin(cluster, "pg_ctl"), "-D", str(scratch.data_dir), "-l", str(root / "postgres.log"),
            "-w", "-t", str(int(timeout)), "-o", _options(root, scratch.port, cluster), "start"]), timeout + 30)
        if code != 0:
            raise OperationFailed(f"the scratch cluster did not start: {scratch.log_tail() or one_line(output)}")
        _wait_promoted(scratch, timeout)
        yield scratch
    finally:
        _remove(root, cluster.owner, cluster)


def pg_dump_scratch(scratch: ScratchCluster, cluster: Cluster, database: str, out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=str(scratch.root), PGPORT=str(scratch.port), PGUSER=scratch.user)
    proc = procs.run([pg_bin(cluster, "pg_dump"), "--format=custom", "--compress=0", "--no-password",
                      f"--file={out}", f"--dbname={database}"], env=env, stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise OperationFailed(f"pg_dump of {database} from the scratch cluster failed: "
                              f"{one_line(proc.stderr.decode(errors='replace'))}")
