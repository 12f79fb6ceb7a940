"""A PostgreSQL cluster of the PITR tests' own (initdb, as the postgres user, on a free port),
WAL-archived through pgBackRest into a temporary repository, with one base backup and tenants
whose rows were written at t1, t2 and t3.

One cluster and one base backup per module (per xdist worker): every test reuses them, and
each test restores tenants no other test restores, so the tests run in any order.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import psycopg2
import pytest

from kryonix_dagster.engine import registry
from kryonix_dagster.engine.config import load_settings
from kryonix_dagster.engine.migrations import migrate

from .conftest import free_port, run_cli

PG_BIN = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])
# The tenants of the world; each test restores only its own (see the module docstring).
ROLES = ("self", "witness", "into_target", "killed", "sessioned", "erased", "erase_waited", "offboarded",
         "main_db_lost")
WITH_CONTACTS = ("erased", "erase_waited")  # tenants with two persons in crm.contatos
ERASED_EMAIL = "contato7@exemplo.com.br"  # a person of the "erased" tenant the LGPD rules find
CLUSTER_NAME = "kryonix-pitr-world"  # a postmaster option the cluster is started with (pg_ctl -o)


def as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@dataclass
class PitrWorld:
    base: Path
    port: int
    env: dict[str, str]
    settings: object
    tenants: dict[str, str]
    setup_without_restart: subprocess.CompletedProcess
    setup_with_restart: subprocess.CompletedProcess
    t_mid: datetime | None = None  # between the commits of t2 and t3, on the server's clock
    backup_stopped: datetime | None = None
    extra: dict = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def scratch_root(self) -> Path:
        return Path(self.env["KRYONIX_PITR_WORK_DIR"]) / "scratch"

    def cli(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return run_cli(*args, env=self.env, timeout=timeout)

    def popen_cli(self, *args: str) -> subprocess.Popen:
        from .conftest import VENV_BIN
        return subprocess.Popen([str(VENV_BIN / "kryonix-backup"), *args], env={**os.environ, **self.env},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def psql(self, database: str, query: str) -> str:
        """An independent path to the data: the psql binary, not the product's psycopg2."""
        out = subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", query],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def rows(self, tenant_id: str) -> list[str]:
        out = self.psql(f"kryonix_cliente_{tenant_id}", "SELECT id || ':' || note FROM app.orders ORDER BY id")
        return out.splitlines()

    @contextlib.contextmanager
    def cursor(self, database: str = "postgres"):
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()


def _write_rows(world: PitrWorld, step: int) -> None:
    for tid in world.tenants.values():
        with world.cursor(f"kryonix_cliente_{tid}") as cur:
            cur.execute("INSERT INTO app.orders VALUES (%s, %s)", (step, f"{tid}-t{step}"))


def _start(data: Path, log: Path, port: int) -> None:
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", f"-p {port} -c cluster_name={CLUSTER_NAME}",
                                          "-w", "-t", "120", "start"),
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        assert proc.returncode == 0, log.read_text()[-2000:]


def new_cluster() -> tuple[Path, int]:
    """initdb (as postgres) in a private folder on tmpfs, archive_mode off, started on a free port
    given as `pg_ctl -o '-p PORT -c cluster_name=…'`, not in postgresql.conf (a restart must keep
    both: runbook §6)."""
    # tmpfs when there is one: pgBackRest syncs every file it restores, a disk under other
    # helpers' load made that the slowest step by far
    base = Path(tempfile.mkdtemp(prefix="kryonix-pitr-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    base.chmod(0o700)
    port = free_port()
    data = base / "data"
    subprocess.run(as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                               "-E", "UTF8", "--no-sync"), check=True, capture_output=True)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{base}'\n"
                   "fsync = off\nshared_buffers = 32MB\nmax_connections = 40\narchive_mode = off\n")
    _start(data, base / "postgres.log", port)
    return base, port


def remove_cluster(base: Path) -> None:
    """Stop the cluster and any scratch cluster left under it, then remove everything."""
    for data in (base / "data", *base.glob("pitr-work/scratch/*/data")):
        with tempfile.TemporaryFile() as out:
            subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"),
                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    shutil.rmtree(base, ignore_errors=True)


def world_env(base: Path, port: int, token: str) -> dict[str, str]:
    return {
        "KRYONIX_PG_DSN": f"postgresql://postgres@127.0.0.1:{port}/postgres",
        "KRYONIX_MAIN_DB": f"kryonix_pitr_main_{token}",
        "KRYONIX_REPO": f"file://{base / 'repos'}",
        "KRYONIX_MASTER_KEY_FILE": str(base / "keys" / "master.key"),
        "KRYONIX_APP_DATA_DIR": str(base / "appdata"),
        "KRYONIX_STATE_DIR": str(base / "state"),
        "KRYONIX_PITR_STANZA": f"test-{token}",
        "KRYONIX_PITR_REPO": str(base / "pgbackrest"),
        "KRYONIX_PITR_WORK_DIR": str(base / "pitr-work"),
        "KRYONIX_REDIS_URL": "redis://127.0.0.1:6379/0",
    }


@pytest.fixture(scope="module", name="pitr_world")
def pitr_world_fixture():
    base, port = new_cluster()
    token = secrets.token_hex(4)
    env = world_env(base, port, token)
    settings = load_settings({**os.environ, **env})
    world = None
    try:
        migrate(settings)
        tenants = {role: f"p{token}{i}" for i, role in enumerate(ROLES)}
        for tid in tenants.values():
            registry.add_tenant(settings, tid, f"PITR {tid}", "enterprise")
        first = run_cli("pitr", "setup", env=env)
        second = run_cli("pitr", "setup", "--restart", env=env)
        world = PitrWorld(base, port, env, settings, tenants, first, second)
        assert second.returncode == 0, second.stderr
        for tid in tenants.values():
            with world.cursor() as cur:
                cur.execute(f"CREATE DATABASE kryonix_cliente_{tid}")
            with world.cursor(f"kryonix_cliente_{tid}") as cur:
                cur.execute("CREATE SCHEMA app; CREATE TABLE app.orders (id int PRIMARY KEY, note text NOT NULL)")
        for role in WITH_CONTACTS:
            with world.cursor(f"kryonix_cliente_{tenants[role]}") as cur:
                cur.execute("CREATE SCHEMA crm; CREATE TABLE crm.contatos (id int PRIMARY KEY, nome text, email text, "
                            "telefone text); INSERT INTO crm.contatos VALUES (7, 'Contato 7', %s, '+5511900000007'), "
                            "(8, 'Contato 8', 'contato8@exemplo.com.br', '+5511900000008')", (ERASED_EMAIL,))
        backup = run_cli("pitr", "backup", "--type", "full", "--json", env=env)
        assert backup.returncode == 0, backup.stderr
        world.extra["backup"] = backup.stdout
        world.backup_stopped = datetime.fromisoformat(json.loads(backup.stdout)["stopped"])
        with world.cursor() as cur:  # pgBackRest recovers only to a second after the stop's second
            deadline = time.monotonic() + 5
            cur.execute("SELECT clock_timestamp() >= %s", (world.backup_stopped + timedelta(seconds=1),))
            while not cur.fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
                cur.execute("SELECT clock_timestamp() >= %s", (world.backup_stopped + timedelta(seconds=1),))
        _write_rows(world, 1)
        _write_rows(world, 2)
        with world.cursor() as cur:
            cur.execute("SELECT clock_timestamp()")
            world.t_mid = cur.fetchone()[0]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the t3 commits come strictly after t_mid
                cur.execute("SELECT clock_timestamp() > %s", (world.t_mid,))
                if cur.fetchone()[0]:
                    break
        _write_rows(world, 3)
        yield world
    finally:
        remove_cluster(base)
