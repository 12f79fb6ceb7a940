"""Object storage tier: the tenant's `cliente-{id}-*` buckets (exact prefix match).

Every object's bytes, content type, user metadata and tags. A per-tenant local mirror
(`$KRYONIX_STATE_DIR/mirror/cliente_{id}/object_storage`) keeps the objects of the last
session under names derived from a hash of (bucket, key), so any key (spaces, unicode, `..`,
deep paths, a key that is a prefix of another) maps to one safe file. An incremental
session downloads only objects whose ETag, size or last-modified time changed, and restic
(with the previous session as parent) skips unchanged files without reading them. A full
session downloads everything again. `index.json` in the snapshot maps keys to files and
metadata, including the version id of versioned buckets.

Each object's size, ETag and sha256 come from the download itself (never from the listing,
which a concurrent write can outdate), and the sha256 is recorded in the manifest. Tags can
change without touching ETag or last-modified, so an incremental session re-reads the tags
of every object it reuses. A restore verifies every byte of the snapshot against the
manifest (and refuses index paths outside its staging folder) before it changes a bucket.
Leftovers of a killed run (partial downloads, restore staging) are swept at the start of
the next one; the mirror and the staging are private (0700).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from .. import services
from ..errors import OperationFailed, one_line
from ..manifest import STATUS_EMPTY, STATUS_OK, TierResult, tier_tags
from ..naming import TenantNames, rename_bucket
from .base import BackupContext, DrillContext, RestoreContext, RestoreOutcome, TierSpec
from ..reporting import Stopwatch

S3Errors = (ClientError, BotoCoreError)
TRANSFER = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)
TIER = "object_storage"
INDEX = "index.json"
OBJECT_FILE = re.compile(r"objects/[0-9a-f]{2}/[0-9a-f]{64}")
TAG_READERS = 8  # concurrent GetObjectTagging calls for reused objects


def object_file(bucket: str, key: str) -> str:
    digest = hashlib.sha256(f"{bucket}\0{key}".encode()).hexdigest()
    return f"objects/{digest[:2]}/{digest}"


def mirror_dir(ctx_settings, names: TenantNames) -> Path:
    return Path(ctx_settings.state_dir) / "mirror" / names.local_name / TIER


def restore_staging_dir(settings) -> Path:
    return Path(settings.state_dir) / "restore"


def _private_dir(folder: Path, top: Path) -> None:
    """Create `folder` and every parent below `top` (inclusive) with mode 0700."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for part in [folder, *folder.parents]:
        os.chmod(part, 0o700)
        if part == top:
            break


def sweep_leftovers(settings, names: TenantNames) -> list[str]:
    """Remove what a killed run of this tenant left: partial downloads in the mirror and
    restore staging folders (plaintext objects). Keeps the mirror and its folders at 0700."""
    removed = []
    mirror = mirror_dir(settings, names)
    if mirror.is_dir():
        _private_dir(mirror, Path(settings.state_dir) / "mirror")
        for dirpath, _, filenames in os.walk(mirror, followlinks=False):
            for name in filenames:
                if name.endswith((".part", ".tmp")):
                    os.unlink(os.path.join(dirpath, name))
                    removed.append(name)
    staging = restore_staging_dir(settings)
    if staging.is_dir():
        for leftover in staging.glob(f"{names.local_name}-objects-*"):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover.name)
    return removed


def tenant_buckets(client, names: TenantNames) -> list[str]:
    return sorted(b["Name"] for b in client.list_buckets().get("Buckets", []) if names.owns_bucket(b["Name"]))


def _load_index(mirror: Path) -> dict:
    try:
        return json.loads((mirror / INDEX).read_text())
    except (OSError, ValueError):
        return {"buckets": {}}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _second(moment) -> str:
    """Last-modified at one-second precision: the listing has milliseconds, a GET's header not."""
    return moment.replace(microsecond=0).isoformat()


def _listing(client, bucket: str, versioned: bool):
    """(key, etag, size, last modified, version id) of every current object."""
    if versioned:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for item in page.get("Versions", []):
                if item.get("IsLatest"):
                    yield item["Key"], item["ETag"].strip('"'), item["Size"], _second(item["LastModified"]), item["VersionId"]
    else:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                yield item["Key"], item["ETag"].strip('"'), item["Size"], _second(item["LastModified"]), None


def _version(version_id: str | None) -> dict:
    return {"VersionId": version_id} if version_id else {}


def _tags(client, bucket: str, key: str, version_id: str | None) -> dict:
    tags = client.get_object_tagging(Bucket=bucket, Key=key, **_version(version_id)).get("TagSet", [])
    return {t["Key"]: t["Value"] for t in tags}


@dataclass(frozen=True)
class Downloaded:
    """What one GET returned: the bytes' size and sha256, and the headers of that same version."""

    size: int
    sha256: str
    etag: str
    last_modified: str
    version_id: str | None
    content_type: str | None
    metadata: dict


def _download(client, bucket: str, key: str, version_id: str | None, versioned: bool, target: Path) -> Downloaded:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    response = client.get_object(Bucket=bucket, Key=key, **_version(version_id))
    body = response["Body"]
    digest, size = hashlib.sha256(), 0
    try:
        with tmp.open("wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    finally:
        body.close()
    os.replace(tmp, target)
    return Downloaded(size, digest.hexdigest(), response["ETag"].strip('"'), _second(response["LastModified"]),
                      response.get("VersionId") if versioned else None, response.get("ContentType"),
                      dict(response.get("Metadata", {})))


def _reusable(old: dict | None, seen: dict, mirror: Path, file: str) -> bool:
    if not old or "sha256" not in old or any(old.get(k) != v for k, v in seen.items()):
        return False
    path = mirror / file
    return path.is_file() and path.stat().st_size == seen["size"]


def _refresh_tags(client, bucket: str, entries: dict[str, dict]) -> None:
    """Tags change without changing ETag or last-modified: re-read them for reused objects."""
    def read(item):
        key, entry = item
        return key, _tags(client, bucket, key, entry.get("version_id"))
    with ThreadPoolExecutor(max_workers=TAG_READERS, thread_name_prefix="object-tags") as pool:
        for key, tags in pool.map(read, list(entries.items())):
            entries[key] = {**entries[key], "tags": tags}


def _sync_bucket(ctx: BackupContext, client, bucket: str, mirror: Path, previous: dict, full: bool) -> tuple[dict, int, int]:
    """Bring the mirror of one bucket up to date; (index entry, downloaded objects, downloaded bytes)."""
    versioned = client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    entries: dict[str, dict] = {}
    reused: dict[str, dict] = {}
    downloaded = downloaded_bytes = 0
    for key, etag, size, modified, version_id in _listing(client, bucket, versioned):
        seen = {"etag": etag, "size": size, "last_modified": modified, "version_id": version_id}
        file = object_file(bucket, key)
        if not full and _reusable(previous.get(key), seen, mirror, file):
            reused[key] = previous[key]
            continue
        got = _download(client, bucket, key, version_id, versioned, mirror / file)
        entries[key] = {"etag": got.etag, "size": got.size, "last_modified": got.last_modified,
                        "version_id": got.version_id, "file": file, "sha256": got.sha256,
                        "content_type": got.content_type, "metadata": got.metadata,
                        "tags": _tags(client, bucket, key, got.version_id)}
        downloaded += 1
        downloaded_bytes += got.size
        ctx.report.progress(f"objects {bucket}", downloaded_bytes, None)
    _refresh_tags(client, bucket, reused)
    entries.update(reused)
    return {"versioned": versioned, "objects": dict(sorted(entries.items()))}, downloaded, downloaded_bytes


def _prune_mirror(mirror: Path, index: dict) -> None:
    wanted = {e["file"] for b in index["buckets"].values() for e in b["objects"].values()}
    objects = mirror / "objects"
    if not objects.exists():
        return
    for path in objects.rglob("*"):
        if path.is_file() and path.relative_to(mirror).as_posix() not in wanted:
            path.unlink()


def backup(ctx: BackupContext) -> TierResult:
    watch = Stopwatch()
    names = ctx.names
    swept = sweep_leftovers(ctx.settings, names)
    try:
        client = services.s3_client(ctx.settings)
        buckets = tenant_buckets(client, names)
    except S3Errors as exc:
        raise OperationFailed(f"tenant {names.tenant_id}, tier object_storage: listing buckets failed: {one_line(exc)}") from None
    ctx.captured[TIER] = set()
    if not buckets:
        return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds, details={"buckets": []})
    mirror = mirror_dir(ctx.settings, names)
    _private_dir(mirror, Path(ctx.settings.state_dir) / "mirror")
    old_index = _load_index(mirror)
    full = ctx.backup_type == "full"
    index: dict = {"tenant": names.tenant_id, "buckets": {}}
    downloaded = downloaded_bytes = 0
    for bucket in buckets:
        try:
            previous = old_index.get("buckets", {}).get(bucket, {}).get("objects", {})
            entry, n, nbytes = _sync_bucket(ctx, client, bucket, mirror, previous, full)
        except S3Errors as exc:
            raise OperationFailed(f"tenant {names.tenant_id}, tier object_storage: bucket {bucket}: {one_line(exc)}") from None
        index["buckets"][bucket] = entry
        downloaded += n
        downloaded_bytes += nbytes
    _write_atomic(mirror / INDEX, json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False).encode())
    _prune_mirror(mirror, index)
    previous_tier = ctx.previous_tier(TIER)
    parent = previous_tier.snapshots.get("objects") if previous_tier else None
    summary = ctx.repo.backup_directory(mirror, tier_tags(ctx.session_id, TIER, "objects", ctx.backup_type),
                                       ctx.session_time, parent=parent, force=full,
                                       progress=ctx.restic_progress("object storage"))
    objects = sum(len(b["objects"]) for b in index["buckets"].values())
    total = sum(e["size"] or 0 for b in index["buckets"].values() for e in b["objects"].values())
    ctx.captured[TIER] = {f"{bucket[len(names.bucket_prefix):]}/{key}"
                          for bucket, b in index["buckets"].items() for key in b["objects"]}
    return TierResult(
        TIER, STATUS_OK, snapshots={"objects": summary.snapshot_id}, bytes_processed=total,
        bytes_added=summary.data_added, items=objects, duration_seconds=watch.seconds,
        checksums={"objects": {f"{bucket}/{key}": [e["etag"], e["size"], e["sha256"]]
                               for bucket, b in index["buckets"].items() for key, e in b["objects"].items()}},
        details={"buckets": buckets, "objects": objects, "downloaded": downloaded, "downloaded_bytes": downloaded_bytes,
                 "reused": objects - downloaded, "leftovers_swept": len(swept),
                 "versioned_buckets": [b for b, e in index["buckets"].items() if e["versioned"]],
                 "version_ids": {f"{bucket}/{key}": e["version_id"] for bucket, b in index["buckets"].items()
                                 for key, e in b["objects"].items() if e.get("version_id")}},
    )


# --- restore -------------------------------------------------------------------------------

def _present(client, bucket: str) -> set[str]:
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def verify_staged(ctx: RestoreContext, index: dict, root: Path) -> None:
    """Every object of the snapshot is where the index says, inside the staging folder, with the
    size and sha256 the manifest recorded; raises before any bucket is touched."""
    where = f"tenant {ctx.target.tenant_id}, tier object_storage"
    expected = ctx.result.checksums.get("objects")
    listed = {}
    for bucket, entry in index.get("buckets", {}).items():
        if not ctx.source.owns_bucket(bucket):
            raise OperationFailed(f"{where}: the snapshot names bucket {bucket!r} of another tenant; nothing was changed")
        for key, obj in entry.get("objects", {}).items():
            file = obj.get("file")
            if not isinstance(file, str) or not OBJECT_FILE.fullmatch(file):
                raise OperationFailed(f"{where}: object {bucket}/{key} points outside the snapshot's staging folder "
                                      f"({file!r}); nothing was changed")
            listed[f"{bucket}/{key}"] = obj
    if expected is not None and set(expected) != set(listed):
        odd = sorted(set(expected) ^ set(listed))[:3]
        raise OperationFailed(f"{where}: the snapshot's index does not list the objects of the manifest "
                              f"({', '.join(odd)}); nothing was changed")
    for name, obj in sorted(listed.items()):
        record = (expected or {}).get(name)  # [etag, size] before sha256 was recorded, [etag, size, sha256] since
        size = (record[1] if record else obj.get("size")) or 0
        sha256 = (record[2] if record and len(record) > 2 else None) or obj.get("sha256")
        path = root / obj["file"]
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise OperationFailed(f"{where}: object {name} is missing from the snapshot or has the wrong size; "
                                  f"nothing was changed")
        if sha256 and _file_sha256(path) != sha256:
            raise OperationFailed(f"{where}: object {name} does not match its manifest checksum; nothing was changed")


def _restore_bucket(client, bucket: str, entries: dict, root: Path, region: str, outcome: RestoreOutcome) -> None:
    if not services.bucket_exists(client, bucket):
        services.create_bucket(client, bucket, region)
    for key in sorted(_present(client, bucket) - entries.keys()):
        client.delete_object(Bucket=bucket, Key=key)  # replace semantics: the bucket ends as it was
    for key, entry in entries.items():
        extra = {"ContentType": entry.get("content_type") or "application/octet-stream"}
        if entry.get("metadata"):
            extra["Metadata"] = entry["metadata"]
        if entry.get("tags"):
            extra["Tagging"] = urlencode(entry["tags"])
        client.upload_file(str(root / entry["file"]), bucket, key, ExtraArgs=extra, Config=TRANSFER)
        outcome.restored += 1


def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    where = f"tenant {ctx.target.tenant_id}, tier object_storage"
    sweep_leftovers(ctx.settings, ctx.target)
    client = services.s3_client(ctx.settings)
    staging = restore_staging_dir(ctx.settings)
    _private_dir(staging, staging)
    with tempfile.TemporaryDirectory(prefix=f"{ctx.target.local_name}-objects-", dir=staging) as tmp:
        root = Path(tmp)
        try:
            ctx.repo.restore(ctx.result.snapshots["objects"], root)
        except OperationFailed as exc:
            raise OperationFailed(f"{where}: the snapshot could not be read, nothing was changed: {exc}") from None
        try:
            index = json.loads((root / INDEX).read_text())
        except (OSError, ValueError) as exc:
            raise OperationFailed(f"{where}: the snapshot's {INDEX} is unreadable ({one_line(exc, 200)}); "
                                  f"nothing was changed") from None
        verify_staged(ctx, index, root)
        outcome.details.update(ctx.reapply(TIER, index))  # drops the erased persons' objects (the erasure ledger)
        for bucket, entry in sorted(index["buckets"].items()):
            target_bucket = rename_bucket(bucket, ctx.source, ctx.target)
            ctx.report.info(f"restoring {len(entry['objects'])} object(s) into bucket {target_bucket}")
            try:
                _restore_bucket(client, target_bucket, entry["objects"], root, ctx.settings.s3_region, outcome)
            except S3Errors as exc:
                raise OperationFailed(f"{where}: bucket {target_bucket}: {one_line(exc)}") from None
        restored_buckets = {rename_bucket(b, ctx.source, ctx.target) for b in index["buckets"]}
        others = [b for b in tenant_buckets(client, ctx.target) if b not in restored_buckets]
        if others:
            outcome.warnings.append(f"bucket(s) not in the session, left as they are: {', '.join(others)}")
        outcome.details["buckets"] = sorted(restored_buckets)
    return outcome


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS).


def drill_compare(check: DrillContext) -> str:
    """Every object the session recorded, of the recorded size, in the scratch tenant's buckets, and no other."""
    want = {}
    for key, (_etag, size, *_sha256) in check.recorded.checksums.get("objects", {}).items():
        bucket, _, obj = key.partition("/")
        if not check.source.owns_bucket(bucket):
            return f"object {key} of the manifest is not in a bucket of tenant {check.source.tenant_id}"
        want[f"{rename_bucket(bucket, check.source, check.scratch)}/{obj}"] = size
    for key in check.outcome.details.get("lgpd_reerased_keys", []):  # erased persons': not restored on purpose
        bucket, _, obj = key.partition("/")
        want.pop(f"{rename_bucket(bucket, check.source, check.scratch)}/{obj}", None)
    client = services.s3_client(check.settings)
    got = {}
    for bucket in tenant_buckets(client, check.scratch):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                got[f"{bucket}/{item['Key']}"] = item["Size"]
    if got == want:
        return "ok"
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return f"{len(diff)} object(s) differ, e.g. {diff[0]}"


SPEC = TierSpec(
    TIER, "storage", True, "object_storage", backup, restore,
    asset_key="object_storage_backup", kinds=("s3", "restic"), pool="s3", drill=drill_compare,
    description="The tenant's buckets cliente-{id}-*: bytes, content type, user metadata, tags; incremental "
                "sessions fetch only changed objects.",
)
