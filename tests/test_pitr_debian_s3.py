"""PITR on a Debian-managed cluster with an S3 pgBackRest repository (tests/pitr_debian_s3_world.py):
`pitr setup --restart` through pg_ctlcluster, the repository in the bucket over verified TLS, and
`pitr restore-cluster` restoring with `--delta` over a data directory that cannot be moved aside,
then starting the cluster with pg_ctlcluster, and a tenant's `restore --at` from the bucket.
Judged by the bucket (boto3), psql, pg_lsclusters."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time

import pytest

from kryonix_dagster.engine.pitr.config import load_pitr_config
from kryonix_dagster.engine.pitr.passphrase_stash import stanza_in_repository

from .pitr_debian_s3_world import BUCKET, PREFIX, S3_SECRET, VERSION, ctlcluster, debian_s3_world_fixture

__all__ = ["debian_s3_world_fixture"]  # the module-scoped `debian_s3_world` fixture


def _rows(tid: str, upto: int) -> list[str]:
    return [f"{i}:{tid}-t{i}" for i in range(upto + 1)]


def _switch_and_see_in_bucket(world, timeout: float = 60) -> str:
    """pg_switch_wal, then poll the bucket (not the server's own view) for that segment."""
    segment = world.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while not any(key.rsplit("/", 1)[-1].startswith(segment + "-") for key in world.keys()):
        assert time.monotonic() < deadline, f"WAL segment {segment} never reached the bucket"
        time.sleep(0.3)
    return segment


def test_setup_restarts_the_debian_cluster_through_pg_ctlcluster(debian_s3_world):
    world = debian_s3_world
    assert world.setup_without_restart.returncode == 1
    assert "restart" in world.setup_without_restart.stderr
    assert world.setup_with_restart.returncode == 0, world.setup_with_restart.stderr
    # restarted (a new postmaster) by pg_ctlcluster: its log file (pg_ctl alone never writes
    # there) says "ready" once more, and Debian's tools see the cluster online
    assert world.pid_before_setup and world.postmaster_pid() != world.pid_before_setup
    assert world.ready_lines() > world.ready_lines_before_setup
    assert world.cluster_status() == "online"
    assert world.psql("postgres", "SHOW archive_mode") == "on"
    assert world.psql("postgres", "SHOW archive_command").startswith("pgbackrest ")


def test_the_repository_is_in_the_bucket_and_pgbackrest_verifies_the_endpoint(debian_s3_world):
    world = debian_s3_world
    stanza, label = world.env["KRYONIX_PITR_STANZA"], world.backup["label"]
    config = world.config_file.read_text().splitlines()
    assert {"repo1-type=s3", f"repo1-s3-bucket={BUCKET}", "repo1-s3-endpoint=127.0.0.1", f"repo1-path={PREFIX}",
            f"repo1-storage-port={world.endpoint.rsplit(':', 1)[1]}",
            f"repo1-storage-ca-file={world.ca_file}"} <= set(config)
    assert not [line for line in config if "verify-tls" in line]
    keys = world.keys()
    root = PREFIX.strip("/")
    assert {f"{root}/backup/{stanza}/backup.info", f"{root}/archive/{stanza}/archive.info",
            f"{root}/backup/{stanza}/{label}/backup.manifest"} <= set(keys)
    assert [k for k in keys if k.startswith(f"{root}/archive/{stanza}/{VERSION}-1/")]  # WAL segments
    # what `pitr setup` asks before it would make a new passphrase: is the stanza in the bucket?
    cfg = load_pitr_config(world.settings, {**os.environ, **world.env})
    assert stanza_in_repository(world.settings, cfg) is True
    assert stanza_in_repository(world.settings, dataclasses.replace(cfg, stanza="never-created")) is False
    status = world.cli("pitr", "status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["repository"] == f"s3 bucket {BUCKET}{PREFIX}" and doc["archiving"]["healthy"] is True
    assert label in [b["label"] for b in doc["backups"]]
    outputs = [world.setup_without_restart, world.setup_with_restart, status]
    assert not [o for o in outputs if S3_SECRET in o.stdout + o.stderr]
    # the same repository through a CA bundle that does not sign the endpoint: refused
    untrusted = subprocess.run(["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={world.config_file}",
                                f"--stanza={stanza}", "--repo1-storage-ca-file=/etc/ssl/certs/ca-certificates.crt",
                                "--io-timeout=1", "repo-ls"], capture_output=True, text=True, timeout=120)
    assert untrusted.returncode != 0 and "unable to verify certificate" in untrusted.stdout + untrusted.stderr, (
        untrusted.stdout + untrusted.stderr)


def test_lost_cluster_restores_with_delta_over_the_mount_point_and_starts_with_pg_ctlcluster(debian_s3_world):
    world = debian_s3_world
    a, b = world.tenants["a"], world.tenants["b"]
    assert world.rows(a) == _rows(a, 1) and world.rows(b) == _rows(b, 1)  # t1: only in the archived WAL
    oid = world.psql("postgres", f"SELECT oid FROM pg_database WHERE datname = 'kryonix_cliente_{a}'")
    _switch_and_see_in_bucket(world)
    ctlcluster(world.name, "stop", "-m", "immediate")  # a crash, then a damaged data directory
    assert world.cluster_status() == "down"
    shutil.rmtree(world.data_dir / "base" / oid)
    (world.data_dir / "left-over").write_text("not PostgreSQL's")
    assert os.path.ismount(world.data_dir)  # cannot be renamed aside

    result = world.cli("pitr", "restore-cluster", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["delta"] is True and doc["moved_aside"] is None, doc
    assert doc["started_with"] == "pg_ctlcluster" and doc["archive_checked"] is True and doc["timeline"] >= 2
    assert world.cluster_status() == "online" and os.path.ismount(world.data_dir)
    assert world.rows(a) == _rows(a, 1) and world.rows(b) == _rows(b, 1)
    assert not (world.data_dir / "left-over").exists()  # --delta removes what the backup does not hold
    assert world.psql("postgres", "SELECT pg_is_in_recovery()") == "f"
    # the new timeline archives into the bucket
    world.psql(f"kryonix_cliente_{a}", f"INSERT INTO app.orders VALUES (2, '{a}-t2')")
    assert int(_switch_and_see_in_bucket(world)[:8], 16) == doc["timeline"]


def test_a_tenant_restored_as_of_a_moment_from_the_bucket(debian_s3_world):
    """Per-tenant PITR (`--db-include` into a scratch cluster) from the bundled S3 base backup and
    the WAL in the bucket: tenant b as of T (after t1, before t2); tenant a untouched."""
    world = debian_s3_world
    a, b = world.tenants["a"], world.tenants["b"]
    rows_of_a = world.rows(a)
    moment = world.psql("postgres", "SELECT clock_timestamp()")
    deadline = time.monotonic() + 5
    while world.psql("postgres", f"SELECT clock_timestamp() > '{moment}'::timestamptz") != "t":
        assert time.monotonic() < deadline
    world.psql(f"kryonix_cliente_{b}", f"INSERT INTO app.orders VALUES (2, '{b}-t2')")
    at = world.psql("postgres", f"SELECT to_char('{moment}'::timestamptz AT TIME ZONE 'UTC', "
                                "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    result = world.cli("restore", b, "--at", at, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["into"] == b
    assert world.rows(b) == _rows(b, 1)
    assert world.rows(a) == rows_of_a


def test_an_s3_repository_location_names_its_port_and_ca_file_and_refuses_plain_http():
    from kryonix_dagster.engine.pgbackrest import RepoLocation

    repo = RepoLocation.parse("s3:https://minio.internal:9000/backups/pitr/main?ca-file=/etc/ssl/minio-ca.pem")
    assert (repo.kind, repo.endpoint, repo.port, repo.bucket, repo.path, repo.ca_file) == (
        "s3", "minio.internal", 9000, "backups", "/pitr/main", "/etc/ssl/minio-ca.pem")
    assert repo.endpoint_url == "https://minio.internal:9000"
    assert RepoLocation.parse("s3:https://s3.amazonaws.com/b").endpoint_url == "https://s3.amazonaws.com"
    for raw, fragment in (("s3:http://127.0.0.1:9000/b/p", "TLS only"), ("s3:https://h/b?verify=n", "unknown option"),
                          ("s3:https://h/b?ca-file=ca.pem", "absolute"), ("s3:https://h:x/b", "bad port"),
                          ("s3:https://h/", "expected")):
        with pytest.raises(ValueError, match=fragment):
            RepoLocation.parse(raw)
