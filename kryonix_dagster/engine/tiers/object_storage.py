"""Object storage tier: the tenant's `cliente-{id}-*` buckets (exact prefix match).

Every object's bytes, content type, user metadata and tags. Each session builds the tier's
snapshot folder afresh in a private staging folder (`$KRYONIX_STATE_DIR/staging`, 0700) and
removes it when it ends: no worker keeps a plaintext copy of a tenant's objects between
sessions. Objects live under names derived from a hash of (bucket, key), so any key (spaces,
unicode, `..`, deep paths, a key that is a prefix of another) maps to one safe file, and
`index.json` maps keys to files and metadata, including the version id of versioned buckets.

Only changed objects are downloaded. An incremental session reads the previous session's
`index.json` from its snapshot; an object whose ETag, size, last-modified time and version id
are unchanged becomes a sparse placeholder (no data on disk) with the previous file's size and
mtime. Every file's mtime is derived from its object version (`version_mtime_ns`), so restic,
given the previous snapshot as parent and told to compare mtime and size only, keeps the
parent's content for placeholders without reading them and reads every downloaded file. The
session checks restic's own count of files it read: if restic read more files than were
downloaded (plus the index), a placeholder's zeros could be in the snapshot, so that snapshot
is forgotten and the tier is taken again downloading everything. A full session downloads
everything.

Each object's size, ETag and sha256 come from the download itself (never from the listing,
which a concurrent write can outdate), and the sha256 is recorded in the manifest. Tags can
change without touching ETag or last-modified, so an incremental session re-reads the tags
of every object it reuses. A restore verifies every byte of the snapshot against the
manifest (and refuses index paths outside its staging folder) before it changes a bucket;
the target buckets' keys are listed while restic fetches the snapshot, and the uploads and
the deletions of keys the snapshot lacks share one pool across buckets.
Leftovers of a killed run (backup and restore staging, and the per-tenant plaintext mirrors
older versions kept under `$KRYONIX_STATE_DIR/mirror`) are swept at the start of the next one.
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
from datetime import datetime
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
LAYOUT = "version-mtime-1"  # index marker: every file's mtime is version_mtime_ns of its object
OBJECT_FILE = re.compile(r"objects/[0-9a-f]{2}/[0-9a-f]{64}")
TAG_READERS = 8  # concurrent GetObjectTagging calls for reused objects
DOWNLOADERS = 4  # concurrent GetObject calls
VERIFIERS = 4  # files hashed at once before a restore (hashlib and reads release the GIL)
UPLOADERS = 8  # concurrent PutObject/DeleteObject calls of a restore (botocore pools 10 connections)


def object_file(bucket: str, key: str) -> str:
    digest = hashlib.sha256(f"{bucket}\0{key}".encode()).hexdigest()
    return f"objects/{digest[:2]}/{digest}"


def version_mtime_ns(etag: str, size: int, last_modified: str, version_id: str | None) -> int:
    """The mtime a file of this object version gets: its last-modified second, plus
    nanoseconds from a hash of ETag, size and version id. Two sessions give the same file
    the same mtime exactly when they saw the same object version."""
    second = int(datetime.fromisoformat(last_modified).timestamp())
    salt = int(hashlib.sha256(f"{etag}\0{size}\0{version_id or ''}".encode()).hexdigest()[:12], 16)
    return second * 1_000_000_000 + salt % 1_000_000_000


def legacy_mirror_dir(settings) -> Path:
    """Where older versions kept a plaintext mirror of every tenant's objects (now removed)."""
    return Path(settings.state_dir) / "mirror"


def backup_staging_dir(settings) -> Path:
    return Path(settings.state_dir) / "staging"


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
    """Remove plaintext objects a killed run of this tenant left in backup or restore staging,
    and the plaintext mirrors older versions kept for every tenant."""
    removed = []
    legacy = legacy_mirror_dir(settings)
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)
        removed.append(legacy.name)
    for staging in (backup_staging_dir(settings), restore_staging_dir(settings)):
        if staging.is_dir():
            for leftover in staging.glob(f"{names.local_name}-objects-*"):
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover.name)
    return removed


def tenant_buckets(client, names: TenantNames) -> list[str]:
    return sorted(b["Name"] for b in client.list_buckets().get("Buckets", []) if names.owns_bucket(b["Name"]))


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


def _set_mtime(path: Path, entry: dict) -> None:
    mtime = version_mtime_ns(entry["etag"], entry["size"], entry["last_modified"], entry.get("version_id"))
    os.utime(path, ns=(mtime, mtime))


def _download(client, bucket: str, key: str, version_id: str | None, versioned: bool, target: Path) -> Downloaded:
    target.parent.mkdir(parents=True, exist_ok=True)
    response = client.get_object(Bucket=bucket, Key=key, **_version(version_id))
    body = response["Body"]
    digest, size = hashlib.sha256(), 0
    try:
        with target.open("wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    finally:
        body.close()
    return Downloaded(size, digest.hexdigest(), response["ETag"].strip('"'), _second(response["LastModified"]),
                      response.get("VersionId") if versioned else None, response.get("ContentType"),
                      dict(response.get("Metadata", {})))


def _fetch(client, bucket: str, key: str, version_id: str | None, versioned: bool, root: Path) -> dict:
    """Download one object into the staging folder; its index entry (file mtime set)."""
    file = object_file(bucket, key)
    got = _download(client, bucket, key, version_id, versioned, root / file)
    entry = {"etag": got.etag, "size": got.size, "last_modified": got.last_modified,
             "version_id": got.version_id, "file": file, "sha256": got.sha256,
             "content_type": got.content_type, "metadata": got.metadata,
             "tags": _tags(client, bucket, key, got.version_id)}
    _set_mtime(root / file, entry)
    return entry


def _placeholder(root: Path, entry: dict) -> None:
    """A sparse file of the object's size and version mtime: no bytes of the object on disk."""
    path = root / entry["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(entry["size"])
    _set_mtime(path, entry)


def _reusable(old: dict | None, seen: dict, file: str) -> bool:
    return bool(old) and "sha256" in old and old.get("file") == file and all(old.get(k) == v for k, v in seen.items())


def _refresh_tags(client, bucket: str, entries: dict[str, dict]) -> None:
    """Tags change without changing ETag or last-modified: re-read them for reused objects."""
    def read(item):
        key, entry = item
        return key, _tags(client, bucket, key, entry.get("version_id"))
    with ThreadPoolExecutor(max_workers=TAG_READERS, thread_name_prefix="object-tags") as pool:
        for key, tags in pool.map(read, list(entries.items())):
            entries[key] = {**entries[key], "tags": tags}


def _stage_bucket(ctx: BackupContext, client, bucket: str, root: Path, previous: dict) -> tuple[dict, int, int]:
    """Stage one bucket: changed objects downloaded, the others as placeholders of the
    previous session's files; (index entry, downloaded objects, downloaded bytes)."""
    versioned = client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    wanted: list[tuple[str, str | None]] = []
    reused: dict[str, dict] = {}
    for key, etag, size, modified, version_id in _listing(client, bucket, versioned):
        seen = {"etag": etag, "size": size, "last_modified": modified, "version_id": version_id}
        if _reusable(previous.get(key), seen, object_file(bucket, key)):
            reused[key] = previous[key]
        else:
            wanted.append((key, version_id))
    entries: dict[str, dict] = {}
    downloaded_bytes = 0
    with ThreadPoolExecutor(max_workers=DOWNLOADERS, thread_name_prefix="object-get") as pool:
        fetched = pool.map(lambda item: (item[0], _fetch(client, bucket, item[0], item[1], versioned, root)), wanted)
        for key, entry in fetched:
            entries[key] = entry
            downloaded_bytes += entry["size"]
            ctx.report.progress(f"objects {bucket}", downloaded_bytes, None)
    _refresh_tags(client, bucket, reused)
    for entry in reused.values():
        _placeholder(root, entry)
    entries.update(reused)
    return {"versioned": versioned, "objects": dict(sorted(entries.items()))}, len(wanted), downloaded_bytes


def _previous_index(ctx: BackupContext, parent: str | None) -> dict:
    """bucket → key → entry of the previous session's index, when its files carry version
    mtimes (older sessions' files carry download times: nothing is reused from those)."""
    if not parent:
        return {}
    try:
        doc = json.loads(ctx.repo.dump_bytes(parent, f"/{INDEX}"))
    except (OperationFailed, ValueError) as exc:
        ctx.report.warn(f"previous object index unreadable, downloading every object: {one_line(str(exc), 200)}")
        return {}
    if not isinstance(doc, dict) or doc.get("layout") != LAYOUT:
        return {}
    return {bucket: entry.get("objects", {}) for bucket, entry in doc.get("buckets", {}).items()}


@dataclass
class Staged:
    index: dict
    downloaded: int
    downloaded_bytes: int
    placeholders: int


def _stage(ctx: BackupContext, client, buckets: list[str], root: Path, previous: dict) -> Staged:
    names = ctx.names
    index: dict = {"tenant": names.tenant_id, "layout": LAYOUT, "buckets": {}}
    downloaded = downloaded_bytes = 0
    for bucket in buckets:
        try:
            entry, n, nbytes = _stage_bucket(ctx, client, bucket, root, previous.get(bucket, {}))
        except S3Errors as exc:
            raise OperationFailed(f"tenant {names.tenant_id}, tier object_storage: bucket {bucket}: {one_line(exc)}") from None
        index["buckets"][bucket] = entry
        downloaded += n
        downloaded_bytes += nbytes
    (root / INDEX).write_bytes(json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False).encode())
    objects = sum(len(b["objects"]) for b in index["buckets"].values())
    return Staged(index, downloaded, downloaded_bytes, objects - downloaded)


def _snapshot(ctx: BackupContext, client, buckets: list[str], parent: str | None, full: bool):
    """Stage the buckets in a fresh private folder, back it up, remove the folder."""
    base = backup_staging_dir(ctx.settings)
    _private_dir(base, base)
    previous = {} if full else _previous_index(ctx, parent)
    tags = tier_tags(ctx.session_id, TIER, "objects", ctx.backup_type)
    root = Path(tempfile.mkdtemp(prefix=f"{ctx.names.local_name}-objects-", dir=base))
    try:
        staged = _stage(ctx, client, buckets, root, previous)
        summary = ctx.repo.backup_directory(root, tags, ctx.session_time, parent=parent, force=full,
                                           mtime_and_size_only=True, progress=ctx.restic_progress("object storage"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return staged, summary


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
    full = ctx.backup_type == "full"
    previous_tier = ctx.previous_tier(TIER)
    parent = previous_tier.snapshots.get("objects") if previous_tier else None
    staged, summary = _snapshot(ctx, client, buckets, parent, full)
    read = summary.files_new + summary.files_changed
    retried = False
    if staged.placeholders and read > staged.downloaded + 1:  # restic read a placeholder: take it all again
        ctx.report.warn(f"restic read {read} file(s) for {staged.downloaded} downloaded object(s); "
                        f"downloading every object again")
        try:
            ctx.repo.forget_ids([summary.snapshot_id])
        except OperationFailed as exc:  # no manifest names it, so no restore ever reads it
            ctx.report.warn(f"could not forget the discarded objects snapshot {summary.snapshot_id[:8]}: {exc}")
        staged, summary = _snapshot(ctx, client, buckets, parent, True)
        retried = True
    index = staged.index
    objects = sum(len(b["objects"]) for b in index["buckets"].values())
    total = sum(e["size"] or 0 for b in index["buckets"].values() for e in b["objects"].values())
    ctx.captured[TIER] = {f"{bucket[len(names.bucket_prefix):]}/{key}"
                          for bucket, b in index["buckets"].items() for key in b["objects"]}
    return TierResult(
        TIER, STATUS_OK, snapshots={"objects": summary.snapshot_id}, bytes_processed=total,
        bytes_added=summary.data_added, items=objects, duration_seconds=watch.seconds,
        checksums={"objects": {f"{bucket}/{key}": [e["etag"], e["size"], e["sha256"]]
                               for bucket, b in index["buckets"].items() for key, e in b["objects"].items()}},
        details={"buckets": buckets, "objects": objects, "downloaded": staged.downloaded,
                 "downloaded_bytes": staged.downloaded_bytes, "reused": staged.placeholders,
                 "files_read_by_restic": summary.files_new + summary.files_changed,
                 "downloaded_again": retried, "leftovers_swept": len(swept),
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
    with ThreadPoolExecutor(max_workers=VERIFIERS, thread_name_prefix="object-verify") as pool:
        for problem in pool.map(lambda item: _staged_problem(item[0], item[1], (expected or {}).get(item[0]), root),
                                sorted(listed.items())):
            if problem:  # the first in key order, as a sequential check would report it
                raise OperationFailed(f"{where}: {problem}; nothing was changed")


def _staged_problem(name: str, obj: dict, record: list | None, root: Path) -> str | None:
    """Why one staged object does not match the manifest, or None (hashed off the GIL)."""
    size = (record[1] if record else obj.get("size")) or 0  # [etag, size] before sha256 was recorded
    sha256 = (record[2] if record and len(record) > 2 else None) or obj.get("sha256")
    path = root / obj["file"]
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return f"object {name} is missing from the snapshot or has the wrong size"
    if sha256 and _file_sha256(path) != sha256:
        return f"object {name} does not match its manifest checksum"
    return None


def _upload(client, bucket: str, key: str, entry: dict, root: Path) -> None:
    """One object back with its content type, user metadata and tags: one PUT below the
    multipart threshold, a multipart upload above it."""
    extra = {"ContentType": entry.get("content_type") or "application/octet-stream"}
    if entry.get("metadata"):
        extra["Metadata"] = entry["metadata"]
    if entry.get("tags"):
        extra["Tagging"] = urlencode(entry["tags"])
    path = root / entry["file"]
    if (entry.get("size") or 0) < TRANSFER.multipart_threshold:
        with path.open("rb") as body:
            client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    else:
        client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=TRANSFER)


@dataclass
class Live:
    """What the target's buckets hold: the keys of each bucket listed (None: bucket absent)."""

    keys: dict[str, set[str] | None]

    def of(self, client, bucket: str) -> set[str] | None:
        if bucket not in self.keys:  # not listed ahead (a manifest without its bucket list)
            self.keys[bucket] = _present(client, bucket) if services.bucket_exists(client, bucket) else None
        return self.keys[bucket]


def _list_live(settings, buckets: list[str]) -> tuple[object, Live]:
    """A client and the current keys of these buckets: built and read while restic fetches the
    snapshot (reads only; a client costs ~80 ms of CPU that restic's process does not need)."""
    client = services.s3_client(settings)
    live = Live({})
    for bucket in buckets:
        live.of(client, bucket)
    return client, live


def _replace_objects(client, plan: dict[str, dict], live: Live, root: Path, region: str, where: str,
                     outcome: RestoreOutcome) -> None:
    """Every verified object of every bucket uploaded, and the keys the snapshot lacks deleted
    (replace semantics: each bucket ends as it was), all through one pool of UPLOADERS; the
    first failure cancels what has not started and names its bucket."""
    tasks = []
    for bucket, entries in sorted(plan.items()):
        try:
            present = live.of(client, bucket)
            if present is None:
                services.create_bucket(client, bucket, region)
        except S3Errors as exc:
            raise OperationFailed(f"{where}: bucket {bucket}: {one_line(exc)}") from None
        tasks += [(bucket, key, None) for key in sorted((present or set()) - entries.keys())]
        tasks += [(bucket, key, entry) for key, entry in entries.items()]

    def run(task) -> bool:
        """True for a deleted key, False for an uploaded object."""
        bucket, key, entry = task
        try:
            if entry is None:
                client.delete_object(Bucket=bucket, Key=key)
            else:
                _upload(client, bucket, key, entry, root)
        except S3Errors as exc:
            raise OperationFailed(f"{where}: bucket {bucket}: {one_line(exc)}") from None
        return entry is None

    with ThreadPoolExecutor(max_workers=UPLOADERS, thread_name_prefix="object-put") as pool:
        futures = [pool.submit(run, task) for task in tasks]
        try:
            for future in futures:
                if future.result():
                    outcome.removed += 1
                else:
                    outcome.restored += 1
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def restore(ctx: RestoreContext) -> RestoreOutcome:
    """Fetch the snapshot into private staging while the target buckets are listed, verify
    every object against the manifest, re-apply the erasure ledger, then replace: nothing is
    written to a bucket before every byte of the snapshot has been checked."""
    outcome = RestoreOutcome(tier=TIER)
    where = f"tenant {ctx.target.tenant_id}, tier object_storage"
    sweep_leftovers(ctx.settings, ctx.target)
    staging = restore_staging_dir(ctx.settings)
    _private_dir(staging, staging)
    expected = [rename_bucket(b, ctx.source, ctx.target) for b in ctx.result.details.get("buckets", [])
                if ctx.source.owns_bucket(b)]
    with tempfile.TemporaryDirectory(prefix=f"{ctx.target.local_name}-objects-", dir=staging) as tmp, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="object-list") as lister:
        root = Path(tmp)
        listing = lister.submit(_list_live, ctx.settings, expected)
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
        try:
            client, live = listing.result()
        except S3Errors as exc:
            raise OperationFailed(f"{where}: listing the buckets failed, nothing was changed: {one_line(exc)}") from None
        plan = {rename_bucket(bucket, ctx.source, ctx.target): entry["objects"]
                for bucket, entry in index["buckets"].items()}
        for bucket, entries in sorted(plan.items()):
            ctx.report.info(f"restoring {len(entries)} object(s) into bucket {bucket}")
        _replace_objects(client, plan, live, root, ctx.settings.s3_region, where, outcome)
        try:
            others = [b for b in tenant_buckets(client, ctx.target) if b not in plan]
        except S3Errors as exc:
            raise OperationFailed(f"{where}: listing the buckets failed: {one_line(exc)}") from None
        if others:
            outcome.warnings.append(f"bucket(s) not in the session, left as they are: {', '.join(others)}")
        outcome.details["buckets"] = sorted(plan)
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
