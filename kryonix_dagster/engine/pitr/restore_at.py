"""`restore ID --at T`: the tenant's database exactly as of T, every other tier from the newest
restore point at or before T.

Order: refuse what is outside the window (nothing touched); under the leases, close and archive
the current WAL segment (so a moment seconds ago is recoverable), restore the one database into
a scratch cluster, dump it, stop and remove the scratch cluster, then hand the dump to the same
staging database + verified, journaled swap the logical restore uses (tiers/postgres.py). The
other tenants' databases on the production cluster are never touched.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import pg, registry
from ..config import Settings
from ..errors import BadInput, OperationFailed
from ..manifest import STATUS_OK, TierResult, read_manifest, restore_points
from ..naming import names_for
from ..operation import tenant_operation
from ..pg_script import HASH_RENDERING
from ..reporting import NullReporter, Reporter
from ..restore import _read_through, restore_tiers, validate_restore_args
from ..tenant_repository import open_repository
from ..tiers import TIERS, tier
from ..tiers import postgres as pgtier
from ..lgpd.reapply import ErasureFilter, erasure_filter
from ..tiers.base import RestoreContext, RestoreOutcome
from . import archive
from .scratch import pg_dump_scratch, scratch_cluster, sweep


@dataclass
class PitrRestoreResult:
    tenant_id: str
    target_id: str
    at: datetime
    window: dict
    session_id: str | None = None  # the restore point the other tiers came from
    session_time: datetime | None = None
    tiers: dict[str, RestoreOutcome] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    wal_segment: str | None = None
    swept_scratch: int = 0
    success: bool = False
    duration_seconds: float = 0.0
    lgpd: dict = field(default_factory=lambda: {"subjects_reerased": 0})  # the erasure ledger re-applied

    def to_json(self) -> dict:
        return {"tenant": self.tenant_id, "into": self.target_id, "at": archive._iso(self.at),
                "window": self.window, "other_tiers_from": {
                    "session": self.session_id, "time": archive._iso(self.session_time)},
                "success": self.success, "duration_seconds": self.duration_seconds, "wal_segment": self.wal_segment,
                "tiers": {n: asdict(o) for n, o in self.tiers.items()}, "skipped": self.skipped,
                "lgpd": self.lgpd}


def _other_tiers(services: tuple[str, ...] | None) -> list[str]:
    """Tiers restored from a restore point: all but the database and what comes back with it."""
    chosen = services or tuple(t.name for t in TIERS)
    return [n for n in chosen if n != pgtier.TIER and tier(n).restored_with != pgtier.TIER]


def _restore_point_before(repo, at: datetime):
    if repo is None:
        return None
    for point in restore_points(repo):  # newest first
        if point.time <= at:
            return point
    return None


def run_restore_at(settings: Settings, tenant_id: str, at: datetime, into: str | None = None,
                   services: tuple[str, ...] | None = None, report: Reporter | None = None,
                   wait_seconds: float = 0) -> PitrRestoreResult:
    report = report or NullReporter()
    validate_restore_args(tenant_id, into, services, None)
    at = at.astimezone(timezone.utc)
    if at > datetime.now(timezone.utc):
        raise BadInput(f"--at {archive._iso(at)} is in the future")
    target_id = into or tenant_id
    if into and registry.get_tenant(settings, into) is None:
        raise BadInput(f"tenant {into} is not registered (add it with `kryonix-backup tenants add`)")
    registry.refuse_offboarded(settings, tenant_id, target_id)  # pgBackRest still holds its database
    source, target = names_for(settings, tenant_id), names_for(settings, target_id)
    pgbr, cluster, cfg = archive.engine_for(settings)
    archive._require_setup(cfg)
    state = archive.status(settings)
    result = PitrRestoreResult(tenant_id, target_id, at, state.window.to_json())
    if not state.window.covers(at):
        raise OperationFailed(f"tenant {tenant_id}: {archive._iso(at)} is outside the {state.window.describe()}; "
                              "nothing was touched")
    with_db = services is None or pgtier.TIER in services
    others = _other_tiers(services)
    repo = open_repository(settings, tenant_id) if others else None  # restic only when a tier needs it
    point = _restore_point_before(repo, at)
    try:
        manifest = read_manifest(repo, point) if point else None
    except ValueError as exc:  # tampered or foreign manifest: never handed to the tools
        raise OperationFailed(f"tenant {tenant_id}: restore point {point.session_id}: {exc}; nothing was touched") from None
    todo = []
    for name in others:
        entry = manifest.tiers.get(name) if manifest else None
        if entry is None or entry.status != STATUS_OK:
            result.skipped[name] = ("no restore point at or before --at" if manifest is None
                                    else f"{'not' if entry is None else entry.status} in session {manifest.session_id}")
            if services and name in services:
                raise BadInput(f"tenant {tenant_id}: cannot restore {name} as of {archive._iso(at)}: "
                               f"{result.skipped[name]}")
            continue
        todo.append(tier(name))
    if manifest:
        result.session_id, result.session_time = manifest.session_id, point.time
        report.info(f"other tiers come from restore point {manifest.session_id} ({archive._iso(point.time)})")
    also = () if target_id == tenant_id else (tenant_id,)
    with tenant_operation(settings, target_id, "restore", wait_seconds=wait_seconds, also_lease=also) as op:
        op.audit = _audit(result)
        registry.refuse_offboarded(settings, tenant_id, target_id)  # off-boarded while we waited
        # the ledger is read under the leases: an erasure committed while this restore waited is
        # in it, and is re-applied before anything goes live
        erasure = erasure_filter(settings, source, target)
        result.swept_scratch = sweep(cfg.scratch_root, cluster.owner, cluster)
        if result.swept_scratch:
            report.warn(f"removed {result.swept_scratch} scratch cluster(s) an interrupted restore left behind")
        if manifest and todo:
            _read_through(repo, manifest, todo, target_id, report)
        if with_db:
            report.info("closing the current WAL segment and waiting until it is archived")
            result.wal_segment = archive.switch_and_wait(settings)
            op.ensure_lease()
            result.tiers[pgtier.TIER] = _restore_database(settings, pgbr, cluster, cfg.scratch_root, source, target,
                                                          at, report, erasure)
        if todo:
            restore_tiers(settings, source, target, repo, manifest, todo, report, before_each=op.ensure_lease,
                          outcomes=result.tiers, preflight=False, erasure=erasure)
        if erasure is not None:
            result.lgpd = erasure.to_json()
        result.success = True
        result.duration_seconds = op.seconds
        op.audit = _audit(result)
    return result


def _restore_database(settings, pgbr, cluster, scratch_root: Path, source, target, at: datetime,
                      report: Reporter, erasure: ErasureFilter | None) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=pgtier.TIER)
    pgtier.heal_interrupted_swap(settings, target, report)
    pgtier._sweep_staged_dumps(settings, target)
    fd, name = tempfile.mkstemp(prefix=f"{target.local_name}-", suffix=".pgdump",
                                dir=pgtier._staging_dir(settings))
    os.close(fd)
    dump = Path(name)
    try:
        with scratch_cluster(pgbr, cluster, scratch_root, source.database, at, report) as scratch:
            scratch_settings = settings.with_overrides(pg_dsn=scratch.dsn)
            outcome.details["scratch"] = {"whole_cluster": scratch.whole, "base_backup": scratch.backup_set}
            if not pg.database_exists(scratch.dsn, source.database):
                raise OperationFailed(f"tenant {source.tenant_id}: database {source.database} did not exist at "
                                      f"{archive._iso(at)} (`pitr status` gives each tenant's window start); "
                                      "nothing was changed")
            roles = pgtier.tenant_roles(scratch_settings, source)
            checksums = pgtier.staged_checksums(scratch.dsn, source.database)  # nobody writes the scratch cluster
            with pg.connection(scratch.dsn, source.database) as conn, conn.cursor() as cur:
                properties = pgtier.database_properties(cur, source.database)
            report.info(f"dumping {source.database} from the scratch cluster")
            pg_dump_scratch(scratch, cluster, source.database, dump)
        entry = TierResult(pgtier.TIER, STATUS_OK, checksums={"tables": checksums, "rendering": HASH_RENDERING},
                           details={"database": source.database, "database_properties": properties})
        ctx = RestoreContext(settings, source, target, None, None, entry, report, erasure=erasure)
        pgtier._restore_roles(ctx, roles, outcome)
        pgtier._restore_database(ctx, dump, outcome)
    finally:
        dump.unlink(missing_ok=True)
    outcome.details["at"] = archive._iso(at)
    return outcome


def _audit(result: PitrRestoreResult) -> dict:
    return {"session_id": result.session_id,
            "details": {"source": result.tenant_id, "at": archive._iso(result.at), "pitr": True,
                        "tiers": {n: o.restored for n, o in result.tiers.items()}, "skipped": result.skipped}}
