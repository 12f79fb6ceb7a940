"""`lgpd erase … --rewrite`: take the erased persons out of the repository itself.

restic 0.14 has no `rewrite`, so each restore point is rebuilt from backup/forget/prune, under
the tenant's lease:

1. for each restore point (newest first), each tier that can hold a person is staged in
   scratch and the tenant's whole erasure ledger is applied to it: the PostgreSQL dump is
   restored into a scratch database (`<database>__lgpd`), the Redis stream is parsed, the
   objects, app-data and compliance snapshots are restored into a private scratch folder;
2. only a tier where the ledger found somebody is backed up again: same session id, same tier
   and part tags (and `retention=legal` for compliance), the original time (`--time`), with the
   manifest's checksums recomputed for what it now holds;
3. the new manifest (the old one with those tiers replaced) is written LAST, and only then are
   the old manifest and the replaced tier snapshots forgotten; one prune at the end.

Killed at any moment, no restore point is lost: before step 3 the old manifest still names
complete old snapshots (the new ones are unreferenced duplicates, removed by the next forget or
rewrite); after the new manifest is written both restore points are complete until the old one
is forgotten. The RabbitMQ tier is not rewritten: the rules name no person location in it.
"""
from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from .. import locations, pg, procs, registry
from ..config import Settings
from ..errors import OperationFailed, one_line
from ..manifest import STATUS_OK, SessionManifest, TierResult, read_manifest, restore_points, write_manifest
from ..naming import TenantNames, names_for, repository_in
from ..operation import tenant_operation
from ..reporting import NullReporter, Reporter
from ..repository import Restic
from ..tenant_repository import key_folder, open_repository
from ..tiers import appdata, compliance, object_storage, postgres, redis_keys
from ..tiers.base import BackupContext
from . import ledger, ledger_stash
from .reapply import ErasureFilter, erased_object, erased_redis_key, reapply_database, reapply_folder
from .rules import load_rules


@dataclass
class RewriteContext:
    settings: Settings
    names: TenantNames
    repo: Restic
    filt: ErasureFilter
    manifest: SessionManifest
    result: TierResult
    scratch: Path
    report: Reporter
    time: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.time = datetime.fromisoformat(self.manifest.started_at)

    def tags(self, part: str) -> list[str]:
        from ..manifest import tier_tags
        return tier_tags(self.manifest.session_id, self.result.tier, part, self.manifest.backup_type)


# --- one rewriter per tier: a new TierResult, or None when the person is not in it ---------------

def _postgresql(rc: RewriteContext) -> TierResult | None:
    dsn, database = rc.settings.pg_dsn, f"{rc.names.database}__lgpd"
    dump = rc.scratch / postgres.DUMP_FILE
    with dump.open("wb") as out:
        rc.repo.dump_to(rc.result.snapshots["dump"], f"/{postgres.DUMP_FILE}", out)
    pg.drop_database(dsn, database)
    pg.create_database(dsn, database)
    try:
        args, env = pg.tool_args(dsn, database)
        proc = procs.run(["pg_restore", "--exit-on-error", "--no-password", *args, str(dump)],
                         capture_output=True, env=env)
        if proc.returncode != 0:
            raise OperationFailed(f"tenant {rc.names.tenant_id}, tier postgresql: pg_restore of session "
                                  f"{rc.manifest.session_id} failed: {one_line(proc.stderr.decode(errors='replace'))}")
        before = rc.filt.erased.total
        with pg.connection(dsn, database) as conn, conn.cursor() as cur:
            reapply_database(rc.filt, cur)
        if rc.filt.erased.total == before:
            return None
        tenant = registry.require_tenant(rc.settings, rc.names.tenant_id)
        ctx = BackupContext(rc.settings, tenant, replace(rc.names, database=database), rc.repo,
                            rc.manifest.session_id, rc.time, rc.manifest.backup_type, rc.report)
        new = postgres.backup(ctx)
        new.details["database"] = rc.names.database
        return new
    finally:
        pg.drop_database(dsn, database)


def _serialize_redis(records: list[tuple[bytes, int, bytes]]) -> bytes:
    body, expiries = [redis_keys.MAGIC], []
    for index, (key, expiry, payload) in enumerate(records):
        body.append(redis_keys._RECORD.pack(1, len(key), len(payload)) + key + payload)
        if expiry != redis_keys.NO_EXPIRY:
            expiries.append(redis_keys._EXPIRY.pack(index, expiry))
    return b"".join(body) + redis_keys.TRAILER + b"".join(expiries)


def _redis(rc: RewriteContext) -> TierResult | None:
    import hashlib
    data = rc.repo.dump_bytes(rc.result.snapshots["keys"], f"/{redis_keys.STREAM_FILE}")
    records = list(redis_keys.parse_records(data))
    kept = [r for r in records if not erased_redis_key(rc.filt, rc.names, r[0])]
    if len(kept) == len(records):
        return None
    rc.filt.erased.redis += len(records) - len(kept)
    stream = _serialize_redis(kept)
    summary = rc.repo.backup_bytes(stream, redis_keys.STREAM_FILE, rc.tags("keys"), rc.time)
    return replace(rc.result, snapshots={"keys": summary.snapshot_id}, items=len(kept), bytes_added=summary.data_added,
                   checksums={**rc.result.checksums, "stream_sha256": hashlib.sha256(stream).hexdigest(),
                              "keys": len(kept)},
                   details={**rc.result.details, "keys": len(kept)})


def _objects(rc: RewriteContext) -> TierResult | None:
    root = rc.scratch / "objects"
    rc.repo.restore(rc.result.snapshots["objects"], root)
    index = json.loads((root / object_storage.INDEX).read_text())
    dropped = []
    for bucket, entry in index["buckets"].items():
        for key in [k for k in entry["objects"] if erased_object(rc.filt, rc.names, bucket, k)]:
            (root / entry["objects"].pop(key)["file"]).unlink(missing_ok=True)
            dropped.append(f"{bucket}/{key}")
    if not dropped:
        return None
    for name in dropped:
        bucket = name.split("/", 1)[0]
        rc.filt.erased.objects[bucket] = rc.filt.erased.objects.get(bucket, 0) + 1
    (root / object_storage.INDEX).write_text(json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False))
    summary = rc.repo.backup_directory(root, rc.tags("objects"), rc.time, force=True)
    objects = {k: v for k, v in rc.result.checksums.get("objects", {}).items() if k not in dropped}
    versions = {k: v for k, v in rc.result.details.get("version_ids", {}).items() if k not in dropped}
    return replace(rc.result, snapshots={"objects": summary.snapshot_id}, items=len(objects),
                   bytes_added=summary.data_added, checksums={**rc.result.checksums, "objects": objects},
                   details={**rc.result.details, "objects": len(objects), "version_ids": versions})


def _appdata(rc: RewriteContext) -> TierResult | None:
    root = rc.scratch / "appdata"
    rc.repo.restore(rc.result.snapshots["files"], root)
    before = rc.filt.erased.appdata
    reapply_folder(rc.filt, root)
    if rc.filt.erased.appdata == before:
        return None
    summary = rc.repo.backup_directory(root, rc.tags("files"), rc.time, excludes=appdata.EXCLUDES, force=True)
    files = appdata.inventory(root)
    return replace(rc.result, snapshots={"files": summary.snapshot_id}, items=len(files),
                   bytes_added=summary.data_added, checksums={**rc.result.checksums, "files": files})


def _filter_csv(rc: RewriteContext, path: Path) -> int:
    """Rows of an erased person deleted/anonymised in one saved lgpd table; how many changed."""
    table = f"{compliance.SCHEMA}.{path.stem}"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return 0
    header, body, changed = rows[0], rows[1:], 0
    for key_name, where in rc.filt.rules.person.items():
        for loc in where.database:
            if loc.table != table or loc.action == "keep" or loc.match not in header:
                continue
            at, kept = header.index(loc.match), []
            for row in body:
                if row[at] == "" or not rc.filt.erased_key(key_name, row[at]):
                    kept.append(row)
                    continue
                changed += 1
                if loc.action == "anonymise":
                    for column, value in loc.set.items():
                        if column in header:
                            row[header.index(column)] = "" if value is None else value
                    kept.append(row)
            body = kept
    if changed:
        with path.open("w", encoding="utf-8", newline="") as out:
            csv.writer(out).writerows([header, *body])
        rc.filt.erased.database[table] = rc.filt.erased.database.get(table, 0) + changed
    return changed


def _compliance(rc: RewriteContext) -> TierResult | None:
    root = rc.scratch / "compliance"
    rc.repo.restore(rc.result.snapshots["records"], root)
    files = sorted((root / compliance.SCHEMA).glob("*.csv")) if (root / compliance.SCHEMA).is_dir() else []
    if not sum(_filter_csv(rc, path) for path in files):
        return None
    summary = rc.repo.backup_directory(root, [*rc.tags("records"), compliance.LEGAL_TAG], rc.time, force=True)
    rows = {f"{p.parent.name}/{p.name}": max(0, sum(1 for _ in csv.reader(p.open(encoding="utf-8", newline=""))) - 1)
            for p in root.glob("*/*.csv")}
    return replace(rc.result, snapshots={"records": summary.snapshot_id}, items=sum(rows.values()),
                   bytes_added=summary.data_added, checksums={**rc.result.checksums, "rows": rows})


REWRITERS = {"postgresql": _postgresql, "redis": _redis, "object_storage": _objects, "appdata": _appdata,
             "compliance": _compliance}


# --- the restore points -------------------------------------------------------------------------

def _rewrite_point(settings: Settings, names: TenantNames, repo: Restic, filt: ErasureFilter,
                   manifest: SessionManifest, report: Reporter) -> dict[str, TierResult]:
    new: dict[str, TierResult] = {}
    staging = Path(settings.state_dir) / "restore"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        for name, result in manifest.tiers.items():
            if name not in REWRITERS or result.status != STATUS_OK or not result.snapshots:
                continue
            with tempfile.TemporaryDirectory(prefix=f"{names.local_name}-lgpd-", dir=staging) as tmp:
                context = RewriteContext(settings, names, repo, filt, manifest, result, Path(tmp), report)
                rewritten = REWRITERS[name](context)
            if rewritten is not None:
                report.info(f"tenant {names.tenant_id}: session {manifest.session_id}, tier {name}: rewritten")
                new[name] = rewritten
    except BaseException:  # the old restore point stands; take back what this one already wrote
        _forget_quietly(repo, [sid for t in new.values() for sid in t.snapshots.values()], report)
        raise
    return new


def _forget_quietly(repo: Restic, snapshot_ids: list[str], report: Reporter) -> None:
    try:
        repo.forget_ids(snapshot_ids)
    except Exception as exc:  # unreferenced duplicates: the next forget or rewrite removes them
        report.warn(f"rewrite: {len(snapshot_ids)} unreferenced snapshot(s) left: {one_line(str(exc), 200)}")


# --- the locations -------------------------------------------------------------------------------

COPY = locations.SECONDARY  # the off-site copy's name in certificates and reports (rewritten through its admin path)


def _copy_exists(settings: Settings, tenant_id: str) -> bool:
    """The tenant has a repository in the off-site copy, seen through the workers' endpoint;
    storage that does not answer counts as holding one (fail closed)."""
    where = locations.location(settings, locations.SECONDARY)
    try:
        folder = key_folder(settings, repository_in(where.root, tenant_id), where.access_key, where.secret_key)
        return folder is None or bool(folder.names())
    except OSError:
        return True


def rewrite_locations(settings: Settings, tenant_id: str) -> list[str]:
    """The location kinds a rewrite changes: the primary, and the off-site copy through its
    admin path. Raises OperationFailed (nothing changed) when the copy holds the tenant's
    restore points and cannot be rewritten here (no admin path: workers cannot delete)."""
    kinds = [locations.PRIMARY]
    if settings.repo_secondary_admin:
        kinds.append(locations.SECONDARY_ADMIN)
    elif locations.secondary_configured(settings) and _copy_exists(settings, tenant_id):
        raise OperationFailed(f"tenant {tenant_id}: --rewrite must also rewrite the off-site copy, which holds its "
                              "restore points, and that needs its admin path (set KRYONIX_REPO_SECONDARY_ADMIN, on "
                              "the admin host); nothing was changed")
    return kinds


def _rewrite_location(settings: Settings, names: TenantNames, kind: str, matcher: ledger.Matcher, op,
                      report: Reporter) -> tuple[list[dict], ErasureFilter] | None:
    """Every restore point of one location rewritten, the old data pruned with no unused
    data tolerated (no blob holding an erased value stays readable); None: no repository there."""
    repo = open_repository(settings, names.tenant_id, repository=kind)
    if repo is None or (kind != locations.PRIMARY and not repo.exists()):
        return None
    label = COPY if kind != locations.PRIMARY else kind
    filt = ErasureFilter(load_rules(), [matcher])
    done: list[dict] = []
    for point in restore_points(repo):
        manifest = read_manifest(repo, point)
        new = _rewrite_point(settings, names, repo, filt, manifest, report)
        if not new:
            continue
        rebuilt = replace(manifest, tiers={**manifest.tiers, **new})
        try:
            op.ensure_lease()  # fenced: the new manifest is written only while the lease is ours
            new_manifest = write_manifest(repo, rebuilt, datetime.fromisoformat(manifest.started_at))
        except BaseException:  # the old restore point stands; take back the new, unreferenced snapshots
            _forget_quietly(repo, [sid for t in new.values() for sid in t.snapshots.values()], report)
            raise
        old = [point.manifest_snapshot] + [sid for name in new for sid in manifest.tiers[name].snapshots.values()]
        repo.forget_ids(old)
        done.append({"location": label, "session": manifest.session_id, "old_manifest": point.manifest_snapshot,
                     "new_manifest": new_manifest, "tiers": sorted(new)})
    # pruned even when nothing was rewritten now: a run killed after its forget left the old data
    report.info(f"tenant {names.tenant_id} ({label}): pruning old data ({len(done)} restore point(s) rewritten)")
    op.ensure_lease()
    repo.prune(max_unused="0")
    return done, filt


def run_rewrite(settings: Settings, tenant_id: str, certificate=None, report: Reporter | None = None,
                wait_seconds: float = 0) -> list[dict]:
    """Rewrite every restore point, in every location that holds them (the primary and the
    off-site copy), that holds a person of the tenant's ledger; what was rewritten.

    Only the ledger entries read when the rewrite started (inside the lease) are applied, and
    only they are marked rewritten, once every location is done."""
    report = report or NullReporter()
    names = names_for(settings, tenant_id)
    kinds = rewrite_locations(settings, tenant_id)  # refused before anything changes
    done: list[dict] = []
    per_location: dict[str, list[dict]] = {}
    with tenant_operation(settings, tenant_id, "lgpd_rewrite", wait_seconds=wait_seconds) as op:
        present = ledger.entries(settings, tenant_id)
        matcher = ledger.matcher(settings, tenant_id, present)
        items = {}
        if matcher is not None:
            for kind in kinds:
                outcome = _rewrite_location(settings, names, kind, matcher, op, report)
                if outcome is not None:
                    label = COPY if kind != locations.PRIMARY else kind
                    per_location[label], items[label] = outcome[0], outcome[1].erased.to_json()
                    done += outcome[0]
            ledger.mark_rewritten(settings, [e.id for e in present if e.rewritten_at is None])
            ledger_stash.stash_everywhere(settings, tenant_id)
        op.audit = {"details": {"rewritten": done, "locations": sorted(per_location), "items": items}}
    if certificate is not None:
        certificate.rewritten, certificate.rewrite_done = done, True
        certificate.rewritten_locations = sorted(per_location)
    return done
