"""Compliance tier: the tenant's LGPD tables and its backup audit rows, as a snapshot of
their own tagged `retention=legal`, so retention keeps them for the legal periods (the
seed's 5 years for processing logs) independently of the plan's restore points.

Restoring this tier alone reloads the tenant's `lgpd` tables from it in one transaction
(useful after the plan has expired the session's database snapshot); restored together
with the PostgreSQL tier of the same session it has nothing to add.
"""
from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

from psycopg2 import sql

from .. import pg
from ..errors import OperationFailed, one_line
from ..manifest import STATUS_EMPTY, STATUS_OK, TierResult, tier_tags
from .base import BackupContext, RestoreContext, RestoreOutcome, Stopwatch

TIER = "compliance"
SCHEMA = "lgpd"
LEGAL_TAG = "retention=legal"
LEGAL_RETENTION_YEARS = 5


def _lgpd_tables(cur) -> list[str]:
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                "AND table_type = 'BASE TABLE' ORDER BY 1", (SCHEMA,))
    return [row[0] for row in cur.fetchall()]


def _copy_out(cur, query: sql.Composable, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        cur.copy_expert(sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(query), out)
    with path.open(encoding="utf-8", newline="") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


def export(ctx: BackupContext, staging: Path) -> dict[str, int]:
    """Write lgpd/<table>.csv and audit/backup_audit.csv; rows per file."""
    rows: dict[str, int] = {}
    names = ctx.names
    if pg.database_exists(ctx.settings.pg_dsn, names.database):
        with pg.connection(ctx.settings.pg_dsn, names.database) as conn, conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for table in _lgpd_tables(cur):
                query = sql.SQL("SELECT * FROM {}.{} ORDER BY 1").format(sql.Identifier(SCHEMA), sql.Identifier(table))
                rows[f"lgpd/{table}.csv"] = _copy_out(cur, query, staging / "lgpd" / f"{table}.csv")
    with pg.connection(ctx.settings.pg_dsn, ctx.settings.main_db) as conn, conn.cursor() as cur:
        query = sql.SQL("SELECT * FROM tenants.backup_audit WHERE cliente_id = {} ORDER BY id").format(
            sql.Literal(names.tenant_id))
        rows["audit/backup_audit.csv"] = _copy_out(cur, query, staging / "audit" / "backup_audit.csv")
    return rows


def backup(ctx: BackupContext) -> TierResult:
    watch = Stopwatch()
    base = ctx.settings.state_dir / "staging"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=f"cliente_{ctx.names.tenant_id}-compliance-", dir=base))
    try:
        rows = export(ctx, staging)
        if not any(name.startswith("lgpd/") for name in rows) and rows.get("audit/backup_audit.csv", 0) == 0:
            return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds)
        tags = [*tier_tags(ctx.session_id, TIER, "records", ctx.backup_type), LEGAL_TAG]
        summary = ctx.repo.backup_directory(staging, tags, ctx.session_time)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TierResult(
        TIER, STATUS_OK, snapshots={"records": summary.snapshot_id}, bytes_processed=summary.total_bytes_processed,
        bytes_added=summary.data_added, items=sum(rows.values()), duration_seconds=watch.seconds,
        checksums={"rows": rows},
        details={"tables": sorted(rows), "legal_retention_years": LEGAL_RETENTION_YEARS},
    )


def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    staging = ctx.settings.state_dir / "restore"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix=f"cliente_{ctx.target.tenant_id}-compliance-", dir=staging) as tmp:
        root = Path(tmp)
        ctx.repo.restore(ctx.result.snapshots["records"], root)
        tables = sorted((root / "lgpd").glob("*.csv")) if (root / "lgpd").exists() else []
        try:
            with pg.connection(ctx.settings.pg_dsn, ctx.target.database) as conn, conn.cursor() as cur:
                idents = [sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(p.stem)) for p in tables]
                if idents:
                    cur.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(idents)))
                for path, ident in zip(tables, idents):
                    with path.open(encoding="utf-8", newline="") as handle:
                        cur.copy_expert(sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv, HEADER true)").format(ident), handle)
                    outcome.restored += ctx.result.checksums.get("rows", {}).get(f"lgpd/{path.name}", 0)
        except Exception as exc:
            raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier compliance: reloading the lgpd tables failed "
                                  f"and was rolled back: {one_line(str(exc))}") from None
    outcome.details["tables"] = [p.stem for p in tables]
    return outcome


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS). Imported here, not at the top, only so this block stays
# an append to the module.
from .base import TierSpec  # noqa: E402

SPEC = TierSpec(
    TIER, "compliance", False, "postgresql", backup, restore,
    asset_key="compliance_backup", kinds=("postgres", "restic"), pool="postgres", restored_with="postgresql",
    description="LGPD tables and audit rows as their own snapshot, tagged for the legal retention periods.",
)
