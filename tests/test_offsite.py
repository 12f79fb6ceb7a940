"""The off-site copy through the real append-only endpoint (rclone serve restic --append-only),
in front of a folder and in front of a moto S3 bucket: whole restore points copied, the
`--from secondary` forms, and a worker's credentials unable to delete or overwrite anything."""
from __future__ import annotations

import json
import os
import subprocess
import time

import boto3
import pytest

from kryonix_dagster.engine import keys

from .offsite_world import rest_status, s3_bucket, start_endpoint

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
    refusal = forget_is_refused(world, before[0]["id"])
    assert "403" in refusal, refusal
    after = json.loads(worker_restic(world, "snapshots", "--json").stdout)
    assert {s["id"] for s in after} == {s["id"] for s in before}
    repo = f"{world.endpoint.http}/cliente_{world.tenant_id}"
    snap = before[0]["id"]
    assert rest_status("DELETE", f"{repo}/snapshots/{snap}") == 403
    assert rest_status("POST", f"{repo}/snapshots/{snap}", data=b"{}") == 403  # no overwrite
    assert rest_status("DELETE", f"{repo}/config") in (403, 405)
    vault = world.endpoint.http + "/kryonix-vault/keys/"
    stash = requests_json(vault)
    assert stash and stash[0]["name"].startswith(world.tenant_id)
    assert rest_status("POST", vault + stash[0]["name"], data=b"{}") == 403
    assert rest_status("GET", f"{repo}/snapshots/{snap}") == 200  # still there, unchanged
    # retention on the copy: refused with only the worker's path, done through the admin path
    refused = world.cli("forget", world.tenant_id, "--repo", "secondary", env=world.worker_env)
    assert refused.returncode == 2 and "KRYONIX_REPO_SECONDARY_ADMIN" in refused.stderr
    applied = world.cli_json("forget", world.tenant_id, "--repo", "secondary")
    assert applied["restore_points"]["removed"] == 0 and applied["restore_points"]["kept"] >= 1, applied


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
    import requests
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
    endpoint = start_endpoint(tmp_path, s3=bucket)
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
    finally:
        endpoint.stop()


def snapshots_of_sessions(world, session_ids: list[str]) -> list[dict]:
    """The primary's snapshots (manifests and tier snapshots) tagged with one of these sessions."""
    listing = world.cli("restic", world.tenant_id, "--", "snapshots", "--json")
    assert listing.returncode == 0, listing.stderr
    wanted = {f"session={s}" for s in session_ids}
    return [snap for snap in json.loads(listing.stdout) if wanted & set(snap.get("tags") or [])]
