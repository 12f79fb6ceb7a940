"""Hardening of the file tiers (app data, object storage): links, races, crashes, damaged snapshots.

Every scenario runs on the real services and restic; files and buckets are judged through
os/boto3, never through the product's own code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kryonix_dagster.engine import registry
from kryonix_dagster.engine.errors import OperationFailed
from kryonix_dagster.engine.manifest import find_manifest, new_session_id, tier_tags, write_manifest
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.restore import run_restore
from kryonix_dagster.engine.session import run_backup
from kryonix_dagster.engine.tenant_repository import open_repository
from kryonix_dagster.engine.tiers import tier
from kryonix_dagster.engine.tiers import appdata as appdata_tier

from . import observe

APPDATA = (tier("appdata"),)
OBJECTS = (tier("object_storage"),)


# --- helpers ----------------------------------------------------------------------------------

def tree(root: Path) -> dict[str, str]:
    """relative path → sha256 of file / 'link:TARGET' / 'dir', never following links."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def app_tenant(settings, tenant_factory, suffix: str = "") -> tuple[str, Path]:
    """A registered tenant with a small app folder, biometric templates included."""
    tid = tenant_factory(suffix)
    registry.ensure_tenant(settings, tid, f"Files {tid}", "basic")
    root = names_for(settings, tid).app_data_dir
    write(root / "config" / "app.json", json.dumps({"tenant": tid}))
    write(root / "media" / "logo.bin", os.urandom(3000))
    write(root / "mobile" / "biometric" / "settings.json", "{}")
    write(root / "mobile" / "biometric" / "templates" / "finger-1.tpl", f"template of {tid}")
    return tid, root


def backup_tier(settings, tid: str, tiers=APPDATA, backup_type: str = "full"):
    result = run_backup(settings, tid, backup_type=backup_type, tiers=tiers)
    assert result.restore_point, result.error
    return result


def restore_appdata(cli, tid: str):
    return cli("restore", tid, "--services", "appdata", "--yes")


def error_line(stderr: str) -> str:
    """The CLI's one error line (info lines before it are progress)."""
    errors = [line for line in stderr.splitlines() if line.startswith("kryonix-backup: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


# --- item 5: templates never carried through a link --------------------------------------------

def test_templates_link_to_another_tenant_is_refused(settings, cli, tenant_factory):
    tid, root = app_tenant(settings, tenant_factory, "a")
    other, other_root = app_tenant(settings, tenant_factory, "b")
    backup_tier(settings, tid)
    templates = root / "mobile" / "biometric" / "templates"
    shutil.rmtree(templates)
    templates.symlink_to(other_root / "mobile" / "biometric" / "templates", target_is_directory=True)
    before, other_before = tree(root), tree(other_root)

    result = restore_appdata(cli, tid)
    assert tree(root) == before and tree(other_root) == other_before
    assert result.returncode == 1
    line = error_line(result.stderr)
    assert "mobile/biometric/templates" in line and f"tenant {tid}, tier appdata" in line
    assert not list(root.parent.glob(f".{root.name}.*"))  # no staging, no previous, no journal left


def test_templates_link_to_etc_is_never_read(settings, cli, tenant_factory):
    tid, root = app_tenant(settings, tenant_factory)
    backup_tier(settings, tid)
    templates = root / "mobile" / "biometric" / "templates"
    shutil.rmtree(templates)
    templates.symlink_to("/etc", target_is_directory=True)
    before = tree(root)
    result = restore_appdata(cli, tid)
    assert result.returncode == 1 and "mobile/biometric/templates" in result.stderr
    assert tree(root) == before
    assert not [p for p in tree(root) if p.endswith(("passwd", "hostname"))]


def test_link_parent_in_the_snapshot_is_refused_and_nothing_written_outside(settings, cli, tenant_factory, tmp_path):
    tid, root = app_tenant(settings, tenant_factory)
    outside = tmp_path / "outside"
    outside.mkdir()
    biometric = root / "mobile" / "biometric"
    shutil.rmtree(biometric)
    biometric.symlink_to(outside, target_is_directory=True)  # the snapshot stores this link
    backup_tier(settings, tid)
    biometric.unlink()  # the machine gets its real folder back, with templates
    write(biometric / "templates" / "finger-9.tpl", "live template")
    before = tree(root)

    result = restore_appdata(cli, tid)
    assert list(outside.iterdir()) == []  # nothing written through the link
    assert tree(root) == before
    assert result.returncode == 1
    assert "mobile/biometric is a symbolic link" in error_line(result.stderr)


def test_plain_templates_are_still_carried_over(settings, cli, tenant_factory):
    tid, root = app_tenant(settings, tenant_factory)
    backup_tier(settings, tid)
    extra = root / "mobile" / "biometric" / "templates" / "sub" / "finger-2.tpl"
    write(extra, "newer template")
    os.chmod(extra, 0o640)
    (root / "config" / "app.json").write_text("changed")
    assert restore_appdata(cli, tid).returncode == 0
    assert (root / "config" / "app.json").read_text() == json.dumps({"tenant": tid})
    assert extra.read_text() == "newer template" and (extra.stat().st_mode & 0o777) == 0o640
    assert (root / "mobile" / "biometric" / "templates" / "finger-1.tpl").read_text() == f"template of {tid}"


# --- item 8: the inventory describes what restic stored -----------------------------------------

def test_file_rewritten_during_backup_restores(settings, cli, tenant_factory):
    tid, root = app_tenant(settings, tenant_factory)
    busy = root / "media" / "busy.log"
    for i in range(40):
        write(root / "media" / f"bulk-{i}.bin", os.urandom(200_000))  # restic takes a while to get to busy.log
    stop = threading.Event()

    def rewrite() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            with busy.open("wb") as handle:  # in place, as a logging application would
                handle.write(f"generation {n}\n".encode() * (1 + n % 50))

    write(busy, "generation 0\n")
    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    try:
        result = backup_tier(settings, tid)
    finally:
        stop.set()
        writer.join()
    snap = result.tiers["appdata"].snapshots["files"]
    assert result.tiers["appdata"].details["files_reread_from_snapshot"] >= 1
    stored = cli("restic", tid, "--", "dump", snap, "/media/busy.log")
    assert stored.returncode == 0

    restored = restore_appdata(cli, tid)
    assert restored.returncode == 0, restored.stderr
    assert busy.read_text() == stored.stdout  # what restic stored, byte for byte


# --- item 9: the swap survives a kill ----------------------------------------------------------

def _crash_state(root: Path, journal_staging: str | None) -> tuple[Path, Path]:
    """Build by hand what a kill -9 leaves; returns (previous, journal)."""
    previous = root.parent / f".{root.name}.previous"
    journal = root.parent / f".{root.name}.swap.json"
    if journal_staging is not None:
        journal.write_text(json.dumps({"staging": journal_staging, "previous": previous.name}))
    return previous, journal


def test_kill_between_renames_rolls_back_and_backup_keeps_the_data(settings, tenant_factory):
    tid, root = app_tenant(settings, tenant_factory)
    backup_tier(settings, tid)
    write(root / "config" / "newer.json", "written after the last backup")
    expected = tree(root)
    previous, journal = _crash_state(root, f".{root.name}.restoring-gone")
    os.replace(root, previous)  # live → previous done, staging → live never happened (staging lost)

    result = backup_tier(settings, tid)  # the next run heals first, then backs up the real data
    appdata = result.tiers["appdata"]
    assert appdata.status == "ok" and "config/newer.json" in appdata.checksums["files"]
    assert appdata.details["healed"] == ["swap was interrupted: rolled back to the previous folder"]
    assert tree(root) == expected and not previous.exists() and not journal.exists()


@pytest.mark.parametrize("with_journal", [True, False])
def test_kill_between_renames_rolls_back_even_with_a_verified_folder(settings, tenant_factory, with_journal):
    """Like PostgreSQL's swap: live missing + previous present → previous back, staging discarded,
    so a killed full restore never leaves the old database beside the new files."""
    tid, root = app_tenant(settings, tenant_factory)
    expected = tree(root)
    staging = root.parent / f".{root.name}.restoring-x1"
    shutil.copytree(root, staging, symlinks=True)
    write(staging / "config" / "restored.json", "from the snapshot")
    previous, journal = _crash_state(root, staging.name if with_journal else None)
    os.replace(root, previous)
    assert appdata_tier.heal_interrupted_swap(names_for(settings, tid)) == [
        "swap was interrupted: rolled back to the previous folder",
        f"removed the unfinished restore folder {staging.name}"]
    assert tree(root) == expected and not staging.exists() and not previous.exists() and not journal.exists()


def test_finished_swap_leftover_previous_is_removed(settings, tenant_factory):
    tid, root = app_tenant(settings, tenant_factory)
    expected = tree(root)
    previous, journal = _crash_state(root, None)
    shutil.copytree(root, previous, symlinks=True)
    write(previous / "config" / "old.json", "the replaced folder")
    assert appdata_tier.heal_interrupted_swap(names_for(settings, tid)) == [
        "removed the previous folder of a finished swap"]
    assert tree(root) == expected and not previous.exists()


def test_kill_before_the_swap_discards_staging_and_keeps_live(settings, tenant_factory):
    tid, root = app_tenant(settings, tenant_factory)
    staging = root.parent / f".{root.name}.restoring-x2"
    write(staging / "half.bin", "half restored")
    expected = tree(root)
    _, journal = _crash_state(root, staging.name)
    appdata_tier.heal_interrupted_swap(names_for(settings, tid))
    assert tree(root) == expected and not staging.exists() and not journal.exists()


def test_previous_is_never_deleted_while_live_is_missing(settings, cli, tenant_factory):
    """The state the old code left (no journal): the next restore used to delete `previous` first."""
    tid, root = app_tenant(settings, tenant_factory)
    backup_tier(settings, tid)
    write(root / "config" / "only-here.json", "not in any backup")
    previous, _ = _crash_state(root, None)
    os.replace(root, previous)
    appdata_tier.heal_interrupted_swap(names_for(settings, tid))
    assert (root / "config" / "only-here.json").read_text() == "not in any backup"
    assert not previous.exists()


# --- finding 34: the folder keeps its mode and owner --------------------------------------------

def test_restored_folder_keeps_mode_and_owner(settings, cli, tenant_factory):
    tid, root = app_tenant(settings, tenant_factory)
    os.chown(root, 4321, 4322)
    os.chmod(root, 0o750)
    backup_tier(settings, tid)
    shutil.rmtree(root)
    assert restore_appdata(cli, tid).returncode == 0
    st = root.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 4321, 4322)


# --- finding 32: an empty tier after files is a warning, said once (by the session) -------------

def session_warnings(cli, tid: str) -> tuple[dict, list[str]]:
    """The app-data tier and the warnings of one backup, as `kryonix-backup backup --json` reports them."""
    result = cli("backup", tid, "--json")
    assert result.returncode == 0, result.stderr
    session = json.loads(result.stdout)["sessions"][0]
    return session["tiers"]["appdata"], session["warnings"]


@pytest.mark.slow(82)
def test_empty_folder_after_files_warns(settings, cli, psql, tenant_factory):
    tid, root = app_tenant(settings, tenant_factory)
    psql("postgres", f"CREATE DATABASE kryonix_cliente_{tid}")  # a whole session needs its critical tier
    backup_tier(settings, tid)
    shutil.rmtree(root)
    empty, warnings = session_warnings(cli, tid)
    assert empty["status"] == "empty"
    appdata = [w for w in warnings if "appdata" in w]
    assert appdata == ["tier appdata: empty, the previous restore point had 3 item(s)"]  # said once
    root.mkdir()
    none, warnings = session_warnings(cli, tid)
    assert none["status"] == "empty", none["error"]  # restic refuses an empty snapshot: not a failure
    assert not [w for w in warnings if "appdata" in w]  # the previous session was already empty
    write(root / "media" / "a.bin", "a")
    assert not [w for w in session_warnings(cli, tid)[1] if "appdata" in w]
    (root / "media" / "a.bin").unlink()
    only_dirs, warnings = session_warnings(cli, tid)
    assert only_dirs["status"] == "ok" and only_dirs["items"] == 0
    assert [w for w in warnings if "appdata" in w] == ["tier appdata: empty, the previous restore point had 1 item(s)"]


# --- objects: verify every byte before replacing ------------------------------------------------

def object_tenant(settings, tenant_factory) -> tuple[str, object, str]:
    tid = tenant_factory()
    registry.ensure_tenant(settings, tid, f"Objects {tid}", "basic")
    s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    bucket = f"cliente-{tid}-docs"
    s3.create_bucket(Bucket=bucket)
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"doc-{i}.txt", Body=f"document {i}".encode() * 10, Metadata={"n": str(i)},
                      Tagging=f"n={i}")
    return tid, s3, bucket


def tampered_point(settings, tid: str, change) -> str:
    """A new restore point whose manifest (and maybe objects snapshot) `change(manifest, repo)` altered."""
    repo = open_repository(settings, tid)
    manifest = find_manifest(repo, "latest")
    manifest = dataclasses.replace(manifest, session_id=new_session_id(), tiers=dict(manifest.tiers))
    change(manifest, repo)
    write_manifest(repo, manifest, datetime.now(timezone.utc))
    return manifest.session_id


def test_wrong_object_checksum_changes_no_bucket(settings, cli, tenant_factory):
    tid, s3, bucket = object_tenant(settings, tenant_factory)
    backup_tier(settings, tid, OBJECTS)

    def damage(manifest, _repo):
        result = manifest.tiers["object_storage"]
        checksums = {k: list(v) for k, v in result.checksums["objects"].items()}
        etag, size, *_ = checksums[f"{bucket}/doc-3.txt"]
        checksums[f"{bucket}/doc-3.txt"] = [etag, size, "0" * 64]
        manifest.tiers["object_storage"] = dataclasses.replace(result, checksums={"objects": checksums})

    session = tampered_point(settings, tid, damage)
    s3.put_object(Bucket=bucket, Key="doc-1.txt", Body=b"newer")
    s3.put_object(Bucket=bucket, Key="added-later.txt", Body=b"extra")
    before = observe.bucket_state(s3, f"cliente-{tid}-")
    result = cli("restore", tid, "--services", "object_storage", "--snapshot", session, "--yes")
    assert result.returncode == 1
    line = error_line(result.stderr)
    assert f"tenant {tid}, tier object_storage" in line and "doc-3.txt" in line
    assert observe.bucket_state(s3, f"cliente-{tid}-") == before


def test_deleted_pack_changes_no_bucket(settings, cli, tenant_factory):
    tid, s3, bucket = object_tenant(settings, tenant_factory)
    backup_tier(settings, tid, OBJECTS)
    repo_dir = Path(names_for(settings, tid).repository[len("file://"):])
    body = f"document {2}".encode() * 10
    blob = hashlib.sha256(body).hexdigest()  # a small file is one blob: its id is the content's sha256
    found = cli("restic", tid, "--", "find", "--blob", blob, "--show-pack-id")
    pack = re.search(r"belongs to pack ([0-9a-f]{64})", found.stdout).group(1)
    (repo_dir / "data" / pack[:2] / pack).unlink()
    s3.put_object(Bucket=bucket, Key="added-later.txt", Body=b"extra")
    before = observe.bucket_state(s3, f"cliente-{tid}-")
    result = cli("restore", tid, "--services", "object_storage", "--yes")
    assert result.returncode == 1
    assert f"tenant {tid}, tier object_storage" in error_line(result.stderr)
    assert observe.bucket_state(s3, f"cliente-{tid}-") == before


def test_index_path_outside_staging_is_refused(settings, cli, tenant_factory, tmp_path):
    tid, s3, bucket = object_tenant(settings, tenant_factory)
    backup_tier(settings, tid, OBJECTS)
    outside = Path("/etc/hostname")

    def escape(manifest, repo):
        result = manifest.tiers["object_storage"]
        staged = tmp_path / "staged"
        repo.restore(result.snapshots["objects"], staged)
        index = json.loads((staged / "index.json").read_text())
        entry = index["buckets"][bucket]["objects"]["doc-0.txt"]
        entry["file"] = "../" * 12 + str(outside).lstrip("/")
        entry["size"] = outside.stat().st_size
        (staged / "index.json").write_text(json.dumps(index))
        snap = repo.backup_directory(staged, tier_tags(manifest.session_id, "object_storage", "objects", "full"))
        checksums = {k: list(v) for k, v in result.checksums["objects"].items()}
        checksums[f"{bucket}/doc-0.txt"] = [checksums[f"{bucket}/doc-0.txt"][0], entry["size"]]  # old 2-field form
        manifest.tiers["object_storage"] = dataclasses.replace(
            result, snapshots={"objects": snap.snapshot_id}, checksums={"objects": checksums})

    session = tampered_point(settings, tid, escape)
    s3.put_object(Bucket=bucket, Key="added-later.txt", Body=b"extra")
    before = observe.bucket_state(s3, f"cliente-{tid}-")
    result = cli("restore", tid, "--services", "object_storage", "--snapshot", session, "--yes")
    assert result.returncode == 1
    assert "outside the snapshot's staging folder" in error_line(result.stderr)
    assert observe.bucket_state(s3, f"cliente-{tid}-") == before


# --- objects: tags and metadata changed under the same ETag -------------------------------------

def test_tags_and_metadata_changed_with_same_etag_survive_incremental(settings, cli, tenant_factory):
    tid, s3, bucket = object_tenant(settings, tenant_factory)
    backup_tier(settings, tid, OBJECTS)
    etag = s3.head_object(Bucket=bucket, Key="doc-0.txt")["ETag"]
    s3.put_object_tagging(Bucket=bucket, Key="doc-0.txt", Tagging={"TagSet": [{"Key": "n", "Value": "changed"}]})
    modified = s3.head_object(Bucket=bucket, Key="doc-1.txt")["LastModified"]
    deadline = time.monotonic() + 30  # last-modified has one-second precision: wait for the next second
    while datetime.now(timezone.utc) < modified + timedelta(seconds=1):
        assert time.monotonic() < deadline, "the clock never passed the object's last-modified second"
        time.sleep(0.05)
    s3.copy_object(Bucket=bucket, Key="doc-1.txt", CopySource={"Bucket": bucket, "Key": "doc-1.txt"},
                   Metadata={"n": "new"}, MetadataDirective="REPLACE", TaggingDirective="COPY")
    assert s3.head_object(Bucket=bucket, Key="doc-1.txt")["LastModified"] > modified
    assert s3.head_object(Bucket=bucket, Key="doc-0.txt")["ETag"] == etag
    incremental = backup_tier(settings, tid, OBJECTS, backup_type="incremental").tiers["object_storage"]
    assert incremental.details["downloaded"] <= 1
    expected = observe.bucket_state(s3, f"cliente-{tid}-")
    s3.delete_object_tagging(Bucket=bucket, Key="doc-0.txt")
    s3.delete_object(Bucket=bucket, Key="doc-1.txt")
    assert cli("restore", tid, "--services", "object_storage", "--yes").returncode == 0
    assert observe.bucket_state(s3, f"cliente-{tid}-") == expected


# --- objects: leftovers of a killed run and old plaintext mirrors are swept ---------------------

def test_leftovers_of_a_killed_run_are_swept(settings, tenant_factory):
    tid, s3, bucket = object_tenant(settings, tenant_factory)
    backup_tier(settings, tid, OBJECTS)
    state = Path(settings.state_dir)
    mirror = state / "mirror" / f"cliente_{tid}" / "object_storage"  # what older versions kept
    write(mirror / "objects" / "ab" / ("ab" + "0" * 62), "plaintext object of the old mirror")
    killed_backup = state / "staging" / f"cliente_{tid}-objects-killed"
    write(killed_backup / "objects" / "x", "half an object")
    killed_restore = state / "restore" / f"cliente_{tid}-objects-killed"
    write(killed_restore / "objects" / "x", "plaintext object")
    os.chmod(state / "staging", 0o755)
    backup_tier(settings, tid, OBJECTS, backup_type="incremental")
    assert not (state / "mirror").exists() and not killed_backup.exists() and not killed_restore.exists()
    assert (state / "staging").stat().st_mode & 0o777 == 0o700


def test_restore_error_is_one_line_in_process(settings, tenant_factory):
    """The engine's exception is the same one line the CLI prints."""
    tid, root = app_tenant(settings, tenant_factory)
    backup_tier(settings, tid)
    shutil.rmtree(root / "mobile" / "biometric")
    (root / "mobile" / "biometric").symlink_to("/etc", target_is_directory=True)
    with pytest.raises(OperationFailed) as err:
        run_restore(settings, tid, services=("appdata",))
    assert "\n" not in str(err.value) and "mobile/biometric" in str(err.value)


def restic_children(word: str) -> list[int]:
    """This process's restic children whose arguments include `word`, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if comm == "restic" and int(rest[1]) == os.getpid() and word.encode() in cmdline and rest[0] != "Z":
            found.append(int(stat.parent.name))
    return found


# --- finding 27: a leaked template snapshot is removed even when the repository is busy ----------

def test_leaked_template_snapshot_removed_despite_a_competing_lock(settings, tenant_factory, monkeypatch):
    import subprocess

    tid, root = app_tenant(settings, tenant_factory)
    backup_tier(settings, tid)
    repo = open_repository(settings, tid)
    repo_dir = Path(names_for(settings, tid).repository[len("file://"):])
    template = (root / "mobile" / "biometric" / "templates" / "finger-1.tpl").read_bytes()
    monkeypatch.setattr(appdata_tier, "EXCLUDES", ())  # the exclusion fails: a template reaches restic
    holder = subprocess.Popen(["restic", "backup", "--stdin", "--stdin-filename", "hold"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=repo.env())
    failures: list[str] = []

    def release_after_a_refused_forget() -> None:  # hold the lock while the tier first tries to forget
        deadline = time.monotonic() + 120
        seen: set[int] = set()
        while time.monotonic() < deadline:
            running = set(restic_children("forget"))
            if seen - running:  # an attempt ended while the lock was held: it was refused
                break
            seen |= running
            time.sleep(0.02)
        else:
            failures.append(f"no `restic forget` attempt was seen ending under the lock (seen: {seen})")
        holder.stdin.close()

    releaser = threading.Thread(target=release_after_a_refused_forget, daemon=True)
    deadline = time.monotonic() + 60
    while not list((repo_dir / "locks").iterdir()):  # the competing restic holds its lock
        assert holder.poll() is None and time.monotonic() < deadline, "the competing restic never locked"
        time.sleep(0.05)
    releaser.start()
    try:
        result = run_backup(settings, tid, tiers=APPDATA)
    finally:
        releaser.join(timeout=180)
        holder.wait(timeout=60)
    assert failures == [], failures
    appdata = result.tiers["appdata"]
    assert appdata.status == "failed"
    assert "biometric template(s) reached the snapshot" in appdata.error and "snapshot removed" in appdata.error
    listed = subprocess.run(["restic", "snapshots", "--json", "--tag", f"session={result.session_id},tier=appdata"],
                            capture_output=True, text=True, env=repo.env(), check=True)
    assert json.loads(listed.stdout) == []
    blobs = subprocess.run(["restic", "list", "blobs"], capture_output=True, text=True, env=repo.env(), check=True)
    assert hashlib.sha256(template).hexdigest() not in blobs.stdout  # pruned, not only unreferenced
