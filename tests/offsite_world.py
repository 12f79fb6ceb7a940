"""A world of its own for the off-site and runbook tests: its own main database, master key,
primary repository root and off-site copy behind the real append-only endpoint
(`scripts/offsite-endpoint.sh`, i.e. `rclone serve restic --append-only --htpasswd` as its own
system user, workers holding its client password), in front of a
folder or of a moto S3 bucket. One tenant is seeded, backed up and copied once per module.

Everything the world's CLI calls see comes from `World.env`; in-process engine calls use
`World.settings`, built from the same variables.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import requests

from kryonix_dagster.engine import pg
from kryonix_dagster.engine.config import load_settings
from kryonix_dagster.engine.migrations import migrate

from .conftest import ROOT, free_port, run_cli
from .helpers import purge_tenant

ENDPOINT_SCRIPT = ROOT / "scripts" / "offsite-endpoint.sh"


@dataclass
class Endpoint:
    url: str  # rest:http://USER:PASSWORD@127.0.0.1:PORT, what workers are given
    admin: str  # the same storage reached directly (file://… or s3:http://…/bucket)
    admin_env: dict[str, str]
    state: Path
    script_env: dict[str, str]
    home: Path  # the endpoint's folders (state, folder backend, client password): removed by stop()
    password: str  # the workers' client password

    @property
    def http(self) -> str:
        return self.url[len("rest:"):]

    @property
    def http_anonymous(self) -> str:
        """The endpoint's URL without the client credentials."""
        return "http://" + self.http.split("@", 1)[1]

    @property
    def pid(self) -> int:
        return int((self.state / "offsite-endpoint.pid").read_text())

    def stop(self) -> None:
        subprocess.run([str(ENDPOINT_SCRIPT), "stop"], env=self.script_env, check=False, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


def start_endpoint(s3: dict[str, str] | None = None) -> Endpoint:
    """The append-only endpoint, started by the same script `make demo` uses, as its own system
    user. Its folders sit in a folder of their own under /tmp (traversable, 0711): pytest's
    temporary root is 0700 root's, which the endpoint's user cannot enter."""
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="kryonix-offsite-"))
    home.chmod(0o711)
    state = home / "state"
    env = dict(os.environ, OFFSITE_PORT=str(port), OFFSITE_STATE=str(state), OFFSITE_DIR=str(home / "offsite"),
               OFFSITE_CLIENT_FILE=str(home / "client.secret"))
    admin_env: dict[str, str] = {}
    if s3:
        env.update(OFFSITE_S3_ENDPOINT=s3["endpoint"], OFFSITE_S3_BUCKET=s3["bucket"],
                   OFFSITE_S3_ACCESS_KEY=s3["access_key"], OFFSITE_S3_SECRET_KEY=s3["secret_key"])
        admin = f"s3:{s3['endpoint']}/{s3['bucket']}"
        admin_env = {"KRYONIX_REPO_SECONDARY_ADMIN_ACCESS_KEY": s3["access_key"],
                     "KRYONIX_REPO_SECONDARY_ADMIN_SECRET_KEY": s3["secret_key"]}
    else:
        admin = f"file://{home / 'offsite'}"
    proc = subprocess.run([str(ENDPOINT_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    password = (home / "client.secret").read_text().strip()
    assert password and password not in proc.stdout + proc.stderr
    return Endpoint(f"rest:http://kryonix-worker:{password}@127.0.0.1:{port}", admin, admin_env, state, env,
                    home, password)


def s3_bucket(moto_endpoint: str) -> dict[str, str]:
    bucket = f"offsite-{secrets.token_hex(4)}"
    creds = {"endpoint": moto_endpoint, "bucket": bucket, "access_key": "offsite-admin", "secret_key": "offsite-secret"}
    client = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=creds["access_key"],
                          aws_secret_access_key=creds["secret_key"], region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    return creds


@dataclass
class World:
    base: Path
    endpoint: Endpoint
    tenant_id: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self):
        return load_settings({**os.environ, **self.env})

    def cli(self, *args: str, env: dict[str, str] | None = None, **kwargs):
        return run_cli(*args, env={**self.env, **(env or {})}, **kwargs)

    def cli_json(self, *args: str, env: dict[str, str] | None = None):
        result = self.cli(*args, "--json", env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    @property
    def worker_env(self) -> dict[str, str]:
        """A worker's view: the append-only endpoint, no admin path."""
        return {"KRYONIX_REPO_SECONDARY_ADMIN": ""}


def make_world(base: Path, endpoint: Endpoint, tenant_id: str) -> World:
    """Own main database, master key and primary root; the tenant registered, seeded, backed up
    and copied off-site."""
    env = {
        "KRYONIX_MAIN_DB": f"kryonix_test_dr_{secrets.token_hex(4)}",
        "KRYONIX_REPO": f"file://{base / 'primary'}",
        "KRYONIX_MASTER_KEY_FILE": str(base / "keys" / "master.key"),
        "KRYONIX_STATE_DIR": str(base / "state"),
        "KRYONIX_REPO_SECONDARY": endpoint.url,
        "KRYONIX_REPO_SECONDARY_ADMIN": endpoint.admin,
        **endpoint.admin_env,
    }
    world = World(base, endpoint, tenant_id, env)
    migrate(world.settings)
    from kryonix_dagster.demo import seed_tenant
    seed_tenant(world.settings, tenant_id, scale=0.05)
    backup = world.cli("backup", tenant_id, "--json")
    assert backup.returncode == 0, backup.stderr
    copy = world.cli_json("copy", tenant_id)
    assert copy["copies"][0]["copied_sessions"], copy
    return world


def destroy_world(world: World, extra_main_dbs: tuple[str, ...] = ()) -> None:
    settings = world.settings
    try:
        purge_tenant(settings, world.tenant_id)
    finally:
        world.endpoint.stop()
        for name in (settings.main_db, *extra_main_dbs):
            pg.drop_database(settings.pg_dsn, name)


def rest_status(method: str, url: str, data: bytes | None = None) -> int:
    return requests.request(method, url, data=data, timeout=30).status_code


def new_master_key_file(path: Path) -> Path:
    import base64
    path.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session", name="dr_world")
def dr_world_fixture(settings, tmp_path_factory):
    """One world per test process, shared by test_offsite.py and test_runbook.py (their tests
    compare relative counts, so any order works)."""
    base = tmp_path_factory.mktemp("dr")
    endpoint = start_endpoint()
    world = None
    try:
        world = make_world(base, endpoint, "d" + secrets.token_hex(4))
        yield world
    finally:
        if world is not None:
            destroy_world(world)
        endpoint.stop()
