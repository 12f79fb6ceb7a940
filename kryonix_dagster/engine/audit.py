"""The audit trail: one row per backup session, forget, check or restore, per tenant."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from . import pg
from .config import Settings


@dataclass
class AuditRecord:
    cliente_id: str
    operation: str  # backup | restore | forget | check | drill | erase
    started_at: datetime
    success: bool
    session_id: str | None = None
    backup_type: str | None = None
    finished_at: datetime | None = None
    size_bytes: int | None = None
    bytes_added: int | None = None
    duration_seconds: float | None = None
    error: str | None = None
    snapshot_ids: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def record(settings: Settings, rec: AuditRecord) -> None:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO tenants.backup_audit (cliente_id, operation, session_id, backup_type, backup_date, "
            "finished_at, backup_size_bytes, bytes_added, duration_seconds, success, error, snapshot_ids, details) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (rec.cliente_id, rec.operation, rec.session_id, rec.backup_type, rec.started_at, rec.finished_at,
             rec.size_bytes, rec.bytes_added, rec.duration_seconds, rec.success, rec.error,
             json.dumps(rec.snapshot_ids), json.dumps(rec.details, default=str)),
        )


def backed_up_by(settings: Settings, origin: str, tenant_ids: list[str]) -> set[str]:
    """Which of `tenant_ids` have a successful backup whose audit row names `origin`
    (no clock involved: a redone batch skips exactly these)."""
    if not tenant_ids:
        return set()
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT cliente_id FROM tenants.backup_audit WHERE cliente_id = ANY(%s) "
            "AND operation = 'backup' AND success AND details->>'origin' = %s",
            (list(tenant_ids), origin),
        )
        return {row[0] for row in cur.fetchall()}
