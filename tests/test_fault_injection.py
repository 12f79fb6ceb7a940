"""Fault injection: kill -9 at seeded steps, a damaged repository, racing commands, bad input.

Bounded in time: one small demo tenant per test (scale 0.05), seeded randomness; the default
lease TTL (a killed CLI's lease is expired at once by the next operation: its process is gone
from this host, so nobody waits out the TTL). A kill is certain: the CLI is stopped by a hook at a
chosen step (after its n-th tool, before a catalog change) and SIGKILLed there; races meet at a
barrier right before their lease attempts. Every outcome is judged through independent paths:
psql, boto3, the file system, restic itself, and the Redis flag read directly.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

import psycopg2
import pytest
import redis

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.naming import names_for

from . import faults, observe
from .conftest import MAIN_DB

SEED = 20261129
SCALE = 0.05
KILL_POINTS = 10
KILLS_BEFORE_NEXT = 2
FORGET_KILL_POINTS = 2
FORGET_TOOLS = 3  # a forget with something to remove starts at least `restic unlock`, `forget`, `prune`


def one_line_error(result) -> str:
    """Bad input (exit 2) prints exactly one line; a failed operation may print progress first,
    but exactly one error line."""
    lines = result.stderr.strip().splitlines()
    if result.returncode == 2:
        assert len(lines) == 1, result.stderr
        return lines[0]
    errors = [line for line in lines if line.startswith("kryonix-backup: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def restore_points(cli, tid) -> list[dict]:
    result = cli("snapshots", tid, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sessions(points) -> list[str]:
    return sorted(p["session"] for p in points)


def assert_every_point_whole(cli, tid) -> dict:
    """`verify --read-data`: every listed restore point has all its tier snapshots, every byte reads."""
    verify = cli("verify", tid, "--read-data", "--json")
    doc = json.loads(verify.stdout)
    assert verify.returncode == 0 and doc["ok"] and doc["problems"] == [], verify.stdout + verify.stderr
    return doc


def flag_state(settings, tid) -> tuple[bool, int]:
    """(exists, ttl) of the tenant's backup-in-progress flag, read from Redis directly."""
    client = redis.Redis.from_url(settings.redis_url)
    key = names_for(settings, tid).backup_flag_key
    return bool(client.exists(key)), client.ttl(key)


def small_tenant(settings, tenant_factory) -> str:
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=SCALE)
    return tid


def complete_backup(cli, tid, env=None) -> dict:
    result = cli("backup", tid, "--wait", "60", "--json", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    session = json.loads(result.stdout)["sessions"][0]
    assert session["status"] == "complete", session
    return session


# --- kill -9 of backups and of forget ---------------------------------------------------------

@pytest.mark.slow(144)
@pytest.mark.timeout(600)  # eight backups killed at seeded steps and their heals: over 300 s on a loaded machine
def test_kill9_of_backups_at_seeded_steps_then_next_sessions_and_forget_heal(cli, settings, tenant_factory, tmp_path):
    rng = random.Random(SEED)
    tid = small_tenant(settings, tenant_factory)
    hook = faults.hook_dir(tmp_path)
    complete_backup(cli, tid)
    # the tools (restic, pg_dump) an incremental session starts: each is a step to be killed after
    tools = faults.tool_steps(("backup", tid, "--json"), hook, tmp_path / "tools")
    points = faults.stratified_steps(rng, KILL_POINTS, len(tools))
    rng.shuffle(points)
    failed_next, flags_left = [], []
    # Kills come in pairs (the second session takes over the lease the killed one left, and is
    # killed too); then the next session must complete. Pairs keep the module's time bounded.
    pairs = [points[i:i + KILLS_BEFORE_NEXT] for i in range(0, len(points), KILLS_BEFORE_NEXT)]
    for i, pair in enumerate(pairs):
        for j, step in enumerate(pair):
            proc, tool = faults.stop_after_spawn(("backup", tid, "--wait", "60"), step, hook,
                                                 tmp_path / f"stop-{i}-{j}")
            faults.kill9(proc)
            exists, ttl = flag_state(settings, tid)
            assert not exists or ttl > 0, f"kill after {tool} left the flag without an expiry"
        result = cli("backup", tid, "--wait", "60", "--json")
        session = json.loads(result.stdout)["sessions"][0] if result.stdout else {"error": result.stderr}
        if result.returncode != 0 or session.get("status") != "complete":
            failed_next.append((pair, session.get("error")))
        if flag_state(settings, tid)[0]:
            flags_left.append(pair)
    assert failed_next == [], f"next sessions failed after kills at tool steps {failed_next} of {tools}"
    assert flags_left == [], f"backup flag still set after the next session (kills at tool steps {flags_left})"
    listed = restore_points(cli, tid)
    # a kill after the manifest was written leaves a (whole) restore point: that is allowed
    assert 2 + KILL_POINTS // KILLS_BEFORE_NEXT <= len(listed) <= 2 + KILL_POINTS // KILLS_BEFORE_NEXT + KILL_POINTS

    # forget --prune killed at seeded steps (the killed sessions left tier snapshots to prune)
    for step in rng.sample(range(1, FORGET_TOOLS + 1), FORGET_KILL_POINTS):
        proc, _ = faults.stop_after_spawn(("forget", tid, "--wait", "60"), step, hook, tmp_path / f"forget-{step}")
        faults.kill9(proc)
    healed = cli("forget", tid, "--wait", "60", "--json")
    assert healed.returncode == 0, healed.stdout[-1000:] + healed.stderr[-1000:]
    after = restore_points(cli, tid)
    assert sessions(after) == sessions(listed), "forget must keep every recent restore point"
    doc = assert_every_point_whole(cli, tid)
    assert doc["restore_points"] == len(listed) and doc["unfinished_sessions"] == []


# --- kill -9 during restore: PostgreSQL swap, app-data swap, seeded moments --------------------

def pg_rows(db: str) -> dict:
    return observe.table_checksums(db)


def test_kill9_between_the_database_renames_then_next_restore_heals(cli, settings, tenant_factory, tmp_path):
    tid = small_tenant(settings, tenant_factory)
    live = f"kryonix_cliente_{tid}"
    complete_backup(cli, tid)
    expected = pg_rows(live)
    hook = faults.hook_dir(tmp_path)

    stepper = faults.CatalogStepper(tid, kill_when_live_missing=True, marker=tmp_path / "killed-steps")
    stepper.run(stepper.start("restore", tid, "--yes", "--services", "postgresql", hook=hook))
    assert stepper.killed, f"the restore never removed {live} (steps {stepper.seen_queries})"
    assert faults.database_exists(live) or faults.database_exists(f"{live}__previous"), \
        "after the kill neither the live database nor its previous copy exists"

    healer = faults.CatalogStepper(tid, kill_when_live_missing=False, marker=tmp_path / "healer-steps")
    proc = healer.start("restore", tid, "--yes", "--wait", "60", "--services", "postgresql", hook=hook)
    healer.run(proc)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert any(f"RENAME TO \"{live}\"" in q for q in healer.seen_queries), healer.seen_queries  # it was stepped
    assert healer.violations == [], healer.violations
    assert pg_rows(live) == expected
    assert not faults.database_exists(f"{live}__restoring")


def test_kill9_after_the_app_data_folder_moved_then_next_restore_heals(cli, settings, tenant_factory, tmp_path):
    tid = small_tenant(settings, tenant_factory)
    live = names_for(settings, tid).app_data_dir
    complete_backup(cli, tid)
    expected = faults.file_hashes(live)
    hook = str(faults.hook_dir(tmp_path))
    marker = tmp_path / "moved"
    env = {"H7_LIVE_DIR": str(live.resolve()), "H7_MARKER": str(marker), "H7_MODE": "pause"}
    proc = faults.start_cli("restore", tid, "--yes", "--services", "appdata", env=env, extra_pythonpath=hook)
    moved_to = Path(faults.wait_for_file(marker, proc))
    faults.kill9(proc)  # paused right after the live folder was moved away
    assert live.is_dir() or faults.file_hashes(moved_to) == expected, \
        f"after the kill the tenant's files are neither in {live} nor in {moved_to}"

    report = tmp_path / "violations"
    env = {"H7_LIVE_DIR": str(live.resolve()), "H7_MARKER": str(report), "H7_MODE": "observe",
           "H7_ONLY_COPY": str(moved_to)}
    with faults.BothMissingWatcher(live, moved_to) as watcher:
        proc = faults.start_cli("restore", tid, "--yes", "--wait", "60", "--services", "appdata", env=env,
                                extra_pythonpath=hook)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert not report.exists(), report.read_text()
    assert not watcher.seen_missing, f"a moment came when neither {live} nor {moved_to} existed"
    assert faults.file_hashes(live) == expected


@pytest.mark.slow(92)
def test_kill9_of_restores_at_seeded_steps_never_leaves_the_tenant_without_data(cli, settings, tenant_factory,
                                                                                  tmp_path):
    rng = random.Random(SEED + 1)
    tid = small_tenant(settings, tenant_factory)
    db, folder = f"kryonix_cliente_{tid}", names_for(settings, tid).app_data_dir
    complete_backup(cli, tid)
    rows, files = pg_rows(db), faults.file_hashes(folder)
    args = ("restore", tid, "--yes", "--wait", "60", "--services", "postgresql,appdata")
    hook = faults.hook_dir(tmp_path)
    tools = faults.tool_steps(args, hook, tmp_path / "tools")  # restic, pg_restore: each a step to kill after
    gone = []
    for step in faults.stratified_steps(rng, 3, len(tools)):
        proc, tool = faults.stop_after_spawn(args, step, hook, tmp_path / f"stop-{step}")
        faults.kill9(proc)
        if not (faults.database_exists(db) or faults.database_exists(f"{db}__previous")):
            gone.append((tool, "database"))
        if not (folder.is_dir() or any(folder.parent.glob(f".{folder.name}.previous*"))):
            gone.append((tool, "app data"))
        healed = cli(*args)
        assert healed.returncode == 0, (tool, healed.stderr)
        assert pg_rows(db) == rows and faults.file_hashes(folder) == files, tool
    assert gone == [], f"kills left the tenant without its data: {gone}"


# --- a damaged repository ----------------------------------------------------------------------

def live_state(settings, tid) -> dict:
    names = names_for(settings, tid)
    client = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    return {"rows": pg_rows(names.database), "objects": observe.bucket_state(client, names.bucket_prefix)}


@pytest.mark.slow(80)
def test_damaged_packs_fail_restore_and_verify_naming_tenant_and_tier(cli, settings, tenant_factory):
    tid = small_tenant(settings, tenant_factory)
    names = names_for(settings, tid)
    complete_backup(cli, tid)
    manifest = faults.latest_manifest(settings, tid)
    dump_pack = faults.pack_of_blob(settings, tid, manifest["tiers"]["postgresql"]["checksums"]["dump_sha256"])
    client = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    state = observe.bucket_state(client, names.bucket_prefix)
    small = [(size, b, k) for b, objects in state.items() for k, (_, size, *_) in objects.items() if 64 < size < 400_000]
    _, bucket, key = max(small)  # one restic blob (under restic's 512 KiB minimum chunk)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    object_pack = faults.pack_of_blob(settings, tid, hashlib.sha256(body).hexdigest())
    assert object_pack != dump_pack

    # 1. a flipped byte in the pack of the database dump; the live database has moved on since
    observe.psql(names.database, "CREATE TABLE public.h7_after_backup AS SELECT 1 AS x")
    before = live_state(settings, tid)
    original = faults.flip_byte(dump_pack)
    result = cli("restore", tid, "--yes")
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert f"tenant {tid}" in line and "postgresql" in line, line
    assert live_state(settings, tid) == before, "a failed restore changed the live data"
    verify = cli("verify", tid, "--read-data")
    assert verify.returncode == 1 and dump_pack.name[:8] in verify.stdout + verify.stderr, verify.stdout
    faults.restore_file(dump_pack, original)

    # 2. a damaged pack of the object copies; the live bucket (and the live database, whose extra
    # table a full restore would drop) have moved on since: nothing of either may change. The pack
    # is damaged, not deleted: restic 0.14 retries a missing pack for ~45 s with back-off before it
    # fails; the same failure path with a deleted pack is test_hardening_files'
    # test_deleted_pack_changes_no_bucket.
    client.put_object(Bucket=bucket, Key="h7/after-backup.txt", Body=b"written after the backup")
    client.put_object(Bucket=bucket, Key=key, Body=b"overwritten after the backup")
    before = live_state(settings, tid)
    original = faults.flip_byte(object_pack)
    result = cli("restore", tid, "--yes")
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert f"tenant {tid}" in line and "object_storage" in line, line
    assert live_state(settings, tid) == before, "a failed restore changed the live data"
    assert "h7_after_backup" in observe.psql(names.database, "SELECT string_agg(relname, ',') FROM pg_class")
    faults.restore_file(object_pack, original)

    # 3. the pack deleted: the index names the missing pack (reading all data would only add
    # restic's retry back-off)
    object_pack.unlink()
    verify = cli("verify", tid)
    assert verify.returncode == 1 and object_pack.name[:8] in verify.stdout + verify.stderr, verify.stdout


# --- concurrency -------------------------------------------------------------------------------

def busy_or_ok(result) -> str:
    """'ok' or 'busy'; anything else fails the test."""
    if result.returncode == 0:
        return "ok"
    assert result.returncode == 1 and "holds the lease" in result.stderr, result.stdout[-500:] + result.stderr
    return "busy"


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return type("Done", (), {"returncode": proc.returncode, "stdout": out, "stderr": err})()


def blocking_lock(db: str):
    """An exclusive lock on a table: the next session's pg_dump waits, the session stays mid-way."""
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=db)
    conn.cursor().execute("LOCK TABLE crm.contatos IN ACCESS EXCLUSIVE MODE")
    return conn


def wait_for_dump_waiting(db: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if observe.psql("postgres", f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' "
                                    "AND application_name = 'pg_dump' AND wait_event_type = 'Lock'") == "1":
            return
        time.sleep(0.1)
    raise AssertionError("pg_dump never started waiting")


def race(commands: list[tuple[str, ...]], tmp_path, name: str) -> list:
    """The commands' first lease attempts at one barrier (see faults.start_at_one_lease_barrier)."""
    barrier = tmp_path / name
    procs = faults.start_at_one_lease_barrier(commands, faults.hook_dir(tmp_path), barrier)
    results = [finish(proc) for proc in procs]
    assert len(list(barrier.iterdir())) == len(commands), [r.stderr for r in results]  # all met there
    return results


@pytest.mark.slow(83)
def test_two_backups_in_the_same_instant_and_backup_against_forget(cli, settings, tenant_factory, tmp_path):
    tid = small_tenant(settings, tenant_factory)
    complete_backup(cli, tid)
    before = restore_points(cli, tid)

    results = race([("backup", tid), ("backup", tid)], tmp_path, "two-backups")
    assert sorted(busy_or_ok(r) for r in results) == ["busy", "ok"], [r.stderr for r in results]
    middle = restore_points(cli, tid)
    assert set(sessions(before)) < set(sessions(middle)) and len(middle) == len(before) + 1

    forget, backup = race([("forget", tid), ("backup", tid)], tmp_path, "forget-and-backup")
    forget_outcome, backup_outcome = busy_or_ok(forget), busy_or_ok(backup)
    assert sorted((forget_outcome, backup_outcome)) == ["busy", "ok"], (forget.stderr, backup.stderr)
    after = restore_points(cli, tid)
    assert set(sessions(middle)) <= set(sessions(after))
    assert len(after) == len(middle) + (backup_outcome == "ok")
    assert_every_point_whole(cli, tid)


def test_verify_waits_for_a_backup_and_forget_is_refused(cli, settings, tenant_factory, tmp_path):
    tid = small_tenant(settings, tenant_factory)
    db = f"kryonix_cliente_{tid}"
    complete_backup(cli, tid)
    before = restore_points(cli, tid)
    attempts = tmp_path / "verify-lease-sql"
    lock = blocking_lock(db)
    try:
        backup = faults.start_cli("backup", tid, "--json")
        wait_for_dump_waiting(db)  # the session holds the lease and cannot end while the lock is held
        verify = faults.start_logged("verify", tid, "--read-data", "--json", "--wait", "300",
                                     hook=faults.hook_dir(tmp_path), log=attempts)
        faults.wait_for_lease_attempts(verify, attempts, 2)  # refused once, then waiting
        assert busy_or_ok(cli("forget", tid)) == "busy"
        assert faults.lease_holder(tid) == faults.holder_of(backup) and verify.poll() is None
    finally:
        lock.close()
    done = finish(backup)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-1000:]
    assert json.loads(done.stdout)["sessions"][0]["status"] == "complete"
    verified = finish(verify)
    assert busy_or_ok(verified) == "ok"
    after = restore_points(cli, tid)
    assert set(sessions(before)) < set(sessions(after)) and len(after) == len(before) + 1
    # it waited: what it verified includes the session that held the lease when it started
    assert json.loads(verified.stdout)["restore_points"] == len(after)
    assert_every_point_whole(cli, tid)


# --- bad input ---------------------------------------------------------------------------------

def untouched_state(settings, tid) -> dict:
    names = names_for(settings, tid)
    state = live_state(settings, tid)
    state["db_oid"] = faults.database_oid(names.database)
    state["files"] = faults.file_hashes(names.app_data_dir)
    state["folder_inode"] = names.app_data_dir.stat().st_ino
    state["snapshots"] = sorted(s["id"] for s in faults.restic_json(settings, tid, "snapshots"))
    return state


def test_option_values_that_start_with_a_dash_are_refused(cli, settings, tenant_factory):
    tid = small_tenant(settings, tenant_factory)
    complete_backup(cli, tid)
    before = untouched_state(settings, tid)
    audits = observe.psql(MAIN_DB, f"SELECT count(*) FROM tenants.backup_audit WHERE cliente_id = '{tid}'")
    for args in (["--snapshot", "-1"], ["--snapshot", "--latest"], ["--snapshot", "-rf"], ["--snapshot=-x"],
                 ["--at", "-1d"], ["--at", "--now"], ["--at=-2026-01-01T00:00:00Z"]):
        result = cli("restore", tid, *args, "--yes")
        assert result.returncode == 2, (args, result.stderr)
        one_line_error(result)
        assert result.stdout == ""
    assert untouched_state(settings, tid) == before
    assert observe.psql(MAIN_DB, f"SELECT count(*) FROM tenants.backup_audit WHERE cliente_id = '{tid}'") == audits


def write_snapshot(cli, tid: str, filename: str, content: bytes, tags: list[str]) -> str:
    args = ["restic", tid, "--", "backup", "--stdin", "--stdin-filename", filename, "--json"]
    for tag in tags:
        args += ["--tag", tag]
    result = cli(*args, stdin=content.decode())
    assert result.returncode == 0, result.stderr
    summary = [json.loads(line) for line in result.stdout.splitlines() if '"summary"' in line][-1]
    return summary["snapshot_id"]


def test_a_tampered_restore_point_is_refused_and_nothing_is_touched(cli, settings, tenant_factory):
    tid, other = tenant_factory("a"), tenant_factory("b")
    seed_tenant(settings, tid, scale=SCALE)
    seed_tenant(settings, other, scale=SCALE)
    complete_backup(cli, tid)
    manifest = faults.latest_manifest(settings, tid)
    names, other_names = names_for(settings, tid), names_for(settings, other)
    client = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    sid = "20260101T000000Z-abcdef"

    # roles of another tenant, and a membership in a privileged built-in role
    roles = [{"name": other_names.role("intruso"), "rolcanlogin": True, "member_of": [], "password": None},
             {"name": names.role("escalado"), "rolcanlogin": True, "member_of": ["pg_execute_server_program"],
              "password": None}]
    roles_snap = write_snapshot(cli, tid, "roles.json", json.dumps(roles).encode(),
                                ["kind=tier", f"session={sid}", "tier=postgresql", "part=roles", "type=full"])
    # an object index that points outside the staging folder and into another tenant's bucket
    bucket = sorted(observe.bucket_state(client, names.bucket_prefix))[0]
    entry = {"file": "../../../../../../etc/hostname", "size": os.path.getsize("/etc/hostname"),
             "etag": "x", "content_type": "text/plain", "metadata": {}, "tags": {}, "version_id": None}
    index = {"tenant": tid, "buckets": {
        bucket: {"versioned": False, "objects": {"stolen.txt": entry}},
        other_names.bucket("media"): {"versioned": False, "objects": {"planted.txt": entry}}}}
    index_snap = write_snapshot(cli, tid, "index.json", json.dumps(index).encode(),
                                ["kind=tier", f"session={sid}", "tier=object_storage", "part=objects", "type=full"])
    tampered = dict(manifest, session_id=sid)
    tampered["tiers"]["postgresql"]["snapshots"]["roles"] = roles_snap
    tampered["tiers"]["object_storage"]["snapshots"]["objects"] = index_snap
    tampered["tiers"]["object_storage"]["checksums"]["objects"] = {
        f"{bucket}/stolen.txt": ["x", entry["size"]], f"{other_names.bucket('media')}/planted.txt": ["x", entry["size"]]}
    tampered["tiers"]["appdata"]["checksums"]["files"] = {"../../outside.txt": [1, "0" * 64],
                                                          "/etc/h7-absolute": [1, "0" * 64]}
    write_snapshot(cli, tid, "manifest.json", json.dumps(tampered).encode(),
                   ["kind=manifest", f"session={sid}", "type=full", "status=complete", "consistent=yes"])

    before = untouched_state(settings, tid)
    other_before = observe.bucket_state(client, other_names.bucket_prefix)
    roles_query = ("SELECT coalesce(string_agg(rolname, ',' ORDER BY rolname), '') FROM pg_roles WHERE "
                   f"starts_with(rolname, '{names.role_prefix}') OR starts_with(rolname, '{other_names.role_prefix}')")
    roles_before = observe.psql("postgres", roles_query)  # only these two tenants': others come and go
    result = cli("restore", tid, "--snapshot", sid, "--yes")
    # a valid request refused by what the repository holds: exit 1, and the first check in the
    # tiers' fixed order (postgresql first) names it, before anything was changed
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert f"tenant {tid}, tier postgresql" in line and other_names.role("intruso") in line, line
    assert "outside the tenant's names" in line and "nothing was changed" in line, line
    after = untouched_state(settings, tid)
    after["snapshots"] = before["snapshots"]  # restic may add nothing; compare the live data
    assert after == before, "a refused restore touched the live data"
    assert observe.bucket_state(client, other_names.bucket_prefix) == other_before
    assert observe.psql("postgres", roles_query) == roles_before
    assert not (names.app_data_dir.parent.parent / "outside.txt").exists()
