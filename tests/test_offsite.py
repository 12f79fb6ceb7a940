"""The off-site copy through the real append-only endpoint (rclone serve restic --append-only),
in front of a folder and in front of a moto S3 bucket: whole restore points copied, the
`--from secondary` forms, a worker's credentials unable to delete or overwrite anything, the endpoint
refusing clients without its password and keeping its secrets from the workers' user, and no
worker or Dagster run given the admin path."""
from __future__ import annotations

import json
import os
import pwd
import secrets
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
import requests

from kryonix_dagster.engine import keys, registry
from kryonix_dagster.engine.naming import repository_in
from kryonix_dagster.engine.repository import restic_location
from kryonix_dagster.engine.tenant_repository import open_repository

from .conftest import ROOT
from .helpers import purge_tenant
from .offsite_world import rest_status, s3_bucket, start_endpoint
from .recovery_checks import assert_restored, lose_everything, restic_snapshots, sessions_in

pytest_plugins = ["tests.offsite_world"]  # the world shared with the other off-site module, set up once


@pytest.fixture
def world(dr_world):
    return dr_world


def sessions(points: list[dict]) -> list[str]:
    return [p["session"] for p in points]


def worker_restic(world, *args: str) -> subprocess.CompletedProcess:
    """restic with only what a worker has: the endpoint URL and the tenant's password."""
    env = dict(os.environ, RESTIC_REPOSITORY=f"{world.endpoint.url}/cliente_{world.tenant_id}",
               RESTIC_PASSWORD=keys.repository_password(world.settings, world.tenant_id))
    return subprocess.run(["restic", "--no-cache", *args], env=env, capture_output=True, text=True, timeout=120)


def test_copy_holds_whole_restore_points_and_the_secondary_reads_like_the_primary(world):
    primary = world.cli_json("snapshots", world.tenant_id)
    secondary = world.cli_json("snapshots", world.tenant_id, "--from", "secondary")
    assert sessions(secondary) == sessions(primary) and primary
    # restic copy gave new ids: the manifest's tier ids must have been translated to be readable
    assert secondary[0]["manifest_snapshot"] != primary[0]["manifest_snapshot"]
    verified = world.cli_json("verify", world.tenant_id, "--from", "secondary", env=world.worker_env)
    assert verified["ok"] and verified["restore_points"] == len(primary) and not verified["unfinished_sessions"], verified
    again = world.cli_json("copy", world.tenant_id)
    assert again["copies"][0]["copied_sessions"] == [] and again["copies"][0]["restore_points_secondary"] == len(primary)
    status = world.cli_json("status")
    lag = next(t for t in status["tenants"] if t["id"] == world.tenant_id)["offsite"]
    assert lag["secondary_latest"] == primary[0]["session"] and lag["lag_hours"] == 0 and lag["ok"]


def test_a_worker_cannot_delete_or_overwrite_anything_off_site(world):
    before = json.loads(worker_restic(world, "snapshots", "--json").stdout)
    assert before, "the copy holds snapshots"
    # without the endpoint's client password: refused, reading as much as deleting
    snap = before[0]["id"]
    anonymous = f"{world.endpoint.http_anonymous}/cliente_{world.tenant_id}"
    wrong = world.endpoint.http.replace(world.endpoint.password, "x" + world.endpoint.password[1:])
    assert rest_status("GET", f"{anonymous}/config") == 401
    assert rest_status("GET", f"{wrong}/cliente_{world.tenant_id}/config") == 401
    assert rest_status("DELETE", f"{anonymous}/snapshots/{snap}") == 401
    # the client password is never printed, not even where an error names the endpoint
    elsewhere = world.cli("snapshots", world.tenant_id, "--from", "secondary",
                          env={"KRYONIX_REPO_SECONDARY": f"{world.endpoint.url}/elsewhere"})
    assert elsewhere.returncode == 1 and "127.0.0.1" in elsewhere.stderr, elsewhere.stderr
    assert world.endpoint.password not in elsewhere.stdout + elsewhere.stderr, elsewhere.stderr
    # with it: reads, and every delete or overwrite is still refused
    refusal = forget_is_refused(world, before[0]["id"])
    assert "403" in refusal, refusal
    after = json.loads(worker_restic(world, "snapshots", "--json").stdout)
    assert {s["id"] for s in after} == {s["id"] for s in before}
    repo = f"{world.endpoint.http}/cliente_{world.tenant_id}"
    assert rest_status("GET", f"{repo}/config") == 200
    assert rest_status("DELETE", f"{repo}/snapshots/{snap}") == 403
    assert rest_status("POST", f"{repo}/snapshots/{snap}", data=b"{}") == 403  # no overwrite
    assert rest_status("DELETE", f"{repo}/config") in (403, 405)
    vault = world.endpoint.http + "/kryonix-vault/keys/"
    stash = requests_json(vault)
    assert stash and stash[0]["name"].startswith(world.tenant_id)
    assert rest_status("POST", vault + stash[0]["name"], data=b"{}") == 403
    assert rest_status("GET", f"{repo}/snapshots/{snap}") == 200  # still there, unchanged
    # retention on the copy: refused with only the worker's path (done through the admin path:
    # test_copy_all_then_retention_on_the_copy_removes_old_restore_points)
    refused = world.cli("forget", world.tenant_id, "--repo", "secondary", env=world.worker_env)
    assert refused.returncode == 2 and "KRYONIX_REPO_SECONDARY_ADMIN" in refused.stderr


def forget_is_refused(world, snapshot_id: str, timeout: float = 60) -> str:
    """`restic forget --prune` with a worker's credentials: restic retries a refused delete with
    back-off for ~40 s; the first refusal it reports is the proof, then it is stopped (and its
    stale lock, which the endpoint lets a worker remove, cleared)."""
    env = dict(os.environ, RESTIC_REPOSITORY=f"{world.endpoint.url}/cliente_{world.tenant_id}",
               RESTIC_PASSWORD=keys.repository_password(world.settings, world.tenant_id))
    proc = subprocess.Popen(["restic", "--no-cache", "forget", "--prune", snapshot_id], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stderr:
            seen.append(line)
            if "403" in line or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    unlock = worker_restic(world, "unlock")
    assert unlock.returncode == 0, unlock.stderr
    return "".join(seen)[-2000:]


def requests_json(url: str):
    return requests.get(url, headers={"Accept": "application/vnd.x.restic.rest.v2"}, timeout=30).json()


def test_off_site_commands_refuse_bad_input(world):
    no_secondary = {"KRYONIX_REPO_SECONDARY": ""}
    for args in (("copy", world.tenant_id),):
        result = world.cli(*args, env=no_secondary)
        assert result.returncode == 2 and "KRYONIX_REPO_SECONDARY" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    for args in (("copy", "Bad!"), ("snapshots", world.tenant_id, "--from", "tertiary"), ("keys", "rotate")):
        result = world.cli(*args)
        assert result.returncode == 2, (args, result.stderr)
    password = keys.repository_password(world.settings, world.tenant_id)
    again = world.cli("keys", "recover")  # over a live vault: nothing is missing, nothing is overwritten
    assert again.returncode == 0 and "nothing was missing" in again.stdout, again.stderr
    assert keys.repository_password(world.settings, world.tenant_id) == password
    result = world.cli("copy", world.tenant_id, "--json")
    assert result.returncode == 0 and password not in result.stdout + result.stderr


def test_copy_to_s3_through_the_append_only_endpoint(world, moto_endpoint, tmp_path):
    """The same tenant, copied to a second secondary: a moto bucket behind the real endpoint."""
    bucket = s3_bucket(moto_endpoint)
    endpoint = start_endpoint(s3=bucket)
    try:
        env = {"KRYONIX_REPO_SECONDARY": endpoint.url, "KRYONIX_REPO_SECONDARY_ADMIN": endpoint.admin,
               **endpoint.admin_env, "KRYONIX_STATE_DIR": str(tmp_path / "state")}
        copied = world.cli_json("copy", world.tenant_id, env=env)
        assert copied["copies"][0]["copied_sessions"]
        secondary = world.cli_json("snapshots", world.tenant_id, "--from", "secondary", env=env)
        assert sorted(sessions(secondary)) == sorted(copied["copies"][0]["copied_sessions"])  # any number of points
        client = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=bucket["access_key"],
                              aws_secret_access_key=bucket["secret_key"], region_name="us-east-1")
        listed = client.list_objects_v2(Bucket=bucket["bucket"], Prefix=f"cliente_{world.tenant_id}/snapshots/")
        # every snapshot of the copied restore points, and nothing else (a killed session's tier
        # snapshots, which another test of this world may leave in the primary, are never copied)
        assert len(listed.get("Contents", [])) == len(snapshots_of_sessions(world, copied["copies"][0]["copied_sessions"]))
        snap = listed["Contents"][0]["Key"].rsplit("/", 1)[-1]
        assert rest_status("DELETE", f"{endpoint.http}/cliente_{world.tenant_id}/snapshots/{snap}") == 403
        vault = client.list_objects_v2(Bucket=bucket["bucket"], Prefix="kryonix-vault/keys/")
        assert [o["Key"] for o in vault["Contents"]][0].startswith(f"kryonix-vault/keys/{world.tenant_id}-")
        assert_endpoint_keeps_its_secrets(endpoint, [bucket["access_key"], bucket["secret_key"], endpoint.password])
        # the tenant's data lost everywhere: a worker restores it from the S3 copy alone
        assert secondary[0]["session"] == world.cli_json("snapshots", world.tenant_id)[0]["session"]
        before = lose_everything(world.settings, world.tenant_id)
        restored = world.cli("restore", world.tenant_id, "--from", "secondary", "--yes", "--json",
                             env={**env, **world.worker_env})
        assert restored.returncode == 0, restored.stderr[-2000:]
        assert json.loads(restored.stdout)["session"] == secondary[0]["session"]
        assert_restored(world.settings, world.tenant_id, before)
    finally:
        endpoint.stop()


def assert_endpoint_keeps_its_secrets(endpoint, secrets_: list[str]) -> None:
    """The endpoint runs as its own system user; its command line and environment hold none of
    the bucket's admin keys nor the client password (they sit in its 0600 files); the workers'
    user (here `nobody`, not root) can read neither its environment nor those files."""
    proc = Path(f"/proc/{endpoint.pid}")
    cmdline = (proc / "cmdline").read_bytes()
    assert cmdline.split(b"\0")[:3] == [b"rclone", b"serve", b"restic"] and b"--htpasswd" in cmdline
    owner = pwd.getpwuid(proc.stat().st_uid)
    assert owner.pw_name == "kryonix-offsite" and owner.pw_shell == "/usr/sbin/nologin"
    environ = (proc / "environ").read_bytes()  # read as root: everything there is
    assert b"PATH=" in environ
    for secret in secrets_:
        assert secret.encode() not in cmdline + environ, secret
    conf = endpoint.state / "rclone.conf"
    assert secrets_[1] in conf.read_text()  # where the admin keys are kept instead
    for path in (conf, endpoint.state / "htpasswd"):
        assert (path.stat().st_mode & 0o777, pwd.getpwuid(path.stat().st_uid).pw_name) == (0o600, "kryonix-offsite")
    for path in (proc / "environ", conf, endpoint.state / "htpasswd"):
        denied = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(path)],
                                capture_output=True, text=True, timeout=30)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (path, denied.stderr)
    assert (proc / "cmdline").read_bytes() == cmdline  # the same endpoint process throughout


def test_workers_and_dagster_runs_get_no_admin_secret(world, tmp_path, settings):
    """A Celery worker started by the setup script from a shell that holds the copy's admin path and
    keys, and the command line `make dev` runs Dagster with: neither environment holds them (read
    from the real worker's /proc/PID/environ), both hold the workers' endpoint URL."""
    token = secrets.token_hex(4)
    admin = {"KRYONIX_REPO_SECONDARY_ADMIN": world.endpoint.admin,
             "KRYONIX_REPO_SECONDARY_ADMIN_ACCESS_KEY": f"admin-key-{token}",
             "KRYONIX_REPO_SECONDARY_ADMIN_SECRET_KEY": f"admin-secret-{token}",
             "OFFSITE_S3_SECRET_KEY": f"endpoint-secret-{token}"}
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").touch()
    broker_user = f"kryonix-broker-test-{token}"
    env = {**os.environ, **world.env, **admin, "DAGSTER_HOME": str(home), "KRYONIX_WORKERS_DIR": str(tmp_path / "w"),
           "KRYONIX_CELERY_QUEUE": f"kryonix_test_{token}", "KRYONIX_CELERY_BROKER_USER": broker_user,
           "KRYONIX_BIN": str(Path(sys.executable).parent)}
    script = ROOT / "scripts" / "workers.sh"
    try:
        started = subprocess.run([str(script), "start", "1"], env=env, capture_output=True, text=True, timeout=240)
        assert started.returncode == 0, started.stderr + started.stdout
        pid = int((tmp_path / "w" / "kryonix-w1.pid").read_text())
        assert_no_admin_secret(Path(f"/proc/{pid}/environ").read_bytes(), admin, world.endpoint.url)
        assert b"kryonix_dagster.workers.app" in Path(f"/proc/{pid}/cmdline").read_bytes()  # still that worker
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=120)
        requests.delete(f"{settings.rabbitmq_api}/api/users/{broker_user}", timeout=10,
                        auth=(settings.rabbitmq_api_user, settings.rabbitmq_api_password))
        requests.delete(f"{settings.rabbitmq_api}/api/queues/%2Fkryonix_dagster/kryonix_test_{token}", timeout=10,
                        auth=(settings.rabbitmq_api_user, settings.rabbitmq_api_password))
    # what a deployment's worker host is given: no admin setting in deploy/*.env, and the unit drops them
    for env_file in (ROOT / "deploy").glob("*.env"):
        assigned = {line.split("=", 1)[0] for line in env_file.read_text().splitlines() if "=" in line
                    and not line.startswith("#")}
        assert assigned and not assigned & set(admin), env_file
    unit = (ROOT / "deploy" / "kryonix-worker@.service").read_text()
    [unset] = [line for line in unit.splitlines() if line.startswith("UnsetEnvironment=")]
    assert set(admin) - {"OFFSITE_S3_SECRET_KEY"} <= set(unset.split("=", 1)[1].split())
    # `make dev`'s Dagster command, run with a printer of its environment in Dagster's place
    client_file = world.endpoint.home / "client.secret"
    planned = subprocess.run(["make", "-n", "dev", f"OFFSITE_CLIENT_FILE={client_file}", "OFFSITE_PORT=1"],
                             cwd=ROOT, env={**os.environ, **admin}, capture_output=True, text=True, timeout=60)
    [dagster_line] = [line for line in planned.stdout.splitlines() if "/dagster dev " in line]
    printer = f"{sys.executable} -c 'import os, sys; sys.stdout.buffer.write(open(\"/proc/self/environ\", \"rb\").read())'"
    shown = subprocess.run(["bash", "-c", dagster_line.split(" .venv/bin/dagster dev ")[0] + " " + printer],
                           env={k: v for k, v in {**os.environ, **admin}.items() if k != "KRYONIX_REPO_SECONDARY"},
                           capture_output=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert_no_admin_secret(shown.stdout, admin, f"rest:http://kryonix-worker:{world.endpoint.password}@127.0.0.1:1")


def assert_no_admin_secret(environ: bytes, admin: dict[str, str], worker_url: str) -> None:
    entries = environ.split(b"\0")
    assert f"KRYONIX_REPO_SECONDARY={worker_url}".encode() in entries  # the worker's own path is there
    for name, value in admin.items():
        assert not any(e.startswith(name.encode() + b"=") for e in entries), name
        assert value.encode() not in environ, name


def snapshots_of_sessions(world, session_ids: list[str]) -> list[dict]:
    """The primary's snapshots (manifests and tier snapshots) tagged with one of these sessions."""
    listing = world.cli("restic", world.tenant_id, "--", "snapshots", "--json")
    assert listing.returncode == 0, listing.stderr
    wanted = {f"session={s}" for s in session_ids}
    return [snap for snap in json.loads(listing.stdout) if wanted & set(snap.get("tags") or [])]


def fake_restore_point(world, tenant_id: str, when: datetime) -> str:
    """A restore point with no tier (a valid manifest, back-dated with restic's --time)."""
    sid = f"{when:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    manifest = {"tenant_id": tenant_id, "session_id": sid, "backup_type": "full", "started_at": when.isoformat(),
                "finished_at": when.isoformat(), "status": "complete", "tiers": {}}
    made = world.cli("restic", tenant_id, "--", "backup", "--stdin", "--stdin-filename", "manifest.json",
                     "--host", "kryonix", "--time", when.strftime("%Y-%m-%d %H:%M:%S"),
                     "--tag", f"kind=manifest,session={sid},type=full,status=complete,consistent=yes",
                     stdin=json.dumps(manifest))
    assert made.returncode == 0, made.stderr
    return sid


def test_copy_all_then_retention_on_the_copy_removes_old_restore_points(world, tmp_path):
    """`copy --all` brings every active tenant's restore points to a copy of its own (its vault
    is append-only: a tenant stashed in the world's copy would come back in `keys recover`); the
    basic plan's `forget --repo secondary` (admin path) then removes a restore point older than
    48 hours that a later one of the same day supersedes. Both read back with restic itself."""
    settings = world.settings
    endpoint = start_endpoint()
    env = {"KRYONIX_REPO_SECONDARY": endpoint.url, "KRYONIX_REPO_SECONDARY_ADMIN": endpoint.admin,
           "KRYONIX_STATE_DIR": str(tmp_path / "state")}
    small = "r" + secrets.token_hex(4)
    try:
        registry.add_tenant(settings, small, "Retencao fora", "basic")
        open_repository(settings, small, create=True)
        now = datetime.now(timezone.utc)
        day = (now - timedelta(days=20)).replace(hour=11, minute=0, second=0, microsecond=0)
        older, newer = (fake_restore_point(world, small, day + timedelta(hours=h)) for h in (0, 1))
        recent = fake_restore_point(world, small, now - timedelta(hours=1))
        active = [t["id"] for t in world.cli_json("tenants", "list") if t["status"] == "ativo"]
        assert {small, world.tenant_id} <= set(active)
        copied = world.cli_json("copy", "--all", env=env)
        assert sorted(c["tenant"] for c in copied["copies"]) == sorted(active), copied
        for tid in active:  # read with restic on the copy's admin path, and as a worker reads it
            password = keys.repository_password(settings, tid)
            primary = sessions_in(restic_snapshots(restic_location(repository_in(settings.repo, tid)), password))
            copy_location = restic_location(repository_in(endpoint.admin, tid))
            assert primary and sessions_in(restic_snapshots(copy_location, password)) == primary, tid
            assert set(next(c for c in copied["copies"] if c["tenant"] == tid)["copied_sessions"]) == primary
            from_secondary = world.cli_json("snapshots", tid, "--from", "secondary",
                                            env={**env, **world.worker_env})
            assert {p["session"] for p in from_secondary} == primary, tid
        assert sessions_in(restic_snapshots(restic_location(repository_in(settings.repo, small)),
                                            keys.repository_password(settings, small))) == {older, newer, recent}

        applied = world.cli_json("forget", small, "--repo", "secondary", env=env)
        assert applied["restore_points"]["removed"] == 1 and applied["restore_points"]["kept"] == 2, applied
        copy_location = restic_location(repository_in(endpoint.admin, small))
        left = sessions_in(restic_snapshots(copy_location, keys.repository_password(settings, small)))
        assert left == {newer, recent}  # the day's older point went; the primary keeps all three
        assert sessions_in(restic_snapshots(restic_location(repository_in(settings.repo, small)),
                                            keys.repository_password(settings, small))) == {older, newer, recent}
    finally:
        endpoint.stop()
        purge_tenant(settings, small)
