"""The tenant registry: `tenants.clientes` in the main database."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

import psycopg2

from . import pg
from .config import Settings
from .errors import BadInput
from .naming import validate_plan, validate_status, validate_tenant_id


@dataclass(frozen=True)
class Tenant:
    id: str
    nome: str
    plano: str
    status: str
    created_at: datetime

    @property
    def active(self) -> bool:
        return self.status == "ativo"

    def to_json(self) -> dict:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


_COLUMNS = "id, nome, plano, status, created_at"


def add_tenant(settings: Settings, tenant_id: str, name: str, plan: str) -> Tenant:
    validate_tenant_id(tenant_id)
    validate_plan(plan)
    if not name or not name.strip():
        raise BadInput("tenant name must not be empty")
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        try:
            cur.execute(
                f"INSERT INTO tenants.clientes (id, nome, plano) VALUES (%s, %s, %s) RETURNING {_COLUMNS}",
                (tenant_id, name.strip(), plan),
            )
        except psycopg2.errors.UniqueViolation:
            raise BadInput(f"tenant {tenant_id} already exists") from None
        return Tenant(*cur.fetchone())


def ensure_tenant(settings: Settings, tenant_id: str, name: str, plan: str) -> Tenant:
    """Insert the tenant or update its name and plan (used by the demo seeder)."""
    validate_tenant_id(tenant_id)
    validate_plan(plan)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO tenants.clientes (id, nome, plano) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET nome = EXCLUDED.nome, plano = EXCLUDED.plano "
            f"RETURNING {_COLUMNS}",
            (tenant_id, name, plan),
        )
        return Tenant(*cur.fetchone())


def list_tenants(settings: Settings, status: str | None = None, plan: str | None = None) -> list[Tenant]:
    clauses, params = [], []
    if status:
        clauses.append("status = %s")
        params.append(status)
    if plan:
        clauses.append("plano = %s")
        params.append(plan)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM tenants.clientes {where} ORDER BY id", params)
        return [Tenant(*row) for row in cur.fetchall()]


def list_tenant_ids(settings: Settings) -> list[str]:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM tenants.clientes WHERE status <> 'encerrado' ORDER BY id")  # off-boarded: gone
        return [row[0] for row in cur.fetchall()]


def get_tenant(settings: Settings, tenant_id: str) -> Tenant | None:
    validate_tenant_id(tenant_id)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM tenants.clientes WHERE id = %s", (tenant_id,))
        row = cur.fetchone()
        return Tenant(*row) if row else None


OFFBOARDED = "encerrado"  # off-boarded: live data erased, backups crypto-shredded


def refuse_offboarded(settings: Settings, *tenant_ids: str) -> None:
    """BadInput (exit 2) when any of `tenant_ids` was off-boarded: such a tenant is never restored
    again, by any path (restore, --at, --into as source or target, --from secondary, drills),
    even where a backup of it survives (pgBackRest's retention still holds its database)."""
    for tenant_id in dict.fromkeys(tenant_ids):
        tenant = get_tenant(settings, tenant_id)
        if tenant is not None and tenant.status == OFFBOARDED:
            raise BadInput(f"tenant {tenant_id} was off-boarded (status {OFFBOARDED}): it is never restored again; "
                           "nothing was touched")


def require_tenant(settings: Settings, tenant_id: str) -> Tenant:
    tenant = get_tenant(settings, tenant_id)
    if tenant is None:
        raise BadInput(f"tenant {tenant_id} is not registered")
    return tenant


def set_status(settings: Settings, tenant_id: str, status: str) -> Tenant:
    validate_tenant_id(tenant_id)
    validate_status(status)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            f"UPDATE tenants.clientes SET status = %s WHERE id = %s RETURNING {_COLUMNS}",
            (status, tenant_id),
        )
        row = cur.fetchone()
        if row is None:
            raise BadInput(f"tenant {tenant_id} is not registered")
        return Tenant(*row)
