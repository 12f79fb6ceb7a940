"""A Debian-managed cluster (`pg_createcluster` on a free port, never 15/main) whose WAL pgBackRest
archives into an S3 repository: moto_server behind TLS (socat) with a certificate of the world's
own, which pgBackRest verifies (`KRYONIX_PITR_REPO=s3:https://…?ca-file=…`).

The data directory is a tmpfs mounted for the world: it cannot be renamed aside, so
`pitr restore-cluster` must restore over it with `--delta`. `pitr setup --restart` restarts the
cluster through pg_ctlcluster; one full base backup; rows t1 written after it (so a restore
must replay WAL fetched from the bucket). The cluster is dropped afterwards
(`pg_dropcluster --stop`), the mount and folder removed.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from kryonix_dagster.engine import registry
from kryonix_dagster.engine.config import load_settings
from kryonix_dagster.engine.migrations import migrate

from .conftest import VENV_BIN, free_port, run_cli
from .pitr_world import PG_BIN, PitrWorld, as_postgres

VERSION = PG_BIN.parent.name
BUCKET, PREFIX = "kryonix-pitr", "/wal"
S3_KEY, S3_SECRET = "pitr-access", "pitr-secret-do-not-print"
READY = "database system is ready to accept connections"


@dataclass
class DebianS3World:
    name: str  # the Debian cluster's name (version VERSION)
    base: Path
    port: int
    env: dict[str, str]
    settings: object
    tenants: dict[str, str]
    ca_file: Path
    endpoint: str
    setup_without_restart: subprocess.CompletedProcess | None
    setup_with_restart: subprocess.CompletedProcess | None
    pid_before_setup: int
    ready_lines_before_setup: int
    backup: dict

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return Path(f"/var/log/postgresql/postgresql-{VERSION}-{self.name}.log")

    @property
    def config_file(self) -> Path:
        return Path(self.env["KRYONIX_PITR_WORK_DIR"]) / f"pgbackrest-{self.env['KRYONIX_PITR_STANZA']}.conf"

    # the same independent paths as the initdb world's (psql binary on the world's port)
    cli, psql, rows = PitrWorld.cli, PitrWorld.psql, PitrWorld.rows

    def s3(self):
        """boto3 on the bucket, verifying the endpoint with the world's CA (an independent path)."""
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                            region_name="us-east-1", verify=str(self.ca_file),
                            config=Config(s3={"addressing_style": "path"}))

    def keys(self) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX.strip("/") + "/")
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def cluster_status(self) -> str:
        """pg_lsclusters' status column for the world's cluster (online/down)."""
        out = subprocess.run(["pg_lsclusters", "--no-header", VERSION, self.name], capture_output=True, text=True,
                             check=True)
        return out.stdout.split()[3]

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])

    def ready_lines(self) -> int:
        """How often the cluster said it is ready in pg_ctlcluster's log file (pg_ctl alone never writes there)."""
        return self.log_file.read_text(errors="replace").count(READY) if self.log_file.exists() else 0


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("127.0.0.1"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "ca.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.chmod(0o644)
    return cert_file, key_file


def _moto_tls(cert: Path, key: Path) -> tuple[list[subprocess.Popen], str]:
    """moto_server on loopback behind socat's TLS. (moto's own `--ssl` server closes connections
    without a TLS close_notify, which pgBackRest, on OpenSSL 3, reports as an error.)"""
    inner, port = free_port(), free_port()
    endpoint = f"https://127.0.0.1:{port}"
    procs = [subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(inner)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen(["socat", f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,"
                                        f"cert={cert},key={key}", f"TCP:127.0.0.1:{inner}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(endpoint, timeout=1, verify=str(cert))
            return procs, endpoint
        except requests.RequestException:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                for proc in procs:
                    proc.kill()
                raise RuntimeError("moto_server behind socat (TLS) did not start")
            time.sleep(0.2)


def ctlcluster(name: str, action: str, *extra: str) -> None:
    with tempfile.TemporaryFile() as out:  # the postmaster inherits no pipe of ours
        proc = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", VERSION, name, action, *extra],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        out.seek(0)
        assert proc.returncode == 0, out.read().decode(errors="replace")


def _new_debian_cluster(base: Path, name: str, port: int) -> None:
    data = base / "data"
    owner = pwd.getpwnam("postgres")
    uid, gid = owner.pw_uid, owner.pw_gid
    data.mkdir(mode=0o700)
    os.chown(data, uid, gid)  # the mount point too: pg_dropcluster refuses a root-owned one
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=512m,mode=0700,uid={uid},gid={gid}", "kryonix-pitr",
                    str(data)], check=True, capture_output=True)
    subprocess.run(["pg_createcluster", VERSION, name, "-p", str(port), "-d", str(data),
                    "-o", "fsync=off", "-o", "shared_buffers=32MB",
                    "-o", "max_connections=40", "--", "--no-sync"], check=True, capture_output=True)
    hba = Path(f"/etc/postgresql/{VERSION}/{name}/pg_hba.conf")
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    ctlcluster(name, "start")


def _drop_debian_cluster(base: Path, name: str) -> None:
    """Stop the cluster and any scratch cluster under the world, unmount, drop, remove; says
    what is left when a step fails (a cluster must never outlive its world)."""
    for data in base.glob("pitr-work/scratch/*/data"):
        with tempfile.TemporaryFile() as out:
            subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"),
                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    with tempfile.TemporaryFile() as out:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", VERSION, name, "stop", "-m", "immediate"],
                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    problems = []
    if os.path.ismount(base / "data"):
        unmounted = subprocess.run(["umount", str(base / "data")], capture_output=True, text=True)
        if unmounted.returncode != 0:
            problems.append(f"umount: {unmounted.stderr.strip()}")
    dropped = subprocess.run(["pg_dropcluster", "--stop", VERSION, name], capture_output=True, text=True)
    if Path(f"/etc/postgresql/{VERSION}/{name}").exists():
        problems.append(f"pg_dropcluster: {dropped.stdout.strip()} {dropped.stderr.strip()}")
    shutil.rmtree(base, ignore_errors=True)
    assert not problems, f"cluster {VERSION}/{name} left behind: {problems}"


@pytest.fixture(scope="module", name="debian_s3_world")
def debian_s3_world_fixture():
    if os.geteuid() != 0 or not shutil.which("pg_createcluster"):
        pytest.fail("needs root and Debian's postgresql-common (pg_createcluster, mount): the suite runs as root")
    token = secrets.token_hex(4)
    name, port = f"kryonix{token}", free_port()
    base = Path(tempfile.mkdtemp(prefix="kryonix-deb-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    shutil.chown(base, "postgres", "postgres")
    base.chmod(0o755)
    moto = None
    try:
        cert, key = _self_signed(base)
        moto, endpoint = _moto_tls(cert, key)
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                     region_name="us-east-1", verify=str(cert)).create_bucket(Bucket=BUCKET)
        _new_debian_cluster(base, name, port)
        env = {
            "KRYONIX_PG_DSN": f"postgresql://postgres@127.0.0.1:{port}/postgres",
            "KRYONIX_MAIN_DB": f"kryonix_pitr_main_{token}",
            "KRYONIX_REPO": f"file://{base / 'repos'}",
            # the repository's own keys (REVIEW A9), and the restic repository's, which the
            # engine passes to pgBackRest until config.py reads the former
            "KRYONIX_PITR_REPO_ACCESS_KEY": S3_KEY, "KRYONIX_PITR_REPO_SECRET_KEY": S3_SECRET,
            "KRYONIX_REPO_ACCESS_KEY": S3_KEY, "KRYONIX_REPO_SECRET_KEY": S3_SECRET,
            "KRYONIX_MASTER_KEY_FILE": str(base / "keys" / "master.key"),
            "KRYONIX_APP_DATA_DIR": str(base / "appdata"),
            "KRYONIX_STATE_DIR": str(base / "state"),
            "KRYONIX_PITR_STANZA": f"test-{token}",
            "KRYONIX_PITR_REPO": f"s3:{endpoint}/{BUCKET}{PREFIX}?ca-file={cert}",
            "KRYONIX_PITR_WORK_DIR": str(base / "pitr-work"),
            "KRYONIX_REDIS_URL": "redis://127.0.0.1:6379/0",
        }
        settings = load_settings({**os.environ, **env})
        migrate(settings)
        tenants = {role: f"d{token}{i}" for i, role in enumerate(("a", "b"))}
        for tid in tenants.values():
            registry.add_tenant(settings, tid, f"PITR {tid}", "enterprise")
        world = DebianS3World(name, base, port, env, settings, tenants, cert, endpoint, None, None, 0, 0, {})
        world.pid_before_setup, world.ready_lines_before_setup = world.postmaster_pid(), world.ready_lines()
        world.setup_without_restart = run_cli("pitr", "setup", env=env)
        world.setup_with_restart = run_cli("pitr", "setup", "--restart", env=env)
        assert world.setup_with_restart.returncode == 0, (world.setup_without_restart.stderr, world.setup_with_restart.stderr)
        for tid in tenants.values():
            world.psql("postgres", f"CREATE DATABASE kryonix_cliente_{tid}")
            world.psql(f"kryonix_cliente_{tid}", "CREATE SCHEMA app; CREATE TABLE app.orders "
                                                 f"(id int PRIMARY KEY, note text NOT NULL); "
                                                 f"INSERT INTO app.orders VALUES (0, '{tid}-t0')")
        backup = run_cli("pitr", "backup", "--type", "full", "--json", env=env)
        assert backup.returncode == 0, backup.stderr
        world.backup = json.loads(backup.stdout)
        for tid in tenants.values():  # after the base backup: only the archived WAL has them
            world.psql(f"kryonix_cliente_{tid}", f"INSERT INTO app.orders VALUES (1, '{tid}-t1')")
        yield world
    finally:
        _drop_debian_cluster(base, name)
        for proc in moto or ():
            proc.terminate()
            proc.wait(timeout=10)
