"""Object storage without a plaintext mirror: after a session no byte of a tenant's objects is
left on the worker's disk, an unchanged object is never downloaded again (counted in the S3
server's own request log), and the restore gives back bytes, metadata and tags (boto3)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kryonix_dagster.engine import registry
from kryonix_dagster.engine.restore import run_restore
from kryonix_dagster.engine.session import run_backup
from kryonix_dagster.engine.tiers import object_storage, tier

from . import observe
from .logged_s3 import logged_server

OBJECTS = (tier("object_storage"),)


@pytest.fixture(scope="module")
def logged_s3(settings, tmp_path_factory):
    yield from logged_server(settings, tmp_path_factory)


def session(settings, tid: str, backup_type: str):
    result = run_backup(settings, tid, backup_type=backup_type, tiers=OBJECTS)
    assert result.restore_point, result.error
    return result.tiers["object_storage"]


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    """Files under `root` whose bytes contain any needle (never following links)."""
    found = []
    for dirpath, _, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                found.append(str(path))
    return found


def objects_tenant(settings, tenant_factory, s3) -> tuple[str, str, dict[str, bytes]]:
    tid = tenant_factory()
    registry.ensure_tenant(settings, tid, f"Objects {tid}", "basic")
    bucket = f"cliente-{tid}-docs"
    s3.create_bucket(Bucket=bucket)
    bodies = {f"doc-{i}.bin": f"secret-{tid}-{i}-".encode() + os.urandom(20_000) for i in range(6)}
    for i, (key, body) in enumerate(bodies.items()):
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-kryonix",
                      Metadata={"n": str(i)}, Tagging=f"n={i}")
    return tid, bucket, bodies


def test_no_plaintext_stays_and_unchanged_objects_are_not_downloaded(logged_s3, tenant_factory, monkeypatch):
    settings, log = logged_s3
    s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    tid, bucket, bodies = objects_tenant(settings, tenant_factory, s3)
    state = Path(settings.state_dir)
    legacy = state / "mirror" / f"cliente_{tid}" / "object_storage" / "objects" / "ab" / ("ab" + "0" * 62)
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(bodies["doc-0.bin"])  # a plaintext mirror an older version left

    log.mark()
    full = session(settings, tid, "full")
    assert sorted(log.object_gets(bucket)) == sorted(bodies)
    assert full.details["downloaded"] == len(bodies)
    assert files_holding(state, list(bodies.values())) == []  # the old mirror went too

    log.mark()
    unchanged = session(settings, tid, "incremental")
    assert log.object_gets(bucket) == []
    assert unchanged.details["downloaded"] == 0 and unchanged.details["reused"] == len(bodies)
    assert unchanged.details["files_read_by_restic"] == 1  # the index only: restic reused the objects unread
    assert unchanged.bytes_added < 0.1 * sum(map(len, bodies.values()))

    # If restic ever judged a placeholder changed (here: every mtime shifted) it would store its
    # zeros: the session sees restic read more files than were downloaded and takes the tier again.
    with monkeypatch.context() as patch:
        shifted = object_storage.version_mtime_ns
        patch.setattr(object_storage, "version_mtime_ns", lambda *args: shifted(*args) + 1)
        log.mark()
        again = session(settings, tid, "incremental")
        assert again.details["downloaded_again"] and again.details["downloaded"] == len(bodies)
        assert sorted(log.object_gets(bucket)) == sorted(bodies)

        bodies["doc-2.bin"] = f"secret-{tid}-2-changed-".encode() + os.urandom(3000)
        s3.put_object(Bucket=bucket, Key="doc-2.bin", Body=bodies["doc-2.bin"], Metadata={"n": "changed"})
        log.mark()
        changed = session(settings, tid, "incremental")  # its parent is the session taken again
        assert log.object_gets(bucket) == ["doc-2.bin"]
        assert changed.details["downloaded"] == 1 and not changed.details["downloaded_again"]
    assert files_holding(state, list(bodies.values())) == []
    assert not list((state / "staging").glob(f"cliente_{tid}-*"))

    expected = observe.bucket_state(s3, f"cliente-{tid}-")
    for key in bodies:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.put_object(Bucket=bucket, Key="stray.txt", Body=b"not in the session")
    run_restore(settings, tid, services=("object_storage",))
    assert observe.bucket_state(s3, f"cliente-{tid}-") == expected
    assert {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in bodies} == bodies
    assert files_holding(state, list(bodies.values())) == []
