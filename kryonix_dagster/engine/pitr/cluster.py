"""The cluster behind KRYONIX_PG_DSN: where it lives, who owns it, how it archives, how to restart it."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import pg, procs
from ..config import Settings
from ..errors import OperationFailed, one_line
from ..pgbackrest import as_user

# Hot standby refuses to start with less of these than the primary had.
STANDBY_SETTINGS = ("max_connections", "max_locks_per_transaction", "max_prepared_transactions",
                    "max_wal_senders", "max_worker_processes")
LOCAL_HOSTS = ("", "127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Cluster:
    data_dir: str
    port: int
    socket_dir: str | None
    version_num: int
    archive_mode: str
    archive_command: str
    wal_level: str
    superuser: str  # the bootstrap superuser (oid 10)
    host: str
    standby_settings: tuple[tuple[str, str], ...] = ()  # a copy in recovery needs at least these


    @property
    def major(self) -> int:
        return self.version_num // 10000

    @property
    def local(self) -> bool:
        """On this machine: a loopback or socket host and a data directory we can see."""
        return (self.host in LOCAL_HOSTS or self.host.startswith("/")) and Path(self.data_dir).is_dir()

    @property
    def owner(self) -> str:
        """The OS user owning the data directory (runs pgBackRest's commands that touch it)."""
        try:
            return pwd.getpwuid(Path(self.data_dir).stat().st_uid).pw_name
        except (OSError, KeyError):
            return "postgres"


def discover(settings: Settings) -> Cluster:
    params = pg.parse(settings.pg_dsn)
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('data_directory'), current_setting('port')::int, "
                    "split_part(current_setting('unix_socket_directories'), ',', 1), "
                    "current_setting('server_version_num')::int, current_setting('archive_mode'), "
                    "current_setting('archive_command'), current_setting('wal_level'), "
                    "(SELECT rolname FROM pg_roles WHERE oid = 10)")
        data_dir, port, socket_dir, version, mode, command, wal_level, superuser = cur.fetchone()
        cur.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s) ORDER BY name", (list(STANDBY_SETTINGS),))
        standby = tuple(cur.fetchall())
    return Cluster(data_dir, port, socket_dir.strip() or None, version, mode, command, wal_level, superuser,
                   params.get("host", ""), standby)


def pending_restart(settings: Settings, *names: str) -> list[str]:
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM pg_settings WHERE pending_restart AND name = ANY(%s)", (list(names),))
        return [row[0] for row in cur.fetchall()]


def _debian_cluster(cluster: Cluster) -> tuple[str, str] | None:
    return debian_cluster_of(cluster.data_dir)


def debian_cluster_of(data_dir: str) -> tuple[str, str] | None:
    """(version, name) when the data directory is a Debian-managed cluster's."""
    if not shutil.which("pg_lsclusters"):
        return None
    out = procs.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 6 and os.path.realpath(fields[5]) == os.path.realpath(data_dir):
            return fields[0], fields[1]
    return None


def run_detached(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run a command that may leave a daemon behind (pg_ctl start): its output goes to a file,
    never to a pipe the daemon would keep open."""
    with tempfile.TemporaryFile() as out:
        proc = procs.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        out.seek(0)
        return proc.returncode, out.read().decode(errors="replace")


def pg_bin(cluster: Cluster, tool: str) -> str:
    candidate = Path(f"/usr/lib/postgresql/{cluster.major}/bin/{tool}")
    return str(candidate) if candidate.exists() else tool


def restart(settings: Settings, cluster: Cluster, timeout: float = 120) -> None:
    """Restart the local cluster (pg_ctlcluster for a Debian cluster, else pg_ctl) and wait for it."""
    debian = _debian_cluster(cluster)
    if debian:
        cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", debian[0], debian[1], "restart"]
    else:
        cmd = as_user(cluster.owner, [pg_bin(cluster, "pg_ctl"), "-D", cluster.data_dir, "-w", "-t", str(int(timeout)),
                                      "-m", "fast", "restart"])
    code, output = run_detached(cmd, timeout + 30)
    if code != 0:
        raise OperationFailed(f"restarting the PostgreSQL cluster in {cluster.data_dir} failed: {one_line(output)}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            discover(settings)
            return
        except OperationFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
