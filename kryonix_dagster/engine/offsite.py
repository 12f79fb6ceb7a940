"""The off-site copy: each tenant's restore points also in a second repository location
(`KRYONIX_REPO_SECONDARY`), written through an append-only endpoint workers cannot delete from.

`restic copy` moves whole restore points only: first the tier snapshots a manifest names,
then the manifest itself, so a copy killed half-way leaves tier snapshots that nothing lists
(the next copy finishes the restore point; restic skips what is already there). The copy
gives every snapshot a new id and records the source's in `original`: manifests read from
the copy are translated (manifest.py). The secondary's newest restore point per tenant is
kept in `tenants.offsite_copies` so `status` and the fleet report show the lag without
opening repositories.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import keys, locations, pg, registry
from .config import Settings
from .errors import BadInput
from .key_stash import ensure_stashed
from .manifest import SESSION_ID, RestorePoint, read_manifest, restore_points
from .naming import validate_tenant_id
from .operation import tenant_operation
from .plans import plan_for
from .reporting import NullReporter, Reporter
from .tenant_repository import open_repository


@dataclass
class CopyResult:
    tenant_id: str
    copied_sessions: list[str] = field(default_factory=list)
    snapshots_copied: int = 0
    restore_points_secondary: int = 0
    latest_session: str | None = None
    duration_seconds: float = 0.0

    def to_json(self) -> dict:
        return {"tenant": self.tenant_id, "copied_sessions": self.copied_sessions,
                "snapshots_copied": self.snapshots_copied, "restore_points_secondary": self.restore_points_secondary,
                "latest_session": self.latest_session, "duration_seconds": self.duration_seconds}


def session_time(session_id: str) -> datetime | None:
    """A session id starts with its UTC start time (20261129T020000Z-a1b2c3)."""
    if not session_id or not SESSION_ID.fullmatch(session_id):
        return None
    return datetime.strptime(session_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def run_copy(settings: Settings, tenant_id: str, wait_seconds: float = 0,
             report: Reporter | None = None) -> CopyResult:
    """Copy the tenant's restore points that the secondary lacks, oldest first, under the
    tenant's lease (a forget's prune must not remove packs the copy is reading)."""
    validate_tenant_id(tenant_id)
    report = report or NullReporter()
    where = locations.location(settings, locations.SECONDARY)
    primary = open_repository(settings, tenant_id)
    if primary is None:
        raise BadInput(f"tenant {tenant_id} has never been backed up")
    result = CopyResult(tenant_id)
    with tenant_operation(settings, tenant_id, "copy", wait_seconds=wait_seconds) as op:
        secondary = open_repository(settings, tenant_id, create=True, repository=locations.SECONDARY)
        points = restore_points(primary)
        there = {p.session_id for p in restore_points(secondary)}
        missing = [p for p in reversed(points) if p.session_id not in there]
        if missing:
            report.info(f"tenant {tenant_id}: copying {len(missing)} restore point(s) off-site")
            tier_ids = _tier_snapshot_ids(primary, missing)
            secondary.copy_from(primary, tier_ids)  # the tier snapshots first …
            secondary.copy_from(primary, [p.manifest_snapshot for p in missing])  # … the manifests last
            result.snapshots_copied = len(tier_ids) + len(missing)
        result.copied_sessions = [p.session_id for p in missing]
        result.restore_points_secondary = len(there) + len(missing)
        result.latest_session = points[0].session_id if points else None
        ensure_stashed(settings, tenant_id, where)
        record_copy(settings, tenant_id, result.latest_session, result.restore_points_secondary)
        result.duration_seconds = op.seconds
        op.audit = {"session_id": result.latest_session,
                    "details": {"copied_sessions": result.copied_sessions, "snapshots": result.snapshots_copied}}
    return result


def _tier_snapshot_ids(primary, points: list[RestorePoint]) -> list[str]:
    full = {}
    for snap in primary.snapshots():
        full[snap.id] = full[snap.id[:8]] = snap.id
    ids: list[str] = []
    for point in points:
        for tier in read_manifest(primary, point).tiers.values():
            ids += [full.get(sid, sid) for sid in tier.snapshots.values()]
    return list(dict.fromkeys(ids))


def record_copy(settings: Settings, tenant_id: str, latest_session: str | None, points: int) -> None:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO tenants.offsite_copies (cliente_id, latest_session, latest_session_at, restore_points) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (cliente_id) DO UPDATE SET latest_session = EXCLUDED.latest_session, "
            "latest_session_at = EXCLUDED.latest_session_at, restore_points = EXCLUDED.restore_points, copied_at = now()",
            (tenant_id, latest_session, session_time(latest_session or ""), points))


@dataclass(frozen=True)
class OffsiteLag:
    tenant_id: str
    primary_latest: str | None
    secondary_latest: str | None
    lag_hours: float | None  # how long the newest restore point has waited to be copied (0: copied)
    limit_hours: float
    ok: bool

    @property
    def copy(self) -> str:
        """The copy's state: "none" (nothing of the tenant off-site yet), "current" or "behind"."""
        if self.secondary_latest is None:
            return "none"
        return "current" if not self.lag_hours else "behind"

    def to_json(self) -> dict:
        return {**self.__dict__, "copy": self.copy}


_LAG_SQL = """
SELECT c.id, c.plano, rs.latest_session, oc.latest_session
FROM tenants.clientes c
LEFT JOIN tenants.repository_stats rs ON rs.cliente_id = c.id
LEFT JOIN tenants.offsite_copies oc ON oc.cliente_id = c.id
{where} ORDER BY c.id
"""


def offsite_lags(settings: Settings, tenant_id: str | None = None, now: datetime | None = None) -> list[OffsiteLag]:
    """From the main database only: the primary's newest restore point and the copy's."""
    now = now or datetime.now(timezone.utc)
    where, params = ("WHERE c.id = %s", (tenant_id,)) if tenant_id else ("", ())
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(_LAG_SQL.format(where=where), params)
        rows = cur.fetchall()
    return [lag_of(tid, plano, primary, secondary, now) for tid, plano, primary, secondary in rows]


def lag_of(tenant_id: str, plano: str | None, primary: str | None, secondary: str | None,
           now: datetime) -> OffsiteLag:
    limit = plan_for(plano)[0].offsite_lag_hours
    if primary is None or primary == secondary or (secondary or "") > primary:
        lag = 0.0 if primary else None
    else:
        waiting_since = session_time(primary) or now
        lag = max(0.0, (now - waiting_since).total_seconds() / 3600)
    return OffsiteLag(tenant_id, primary, secondary, lag, limit, ok=lag is None or lag <= limit)


def selected(settings: Settings, tenant_ids: tuple[str, ...], all_: bool) -> list[str]:
    for tid in tenant_ids:
        validate_tenant_id(tid)
    if all_ == bool(tenant_ids):
        raise BadInput("give tenant ids or --all (not both)")
    if all_:  # every registered tenant that has been backed up (has a key in the vault)
        backed_up = {w.tenant_id for w in keys.wrapped_keys(settings)}
        return [t.id for t in registry.list_tenants(settings) if t.id in backed_up]
    missing = [tid for tid in tenant_ids if registry.get_tenant(settings, tid) is None]
    if missing:
        raise BadInput(f"tenant(s) not registered: {', '.join(missing)}")
    return list(dict.fromkeys(tenant_ids))
