"""Per tenant, the newest restore point a restore drill passed on: the compliance officer's
"newest verified restore point" (the fleet report's column). One query on the main database:
the drill's audit row names the session it restored, the backup's row says when it was taken."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from . import pg
from .config import Settings

_VERIFIED_SQL = """
SELECT DISTINCT ON (d.cliente_id) d.cliente_id, d.session_id, b.backup_date, d.backup_date
FROM tenants.backup_audit d
JOIN tenants.backup_audit b ON b.cliente_id = d.cliente_id AND b.session_id = d.session_id
                           AND b.operation = 'backup' AND b.success
WHERE d.operation = 'drill' AND d.success AND d.session_id IS NOT NULL
ORDER BY d.cliente_id, b.backup_date DESC, d.backup_date DESC
"""


@dataclass
class VerifiedPoint:
    tenant_id: str
    session_id: str
    taken_at: datetime
    drilled_at: datetime
    age_hours: float


def newest_verified_points(settings: Settings, now: datetime | None = None) -> dict[str, VerifiedPoint]:
    """{tenant: its newest restore point with a passed drill}; tenants without one are absent."""
    now = now or datetime.now(timezone.utc)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(_VERIFIED_SQL)
        rows = cur.fetchall()
    return {tid: VerifiedPoint(tid, session, taken, drilled, round((now - taken).total_seconds() / 3600, 2))
            for tid, session, taken, drilled in rows}
