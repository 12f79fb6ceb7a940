"""The LGPD compliance report (the seed's verify_retention_compliance), per tenant and fleet-wide.

Per tenant, evaluated without changing anything:
- personal data past its period: the rows each retention rule would change now (the same
  predicate `lgpd apply` uses, so already-anonymised rows do not count), rules skipped with why;
- restore points kept past the tenant's plan (engine/retention.py's judgement, restic's own
  forget --dry-run);
- erasure-ledger entries not yet rewritten out of old restore points (informational: the
  ledger is re-applied on every restore, so an erased person never comes back either way),
  named per location that holds restore points (the primary, and the off-site copy: an entry
  is marked rewritten only once `--rewrite` went through both);
- the last retention run and the last erasure, from the audit trail.

Compliant: no personal data past its period and no restore point past the plan (and both
could be judged). Ledger entries waiting for a rewrite do not make a tenant non-compliant.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from tabulate import tabulate

from .. import pg, registry
from ..config import Settings
from ..errors import BadInput, KryonixError, one_line
from ..naming import names_for, validate_tenant_id
from ..retention import check_retention
from .retention import OPERATION as RETENTION_OPERATION, RuleOutcome, evaluate
from .rules import LgpdRules

# The erasure half (branch lgpd-erasure) writes its audit rows as one of these operations and
# keeps its ledger in LEDGER_TABLE; until it is merged neither exists, which reads as "none".
ERASURE_OPERATIONS = ("erase", "lgpd_erase")
LEDGER_TABLE = "tenants.lgpd_ledger"


@dataclass
class LastRun:
    at: datetime
    success: bool
    rows: int | None = None  # retention: rows changed by that run


@dataclass
class TenantCompliance:
    tenant_id: str
    database: bool
    rules: list[RuleOutcome] = field(default_factory=list)  # rows = due now (past the period)
    restore_points_past_plan: int | None = 0  # None: could not be judged (see restore_points_error)
    restore_points_error: str | None = None
    ledger_pending: int = 0
    # per location holding restore points: {"location", "restore_points", "ledger_pending"}
    locations: list[dict] = field(default_factory=list)
    database_error: str | None = None  # the live data could not be read (e.g. a restore swapping it)
    last_retention: LastRun | None = None
    last_erasure: LastRun | None = None

    @property
    def overdue_rows(self) -> int:
        return sum(r.rows for r in self.rules)

    @property
    def problems(self) -> list[str]:
        found = [f"live data not evaluated: {self.database_error}"] if self.database_error else []
        found += [f"{r.rows} row(s) of {r.table} past {r.period} (rule {r.rule})" for r in self.rules if r.rows]
        if self.restore_points_past_plan is None:
            found.append(f"restore points not judged: {self.restore_points_error}")
        elif self.restore_points_past_plan:
            found.append(f"{self.restore_points_past_plan} restore point(s) kept past the plan")
        return found

    @property
    def compliant(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        doc = asdict(self)
        doc.update(tenant=doc.pop("tenant_id"), compliant=self.compliant, overdue_rows=self.overdue_rows,
                   problems=self.problems)
        return doc

    def row(self) -> dict:
        """One line of the fleet table."""
        def when(run: LastRun | None) -> str:
            if run is None:
                return "-"
            return f"{run.at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC{'' if run.success else ' (failed)'}"
        return {"tenant": self.tenant_id, "compliant": "yes" if self.compliant else "NO",
                "overdue_rows": self.overdue_rows,
                "restore_points_past_plan": "?" if self.restore_points_past_plan is None else self.restore_points_past_plan,
                "ledger_pending": self.ledger_pending,
                "ledger_pending_in": ",".join(w["location"] for w in self.locations if w["ledger_pending"]) or "-",
                "skipped_rules": sum(1 for r in self.rules if r.skipped),
                "last_retention": when(self.last_retention), "last_erasure": when(self.last_erasure)}


@dataclass
class FleetCompliance:
    generated_at: datetime
    tenants: list[TenantCompliance] = field(default_factory=list)

    @property
    def non_compliant(self) -> list[str]:
        return [t.tenant_id for t in self.tenants if not t.compliant]

    @property
    def compliant(self) -> bool:
        return not self.non_compliant

    def rows(self) -> list[dict]:
        return [t.row() for t in self.tenants]

    def markdown(self) -> str:
        rows = self.rows()
        return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) if rows else "(no tenants)"

    def to_json(self) -> dict:
        return {"generated_at": self.generated_at.isoformat(), "compliant": self.compliant,
                "non_compliant": self.non_compliant, "overdue_rows": sum(t.overdue_rows for t in self.tenants),
                "tenants": [t.to_json() for t in self.tenants]}


def overdue(settings: Settings, tenant_id: str, rules: LgpdRules) -> tuple[bool, list[RuleOutcome]]:
    """(database exists, rows each rule would change now) in a READ ONLY transaction."""
    database = names_for(settings, tenant_id).database
    if not pg.database_exists(settings.pg_dsn, database):
        return False, [RuleOutcome(r.name, r.table, r.action, r.period, skipped=f"no database {database}")
                       for r in rules.retention]
    with pg.connection(settings.pg_dsn, database) as conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        return True, evaluate(cur, rules, tenant_id)


def _last_run(cur, tenant_id: str, operations: tuple[str, ...]) -> LastRun | None:
    cur.execute("SELECT backup_date, success, details->>'total_rows' FROM tenants.backup_audit "
                "WHERE cliente_id = %s AND operation = ANY(%s) ORDER BY backup_date DESC, id DESC LIMIT 1",
                (tenant_id, list(operations)))
    row = cur.fetchone()
    if not row:
        return None
    return LastRun(row[0], bool(row[1]), int(row[2]) if row[2] is not None and row[2].isdigit() else None)


def _ledger_pending(cur, tenant_id: str) -> int:
    """Ledger entries of the tenant whose old restore points were not rewritten yet. The table
    belongs to the erasure half: missing (not merged yet, or no erasure ever) means 0. Its
    `rewritten_at` marks an entry rewritten; without that column every entry counts as pending."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,))
    if not cur.fetchone()[0]:
        return 0
    schema, table = LEDGER_TABLE.split(".", 1)
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (schema, table))
    columns = {row[0] for row in cur.fetchall()}
    if "cliente_id" not in columns:
        return 0
    pending = " AND rewritten_at IS NULL" if "rewritten_at" in columns else ""
    cur.execute(f"SELECT count(*) FROM {LEDGER_TABLE} WHERE cliente_id = %s{pending}", (tenant_id,))
    return int(cur.fetchone()[0])


def tenant_compliance(settings: Settings, tenant_id: str, rules: LgpdRules) -> TenantCompliance:
    validate_tenant_id(tenant_id)
    if registry.get_tenant(settings, tenant_id) is None:
        raise BadInput(f"tenant {tenant_id} is not registered")
    try:
        has_database, outcomes = overdue(settings, tenant_id, rules)
        report = TenantCompliance(tenant_id, has_database, outcomes)
    except KryonixError as exc:  # one tenant's trouble never hides the rest of the fleet
        report = TenantCompliance(tenant_id, True, database_error=one_line(str(exc), 200))
    try:
        report.restore_points_past_plan = len(check_retention(settings, tenant_id).over_retained)
    except KryonixError as exc:
        report.restore_points_past_plan, report.restore_points_error = None, one_line(str(exc), 200)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        report.last_retention = _last_run(cur, tenant_id, (RETENTION_OPERATION,))
        report.last_erasure = _last_run(cur, tenant_id, ERASURE_OPERATIONS)
        if report.last_erasure:
            report.last_erasure.rows = None  # an erasure's details are the erasure half's business
        report.ledger_pending = _ledger_pending(cur, tenant_id)
        report.locations = _locations(cur, settings, tenant_id, report.ledger_pending)
    return report


def _locations(cur, settings: Settings, tenant_id: str, pending: int) -> list[dict]:
    """Every location that holds the tenant's restore points (counts as last recorded by the
    sessions and copies) and the ledger entries its restore points may still hold."""
    cur.execute("SELECT (SELECT restore_points FROM tenants.repository_stats WHERE cliente_id = %s), "
                "(SELECT restore_points FROM tenants.offsite_copies WHERE cliente_id = %s)", (tenant_id, tenant_id))
    primary, copy = cur.fetchone()
    found = [{"location": "primary", "restore_points": primary, "ledger_pending": pending if primary != 0 else 0}]
    if copy is not None or settings.repo_secondary or settings.repo_secondary_admin:
        found.append({"location": "secondary", "restore_points": copy,
                      "ledger_pending": pending if copy else 0})
    return found


def fleet_compliance(settings: Settings, rules: LgpdRules) -> FleetCompliance:
    """Every registered tenant (active or not: inactive tenants still hold personal data)."""
    fleet = FleetCompliance(datetime.now(timezone.utc))
    for tenant in registry.list_tenants(settings):
        fleet.tenants.append(tenant_compliance(settings, tenant.id, rules))
    return fleet
