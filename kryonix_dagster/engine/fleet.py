"""The fleet at a glance: per tenant last session, age, staleness against the plan's RPO,
restore points, repository size and the last check results; totals for the last 24 hours
(the seed's monitor script). Each column comes from the thing it names: the newest restore
point, its age, the points and the size from the repository's statistics row (read from the
repository itself, `repository_stats.py`), whether the repository is still there from a cheap
look at its storage (`repository_states`: "missing" blanks its points, size and check), the
off-site lag from the copy's row. One query plus that look, for thousands of tenants.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from . import locations, pg
from .config import Settings
from .plans import plan_for
from .repository_stats import repository_states


@dataclass
class TenantStatus:
    id: str
    nome: str
    plano: str
    status: str
    last_session: str | None
    last_session_at: datetime | None
    age_hours: float | None
    rpo_hours: float
    stale: bool
    last_attempt_ok: bool | None
    last_error: str | None
    restore_points: int | None
    repo_bytes: int | None
    last_check_at: datetime | None
    last_check_ok: bool | None
    last_drill_at: datetime | None
    last_drill_ok: bool | None
    last_warnings: list[str]  # of the latest backup (e.g. a tier empty after a non-empty one)
    repository: str = "none"  # present | missing (was backed up, gone from its storage) | none | unknown

    def to_json(self) -> dict:
        doc = asdict(self)
        for key in ("last_session_at", "last_check_at", "last_drill_at"):
            doc[key] = doc[key].isoformat() if doc[key] else None
        return doc


_STATUS_SQL = """
SELECT c.id, c.nome, c.plano, c.status,
       ok.session_id, ok.backup_date,
       last.success, last.error, coalesce(last.details -> 'warnings', '[]'::jsonb),
       rs.restore_points, rs.repo_bytes, rs.cliente_id IS NOT NULL, rs.latest_session,
       chk.backup_date, chk.success, drill.backup_date, drill.success
FROM tenants.clientes c
LEFT JOIN LATERAL (SELECT session_id, backup_date FROM tenants.backup_audit
                   WHERE cliente_id = c.id AND operation = 'backup' AND success
                   ORDER BY backup_date DESC LIMIT 1) ok ON true
LEFT JOIN LATERAL (SELECT success, error, details FROM tenants.backup_audit
                   WHERE cliente_id = c.id AND operation = 'backup'
                   ORDER BY backup_date DESC LIMIT 1) last ON true
LEFT JOIN LATERAL (SELECT backup_date, success FROM tenants.backup_audit
                   WHERE cliente_id = c.id AND operation = 'check'
                   ORDER BY backup_date DESC LIMIT 1) chk ON true
LEFT JOIN LATERAL (SELECT backup_date, success FROM tenants.backup_audit
                   WHERE cliente_id = c.id AND operation = 'drill'
                   ORDER BY backup_date DESC LIMIT 1) drill ON true
LEFT JOIN tenants.repository_stats rs ON rs.cliente_id = c.id
{where}
ORDER BY c.id
"""

# The light query of the stale sensor: hash joins, no per-tenant lateral look-ups. The
# repository's newest restore point counts too: a main database rebuilt by `keys recover` has
# no audit rows, and its tenants are not stale for it.
_LAST_OK_SQL = """
SELECT c.id, c.plano, max(a.backup_date), min(rs.latest_session)
FROM tenants.clientes c
LEFT JOIN tenants.backup_audit a ON a.cliente_id = c.id AND a.operation = 'backup' AND a.success
LEFT JOIN tenants.repository_stats rs ON rs.cliente_id = c.id
WHERE c.status = 'ativo'
GROUP BY c.id, c.plano
ORDER BY c.id
"""

_TOTALS_SQL = """
SELECT coalesce(sum(backup_size_bytes), 0), count(DISTINCT cliente_id), coalesce(avg(backup_size_bytes), 0),
       count(*), count(*) FILTER (WHERE success)
FROM tenants.backup_audit WHERE operation = 'backup' AND backup_date > %s - interval '24 hours'
"""


def tenant_statuses(settings: Settings, now: datetime | None = None,
                    tenant_ids: list[str] | None = None) -> list[TenantStatus]:
    """Every tenant's status, or only `tenant_ids`'."""
    now = now or datetime.now(timezone.utc)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        if tenant_ids is None:
            cur.execute(_STATUS_SQL.format(where=""))
        else:
            cur.execute(_STATUS_SQL.format(where="WHERE c.id = ANY(%s)"), (list(tenant_ids),))
        rows = cur.fetchall()
    from .offsite import session_time

    backed_up = [row[0] for row in rows if row[11] or row[4]]  # a statistics row or a successful session
    states = repository_states(settings, backed_up)
    out = []
    for (tid, nome, plano, status, session, at, last_ok, last_error, warnings, points, repo_bytes, counted,
         latest, check_at, check_ok, drill_at, drill_ok) in rows:
        plan, _ = plan_for(plano)
        if counted:  # the repository's newest restore point, not the audit's newest row
            session, at = latest, session_time(latest or "")
        state = states.get(tid, "none")
        if state == "missing":  # nothing of it is there any more: no points, no size, no check to trust
            session, at, points, repo_bytes, check_ok = None, None, None, None, None
        age = (now - at).total_seconds() / 3600 if at else None
        stale = status == "ativo" and (age is None or age > plan.rpo_hours)
        out.append(TenantStatus(tid, nome, plano, status, session, at, round(age, 2) if age is not None else None,
                                plan.rpo_hours, stale, last_ok, last_error, points, repo_bytes,
                                check_at, check_ok, drill_at, drill_ok, list(warnings or []), state))
    return out


def stale_tenant_ids(settings: Settings, now: datetime | None = None) -> list[str]:
    """Active tenants whose latest successful backup is older than their plan's RPO (or
    missing), sorted: what the stale sensor needs every tick, at 100,000 tenants."""
    now = now or datetime.now(timezone.utc)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(_LAST_OK_SQL)
        rows = cur.fetchall()
    from .offsite import session_time

    rpo: dict[str, float] = {}
    stale = []
    for tid, plano, at, latest in rows:
        newest = session_time(latest) if latest else None
        if newest is not None and (at is None or newest > at):
            at = newest
        if plano not in rpo:
            rpo[plano] = plan_for(plano)[0].rpo_hours
        if at is None or (now - at).total_seconds() / 3600 > rpo[plano]:
            stale.append(tid)
    return stale


def totals_last_24h(settings: Settings, now: datetime | None = None) -> dict:
    now = now or datetime.now(timezone.utc)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(_TOTALS_SQL, (now,))
        total, tenants, average, sessions, succeeded = cur.fetchone()
    return {"bytes": int(total), "tenants": int(tenants), "average_bytes": float(average),
            "sessions": int(sessions), "succeeded": int(succeeded)}


def fleet_status(settings: Settings, now: datetime | None = None) -> dict:
    statuses = tenant_statuses(settings, now)
    lags = {}
    if settings.repo_secondary:  # the off-site copy's lag from the main database, its presence from the copy
        from .offsite import offsite_lags
        lags = {lag.tenant_id: lag.to_json() for lag in offsite_lags(settings, now=now)}
        copied = [tid for tid, lag in lags.items() if lag["copy"] != "none"]
        copies = repository_states(settings, copied, locations.location(settings, locations.SECONDARY))
        for tid, state in copies.items():
            if state == "missing":  # recorded as copied, gone from the copy's storage
                lags[tid].update(copy="missing", ok=False)
    return {
        "generated_at": (now or datetime.now(timezone.utc)).isoformat(),
        "tenants": [{**s.to_json(), "offsite": lags.get(s.id)} for s in statuses],
        "offsite_lagging": sorted(tid for tid, lag in lags.items() if not lag["ok"]),
        "stale": [s.id for s in statuses if s.stale],
        "missing_repositories": [s.id for s in statuses if s.repository == "missing"],
        "storage_bytes": sum(s.repo_bytes or 0 for s in statuses),
        "last_24h": totals_last_24h(settings, now),
    }
