"""Fixtures of the worker tests: a Dagster instance on PostgreSQL that every process reaches,
and two real Celery worker processes (distinct node names) on a queue of the module's own,
in the product's broker vhost."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from celery import Celery

from kryonix_dagster.engine import pg
from kryonix_dagster.engine.naming import DAGSTER_BROKER_VHOST
from kryonix_dagster.workers.broker import broker_url, ensure_vhost

ROOT = Path(__file__).resolve().parent.parent
# seconds: a held lease survives a loaded machine (renewed every 10 s); the kill test waits
# for a killed worker's lease to expire (the redo polls for it, up to the batch's 600 s)
LEASE_TTL = 30

INSTANCE_YAML = """\
storage:
  postgres:
    postgres_db:
      hostname: 127.0.0.1
      port: 5432
      username: postgres
      password: ""
      db_name: {db}
      scheme: postgresql+psycopg2
telemetry:
  enabled: false
"""


@pytest.fixture(scope="module")
def pg_dagster_home(settings, tmp_path_factory):
    """DAGSTER_HOME of the module's own, its storage in a PostgreSQL database of its own."""
    db = "kryonix_test_dagster_" + secrets.token_hex(4)
    pg.create_database(settings.pg_dsn, db)
    home = tmp_path_factory.mktemp("dagster_home_pg")
    (home / "dagster.yaml").write_text(INSTANCE_YAML.format(db=db))
    yield home
    pg.drop_database(settings.pg_dsn, db)


@dataclass
class Workers:
    env: dict[str, str]
    queue: str
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    # node names unique to this fixture: two pytest-xdist workers may each run some of the
    # module's tests, and a node name's control queue is exclusive in the shared broker vhost
    token: str = field(default_factory=lambda: secrets.token_hex(3))

    def node(self, name: str) -> str:
        return f"{name}-{self.token}"

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "kryonix_dagster.workers.app", "worker",
             "-Q", self.queue, "-n", f"{self.node(name)}@%h", "-c", "1", "--without-gossip", "--without-mingle",
             "--loglevel", "INFO"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ensure_running(self, names=("w1", "w2"), seconds: float = 180) -> None:
        for name in names:
            if name not in self.procs or self.procs[name].poll() is not None:
                self.start(name)
        app = Celery("ping", broker=broker_url())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            replies = app.control.ping(destination=[f"{self.node(n)}@{os.uname().nodename}" for n in names],
                                       timeout=1.0)
            if len(replies) == len(names):
                return
        raise AssertionError(f"celery workers {names} did not answer; see {self.logs}")

    def kill(self, name: str) -> None:
        """kill -9 of the worker and everything it started (its pool child, restic): a lost host."""
        assert self.procs[name].poll() is None, f"worker {name} ended before the kill"
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(timeout=30)

    def group_of(self, pid: int) -> str | None:
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return None
        return next((n for n, p in self.procs.items() if p.pid == pgid), None)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def celery_workers(test_env, settings, pg_dagster_home, tmp_path_factory):
    # a broker user of the module's own (others share this RabbitMQ): created by the product's
    # setup, its password derived from this run's master key, removed afterwards
    broker_user = "kryonix-broker-test-" + secrets.token_hex(4)
    os.environ["KRYONIX_CELERY_BROKER_USER"] = broker_user  # the workers and the executor here use it
    ensure_vhost()
    queue = "kryonix_test_" + secrets.token_hex(4)
    os.environ["KRYONIX_CELERY_QUEUE"] = queue  # the executor in this process sends there
    env = dict(os.environ, DAGSTER_HOME=str(pg_dagster_home), PYTHONPATH=str(ROOT),
               KRYONIX_CELERY_QUEUE=queue, KRYONIX_LEASE_TTL_SECONDS=str(LEASE_TTL))
    workers = Workers(env, queue, tmp_path_factory.mktemp("celery_logs"))
    try:
        for name in ("w1", "w2"):
            workers.start(name)  # they boot while the tests seed their tenants (ensure_running waits)
        yield workers
    finally:
        workers.stop()
        os.environ.pop("KRYONIX_CELERY_QUEUE", None)
        os.environ.pop("KRYONIX_CELERY_BROKER_USER", None)
        auth = (settings.rabbitmq_api_user, settings.rabbitmq_api_password)
        requests.delete(f"{settings.rabbitmq_api}/api/queues/{quote(DAGSTER_BROKER_VHOST, safe='')}/{queue}",
                        auth=auth, timeout=10)
        requests.delete(f"{settings.rabbitmq_api}/api/users/{broker_user}", auth=auth, timeout=10)
