"""Object storage tier: the tenant's `cliente-{id}-*` buckets (exact prefix match).

Every object's bytes, content type, user metadata and tags. A per-tenant local mirror
(`$KRYONIX_STATE_DIR/mirror/cliente_{id}/object_storage`) keeps the objects of the last
session under names derived from a hash of (bucket, key), so any key (spaces, unicode, `..`,
deep paths, a key that is a prefix of another) maps to one safe file. An incremental
session downloads only objects whose ETag, size or last-modified time changed, and restic
(with the previous session as parent) skips unchanged files without reading them. A full
session downloads everything again. `index.json` in the snapshot maps keys to files and
metadata, including the version id of versioned buckets.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from .. import services
from ..errors import OperationFailed, one_line
from ..manifest import STATUS_EMPTY, STATUS_OK, TierResult, tier_tags
from ..naming import TenantNames, rename_bucket
from .base import BackupContext, RestoreContext, RestoreOutcome, Stopwatch

S3Errors = (ClientError, BotoCoreError)
TRANSFER = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)
TIER = "object_storage"
INDEX = "index.json"


def object_file(bucket: str, key: str) -> str:
    digest = hashlib.sha256(f"{bucket}\0{key}".encode()).hexdigest()
    return f"objects/{digest[:2]}/{digest}"


def mirror_dir(ctx_settings, names: TenantNames) -> Path:
    return Path(ctx_settings.state_dir) / "mirror" / f"cliente_{names.tenant_id}" / TIER


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


def _listing(client, bucket: str, versioned: bool):
    """(key, etag, size, last modified, version id) of every current object."""
    if versioned:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for item in page.get("Versions", []):
                if item.get("IsLatest"):
                    yield item["Key"], item["ETag"].strip('"'), item["Size"], item["LastModified"].isoformat(), item["VersionId"]
    else:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                yield item["Key"], item["ETag"].strip('"'), item["Size"], item["LastModified"].isoformat(), None


def _version(version_id: str | None) -> dict:
    return {"VersionId": version_id} if version_id else {}


def _object_meta(client, bucket: str, key: str, version_id: str | None) -> dict:
    head = client.head_object(Bucket=bucket, Key=key, **_version(version_id))
    tags = client.get_object_tagging(Bucket=bucket, Key=key, **_version(version_id)).get("TagSet", [])
    return {"content_type": head.get("ContentType"), "metadata": dict(head.get("Metadata", {})),
            "tags": {t["Key"]: t["Value"] for t in tags}}


def _download(client, bucket: str, key: str, version_id: str | None, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    body = client.get_object(Bucket=bucket, Key=key, **_version(version_id))["Body"]
    try:
        with tmp.open("wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)
    finally:
        body.close()
    os.replace(tmp, target)


def _sync_bucket(ctx: BackupContext, client, bucket: str, mirror: Path, previous: dict, full: bool) -> tuple[dict, int, int]:
    """Bring the mirror of one bucket up to date; (index entry, downloaded objects, downloaded bytes)."""
    versioned = client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    entries: dict[str, dict] = {}
    downloaded = downloaded_bytes = 0
    for key, etag, size, modified, version_id in _listing(client, bucket, versioned):
        seen = {"etag": etag, "size": size, "last_modified": modified}
        old = previous.get(key)
        file = object_file(bucket, key)
        unchanged = (not full and old and all(old.get(k) == v for k, v in seen.items())
                     and (mirror / file).is_file() and (mirror / file).stat().st_size == size)
        if unchanged:
            entries[key] = old
            continue
        _download(client, bucket, key, version_id, mirror / file)
        entries[key] = {**seen, "file": file, **_object_meta(client, bucket, key, version_id), "version_id": version_id}
        downloaded += 1
        downloaded_bytes += size
        ctx.report.progress(f"objects {bucket}", downloaded_bytes, None)
    return {"versioned": versioned, "objects": entries}, downloaded, downloaded_bytes


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
    try:
        client = services.s3_client(ctx.settings)
        buckets = tenant_buckets(client, names)
    except S3Errors as exc:
        raise OperationFailed(f"tenant {names.tenant_id}, tier object_storage: listing buckets failed: {one_line(exc)}") from None
    ctx.captured[TIER] = set()
    if not buckets:
        return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds, details={"buckets": []})
    mirror = mirror_dir(ctx.settings, names)
    mirror.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        checksums={"objects": {f"{bucket}/{key}": [e["etag"], e["size"]]
                               for bucket, b in index["buckets"].items() for key, e in b["objects"].items()}},
        details={"buckets": buckets, "objects": objects, "downloaded": downloaded, "downloaded_bytes": downloaded_bytes,
                 "reused": objects - downloaded,
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


def _restore_bucket(client, bucket: str, entries: dict, root: Path, region: str, outcome: RestoreOutcome) -> None:
    if not services.bucket_exists(client, bucket):
        services.create_bucket(client, bucket, region)
    for key in sorted(_present(client, bucket) - entries.keys()):
        client.delete_object(Bucket=bucket, Key=key)  # replace semantics: the bucket ends as it was
    for key, entry in entries.items():
        path = root / entry["file"]
        if not path.is_file() or path.stat().st_size != (entry["size"] or 0):
            raise OperationFailed(f"object {bucket}/{key} is missing from the snapshot")
        extra = {"ContentType": entry.get("content_type") or "application/octet-stream"}
        if entry.get("metadata"):
            extra["Metadata"] = entry["metadata"]
        if entry.get("tags"):
            extra["Tagging"] = urlencode(entry["tags"])
        client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=TRANSFER)
        outcome.restored += 1


def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    client = services.s3_client(ctx.settings)
    staging = ctx.settings.state_dir / "restore"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix=f"cliente_{ctx.target.tenant_id}-objects-", dir=staging) as tmp:
        root = Path(tmp)
        ctx.repo.restore(ctx.result.snapshots["objects"], root)
        index = json.loads((root / INDEX).read_text())
        for bucket, entry in sorted(index["buckets"].items()):
            target_bucket = rename_bucket(bucket, ctx.source, ctx.target)
            ctx.report.info(f"restoring {len(entry['objects'])} object(s) into bucket {target_bucket}")
            try:
                _restore_bucket(client, target_bucket, entry["objects"], root, ctx.settings.s3_region, outcome)
            except S3Errors as exc:
                raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier object_storage: bucket {target_bucket}: "
                                      f"{one_line(exc)}") from None
        restored_buckets = {rename_bucket(b, ctx.source, ctx.target) for b in index["buckets"]}
        others = [b for b in tenant_buckets(client, ctx.target) if b not in restored_buckets]
        if others:
            outcome.warnings.append(f"bucket(s) not in the session, left as they are: {', '.join(others)}")
        outcome.details["buckets"] = sorted(restored_buckets)
    return outcome


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS). Imported here, not at the top, only so this block stays
# an append to the module.
from .base import TierSpec  # noqa: E402
from .base import DrillContext  # noqa: E402


def drill_compare(check: DrillContext) -> str:
    """Every object the session recorded, of the recorded size, in the scratch tenant's buckets, and no other."""
    want = {}
    for key, (_etag, size) in check.recorded.checksums.get("objects", {}).items():
        bucket, _, obj = key.partition("/")
        if not check.source.owns_bucket(bucket):
            return f"object {key} of the manifest is not in a bucket of tenant {check.source.tenant_id}"
        want[f"{rename_bucket(bucket, check.source, check.scratch)}/{obj}"] = size
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
