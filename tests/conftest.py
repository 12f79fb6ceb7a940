"""Shared fixtures: a moto S3 server on loopback, isolated settings, unique tenants.

Tests talk to the real PostgreSQL, Redis and RabbitMQ of the machine. Every tenant a test
creates has a unique id and is removed afterwards, so tests run in any order, twice in a row.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from kryonix_dagster.engine import pg
from kryonix_dagster.engine.config import load_settings
from kryonix_dagster.engine.migrations import migrate

from .helpers import purge_tenant

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# One main database per pytest process (xdist worker), so workers, and two runs on one
# machine, never share a registry.
MAIN_DB = f"kryonix_test_main_{os.environ.get('PYTEST_XDIST_WORKER', 'gw')}_{secrets.token_hex(3)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _forget_the_callers_settings() -> None:
    """The tests set every KRYONIX_* they depend on themselves (test_env): nothing a `make demo`,
    `make dev` or an operator's shell exported may change an outcome."""
    for name in [n for n in os.environ if n.startswith(("KRYONIX_", "PGBACKREST_"))]:
        del os.environ[name]
    os.environ.pop("DAGSTER_HOME", None)


_forget_the_callers_settings()


@pytest.fixture(scope="session")
def moto_endpoint():
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            requests.get(endpoint, timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def test_env(moto_endpoint, tmp_path_factory) -> dict[str, str]:
    """KRYONIX_* for the whole run, also exported so CLI subprocesses see the same world."""
    base = tmp_path_factory.mktemp("kryonix")
    env = {
        "KRYONIX_PG_DSN": "postgresql://postgres@127.0.0.1:5432/postgres",
        "KRYONIX_MAIN_DB": MAIN_DB,
        "KRYONIX_REDIS_URL": "redis://127.0.0.1:6379/0",
        "KRYONIX_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
        "KRYONIX_RABBITMQ_API": "http://127.0.0.1:15672",
        "KRYONIX_S3_ENDPOINT": moto_endpoint,
        "KRYONIX_S3_ACCESS_KEY": "testing-access",
        "KRYONIX_S3_SECRET_KEY": "testing-secret-s3",
        "KRYONIX_REPO": f"file://{base / 'repos'}",
        "KRYONIX_MASTER_KEY_FILE": str(base / "keys" / "master.key"),
        "KRYONIX_APP_DATA_DIR": str(base / "appdata"),
        "KRYONIX_STATE_DIR": str(base / "state"),
        # PITR of the tests' own: never the stanza, repository or config a `make demo` set up on
        # this machine (tests that archive WAL build their own cluster: tests/pitr_world.py)
        "KRYONIX_PITR_STANZA": f"test-{secrets.token_hex(4)}",
        "KRYONIX_PITR_REPO": str(base / "pgbackrest"),
        "KRYONIX_PITR_WORK_DIR": str(base / "pitr"),
        # plan schedules stay stopped in any instance a test starts (a tick would add sessions)
        "KRYONIX_SCHEDULES_RUNNING": "false",
    }
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def settings(test_env):
    """A fresh main database per run: its wrapped keys belong to this run's master key."""
    s = load_settings()
    pg.drop_database(s.pg_dsn, s.main_db)
    migrate(s)
    yield s
    pg.drop_database(s.pg_dsn, s.main_db)


@pytest.fixture
def own_registry(settings):
    """A main database of the test's own (registry, key vault, audit), dropped afterwards."""
    own = settings.with_overrides(main_db=f"{MAIN_DB}_{secrets.token_hex(4)}")
    migrate(own)
    yield own
    pg.drop_database(settings.pg_dsn, own.main_db)


@pytest.fixture
def tenant_factory(settings):
    """make(suffix='') -> a fresh unique tenant id; everything it owns is purged afterwards."""
    created: list[str] = []
    stem = "t" + secrets.token_hex(4)

    def make(suffix: str = "") -> str:
        tid = f"{stem}{suffix or len(created)}"
        created.append(tid)
        purge_tenant(settings, tid)
        return tid

    yield make
    for tid in created:
        purge_tenant(settings, tid)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600, stdin: str | None = None):
    """Run the installed console script, as an operator would."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [str(VENV_BIN / "kryonix-backup"), *args],
        capture_output=True, text=True, env=full_env, timeout=timeout,
        input=stdin if stdin is not None else "",
    )


def run_main(*args: str, env: dict[str, str] | None = None):
    """The console script's entry function (`kryonix_dagster.cli:main`) in this process: the same
    argv and environment give the same exit code, stdout and stderr as `run_cli`, without starting
    an interpreter (~0.5-1 s each). For long lists of bad-input cases; every command keeps at least
    one `run_cli` case, so the installed console script stays under test."""
    import contextlib
    import io
    import logging

    from kryonix_dagster import cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    cli_module._OUTPUT.json_emitted = False  # a fresh process starts with nothing printed
    handler = logging.StreamHandler(err)  # what main()'s basicConfig does in a fresh process
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli_module.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        logging.getLogger().removeHandler(handler)
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["kryonix-backup", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(test_env):
    return run_cli


@pytest.fixture
def cli_in_process(test_env):
    return run_main


@pytest.fixture
def dagster_home(tmp_path) -> Path:
    """An empty Dagster instance folder of the test's own (telemetry off)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


@pytest.fixture(scope="session")
def psql(test_env):
    """Run SQL through the psql binary: an independent path from the product's psycopg2."""

    def run(database: str, query: str) -> str:
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1",
             "-c", query],
            capture_output=True, text=True, check=True,
        )
        return out.stdout.strip()

    return run


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow(seconds): one of the suite's longest tests (seconds: its time on a loaded "
                   "2-core machine); collected first, longest first, so that pytest-xdist starts them "
                   "early and the run ends on short tests on every worker")


def slowness(item) -> float:
    marker = item.get_closest_marker("slow")
    if marker is None:
        return 0.0
    return float(marker.kwargs.get("seconds", marker.args[0] if marker.args else 1))


def shared_world(item) -> str | None:
    """The module of a test that uses a module-scoped world (a PITR cluster, Celery workers, a
    registry of 100,000 tenants…): its tests run on one xdist worker (`--dist loadgroup`), so the
    world is built once, not once per worker."""
    for defs in item._fixtureinfo.name2fixturedefs.values():
        if any(d.scope in ("module", "package") and d.baseid.startswith("tests") for d in defs):
            return item.module.__name__.rsplit(".", 1)[-1]
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Longest tests first (stable: otherwise collection order), so no worker starts a long test
    while the other is finishing: the wall time is then about the serial time / workers. Tests of
    one shared world form one xdist group (before xdist reads the groups)."""
    items.sort(key=lambda item: -slowness(item))
    for item in items:
        group = shared_world(item)
        if group and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_sessionfinish(session, exitstatus):
    leftovers = Path(ROOT / ".tmp_dagster_home")
    if leftovers.exists():
        shutil.rmtree(leftovers, ignore_errors=True)
