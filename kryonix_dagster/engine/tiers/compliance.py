"""Compliance tier: the tenant's LGPD tables and its backup audit rows, as a snapshot of
their own tagged `retention=legal`. It lives and dies with its session's restore point, like
every tier (engine/retention.py): the rows are kept for their legal period by the live
database (each session exports the rows still within their period; `lgpd apply` deletes the
rest), so backups never stretch a row's life past its period by more than the plan's
retention. A legal hold (engine/retention.py place_hold) keeps a snapshot past the plan. Each snapshot is tagged `past-period-from=DAY`: from that day it holds a row past its
period (`lgpd report` counts those restore points).

Restoring this tier alone merges the saved rows back into the tenant's `lgpd` tables, in one
transaction (useful after the plan has expired the session's database snapshot): rows the
table lacks are appended, matched to columns by the CSV header's names (columns added since
take their defaults); live rows are never deleted nor overwritten, because records written
after the backup are legal evidence too. A saved row whose key is taken by a different live
row is left out and counted in a warning. Restored together with the PostgreSQL tier of the
same session this tier has nothing to add.
"""
from __future__ import annotations

import csv
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from psycopg2 import sql

from .. import pg
from ..errors import OperationFailed, one_line
from ..manifest import STATUS_EMPTY, STATUS_OK, TierResult, tier_tags
from .base import BackupContext, RestoreContext, RestoreOutcome, TierSpec
from ..reporting import Stopwatch

TIER = "compliance"
SCHEMA = "lgpd"
LEGAL_TAG = "retention=legal"  # the tier's snapshots (kept with their session, as every tier's)
PAST_PERIOD_TAG = "past-period-from"  # the day the snapshot first holds a row past its LGPD period


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


def past_period_from(cur) -> str | None:
    """The day (UTC, ISO) from which this session's data holds a row past its LGPD period: the
    earliest `min(age_column) + period` over the rules' delete rules whose table the database
    has (None: no such row). Taken in the export's transaction, it is written as the snapshot's
    `past-period-from=` tag, so `lgpd report` counts such restore points from restic's listing."""
    from ..lgpd.retention import skip_reason
    from ..lgpd.rules import load_rules

    earliest = None
    for rule in load_rules().retention:
        if rule.action != "delete" or skip_reason(cur, rule):
            continue
        schema, _, table = rule.table.partition(".")
        cur.execute(sql.SQL("SELECT min({}) + %s::interval FROM {}.{}").format(
            sql.Identifier(rule.age_column), sql.Identifier(schema), sql.Identifier(table)), (rule.period,))
        found = cur.fetchone()[0]
        if found is not None and (earliest is None or found < earliest):
            earliest = found
    return None if earliest is None else earliest.date().isoformat()


def export(ctx: BackupContext, staging: Path, marks: dict | None = None) -> dict[str, int]:
    """Write lgpd/<table>.csv and audit/backup_audit.csv; rows per file. `marks` receives
    `past_period_from` (past_period_from above)."""
    rows: dict[str, int] = {}
    names = ctx.names
    if pg.database_exists(ctx.settings.pg_dsn, names.database):
        with pg.connection(ctx.settings.pg_dsn, names.database) as conn, conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if marks is not None:
                marks["past_period_from"] = past_period_from(cur)
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
    staging = Path(tempfile.mkdtemp(prefix=f"{ctx.names.local_name}-compliance-", dir=base))
    try:
        marks: dict = {}
        rows = export(ctx, staging, marks)
        if not any(name.startswith("lgpd/") for name in rows) and rows.get("audit/backup_audit.csv", 0) == 0:
            return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds)
        tags = [*tier_tags(ctx.session_id, TIER, "records", ctx.backup_type), LEGAL_TAG]
        if marks.get("past_period_from"):
            tags.append(f"{PAST_PERIOD_TAG}={marks['past_period_from']}")
        summary = ctx.repo.backup_directory(staging, tags, ctx.session_time)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TierResult(
        TIER, STATUS_OK, snapshots={"records": summary.snapshot_id}, bytes_processed=summary.total_bytes_processed,
        bytes_added=summary.data_added, items=sum(rows.values()), duration_seconds=watch.seconds,
        checksums={"rows": rows},
        details={"tables": sorted(rows), "past_period_from": marks.get("past_period_from")},
    )


@dataclass
class TableMerge:
    table: str
    saved: int = 0       # rows in the backup
    appended: int = 0    # rows the live table lacked, now back
    present: int = 0     # identical rows already there
    conflicting: int = 0  # saved rows whose key a different live row holds: live kept


def csv_columns(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle), [])


def live_columns(cur, table: str) -> list[str] | None:
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                "ORDER BY ordinal_position", (SCHEMA, table))
    found = [row[0] for row in cur.fetchall()]
    return found or None


def row_text(alias: str, columns: list[str]) -> sql.Composable:
    """The row's chosen columns as one text value: comparable for every type, json included."""
    return sql.SQL("ROW({})::text").format(
        sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in columns))


def merge_table(cur, path: Path) -> TableMerge:
    """Append the saved rows the live table lacks, matching columns by the header's names."""
    table, merge = path.stem, TableMerge(path.stem)
    columns, existing = csv_columns(path), live_columns(cur, path.stem)
    if existing is None:
        raise OperationFailed(f"table {SCHEMA}.{table} of the backup does not exist in the target")
    missing = [c for c in columns if c not in existing]
    if not columns or missing:
        raise OperationFailed(f"table {SCHEMA}.{table} has no column(s) {', '.join(missing) or '(empty header)'} "
                              "that the backup has")
    live = sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(table))
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    cur.execute(sql.SQL("CREATE TEMP TABLE kryonix_saved ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA")
                .format(cols, live))
    with path.open(encoding="utf-8", newline="") as handle:
        cur.copy_expert(sql.SQL("COPY kryonix_saved ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(cols), handle)
    absent = sql.SQL("NOT EXISTS (SELECT 1 FROM {} l WHERE {} = {})").format(
        live, row_text("l", columns), row_text("s", columns))
    cur.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM kryonix_saved s").format(absent))
    merge.saved, lacking = cur.fetchone()
    cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM kryonix_saved s WHERE {} ON CONFLICT DO NOTHING")
                .format(live, cols, sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns),
                        absent))
    merge.appended = cur.rowcount
    merge.present, merge.conflicting = merge.saved - lacking, lacking - merge.appended
    cur.execute("DROP TABLE kryonix_saved")
    advance_sequences(cur, table, columns)
    return merge


def advance_sequences(cur, table: str, columns: list[str]) -> None:
    """Serial and identity columns: never leave a sequence behind the ids the merge brought back."""
    live = sql.Identifier(SCHEMA, table)
    for column in columns:
        cur.execute("SELECT pg_get_serial_sequence(%s, %s)", (live.as_string(cur), column))
        sequence = cur.fetchone()[0]  # already quoted by the server
        if sequence:
            cur.execute(sql.SQL("SELECT setval(%s::regclass, GREATEST((SELECT max({}) FROM {}), "
                                "(SELECT last_value FROM {})))").format(sql.Identifier(column), live, sql.SQL(sequence)),
                        (sequence,))


def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    where = f"tenant {ctx.target.tenant_id}, tier compliance"
    staging = ctx.settings.state_dir / "restore"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix=f"{ctx.target.local_name}-compliance-", dir=staging) as tmp:
        root = Path(tmp)
        ctx.repo.restore(ctx.result.snapshots["records"], root)
        tables = sorted((root / "lgpd").glob("*.csv")) if (root / "lgpd").exists() else []
        try:
            with pg.connection(ctx.settings.pg_dsn, ctx.target.database) as conn, conn.cursor() as cur:
                merges = [merge_table(cur, path) for path in tables]
                outcome.details.update(ctx.reapply(TIER, cur))  # the erasure ledger, in the same transaction
        except Exception as exc:
            raise OperationFailed(f"{where}: merging the lgpd tables failed and was rolled back, nothing was "
                                  f"changed: {one_line(str(exc))}") from None
    for merge in merges:
        outcome.restored += merge.appended
        if merge.conflicting:
            outcome.warnings.append(f"{SCHEMA}.{merge.table}: {merge.conflicting} saved row(s) differ from the live "
                                    "row(s) with the same key; the live rows were kept")
    outcome.details["tables"] = {m.table: {"saved": m.saved, "appended": m.appended, "already_present": m.present,
                                           "conflicting": m.conflicting} for m in merges}
    return outcome


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS).

SPEC = TierSpec(
    TIER, "compliance", False, "postgresql", backup, restore,
    asset_key="compliance_backup", kinds=("postgres", "restic"), pool="postgres", restored_with="postgresql",
    description="LGPD tables and audit rows as their own snapshot, tagged for the legal retention periods.",
)
