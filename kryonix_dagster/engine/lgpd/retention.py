"""LGPD retention on a tenant's live database: the rules' periods applied, counted and logged.

Per rule (rules.py): rows of `table` whose `age_column` is older than `period` are deleted or
have the `set` columns anonymised, unless the consent guard finds an active consent for them.

- A rule whose table (or age column, `set` column, consent table) the tenant's database lacks
  is skipped with the reason, never an error: tenants' schemas drift.
- Counts are idempotent: an anonymise rule only matches rows whose `set` columns differ from
  the anonymised values, so a second run (and the compliance report) does not count them again.
- A dry run counts the same predicate with SELECT count(*) in a READ ONLY transaction.
- A real run changes every rule in ONE transaction: a failure anywhere rolls all of it back.
  Each change is written to the tenant's `lgpd.log_processamento` (when present) in the same
  transaction: one row per anonymised row naming the person's key (`contato_id`, found from
  the rules' `person` map for that table), operation 'anonimizacao'; one row per delete rule
  that removed rows, operation 'exclusao', with no person key (writing the deleted rows' keys
  would keep identifiers alive past their period). Base legal: 'obrigacao_legal'.
- The run is a `tenant_operation` ("lgpd_retention"): it takes the tenant's lease (waiting up
  to `wait_seconds`), so it never runs while a restore replaces the database (its changes
  would be lost with the replaced database) nor between the PostgreSQL and compliance tiers
  of a session (which are exported in two transactions and would then disagree). A session's
  pg_dump alone is a consistent snapshot and would not need it. The audit row carries the
  counts per rule, never a personal value. A dry run takes no lease and leaves no audit row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from psycopg2 import sql

from .. import pg, registry
from ..config import Settings
from ..errors import BadInput, OperationFailed
from ..naming import names_for, validate_tenant_id
from ..operation import tenant_operation
from .rules import LgpdRules, RetentionRule

OPERATION = "lgpd_retention"
LOG_TABLE = "lgpd.log_processamento"
LOG_COLUMNS = {"operacao", "base_legal", "processado_em"}
LEGAL_BASIS = "obrigacao_legal"
LOG_OPERATION = {"anonymise": "anonimizacao", "delete": "exclusao"}
LOCK_TIMEOUT = "60s"  # an application transaction holding a row longer fails the run, not the app


@dataclass
class RuleOutcome:
    rule: str
    table: str
    action: str
    period: str
    rows: int = 0  # deleted/anonymised (a dry run: would be)
    logged: int = 0  # rows written to the tenant's processing log
    skipped: str | None = None  # why the rule did not apply to this tenant


@dataclass
class RetentionResult:
    tenant_id: str
    dry_run: bool
    database: bool = True  # False: the tenant has no database, every rule skipped
    log_table: bool = False  # whether the tenant's processing log exists
    rules: list[RuleOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(r.rows for r in self.rules)

    @property
    def skipped(self) -> list[RuleOutcome]:
        return [r for r in self.rules if r.skipped]

    def rows_by_rule(self) -> dict[str, int]:
        return {r.rule: r.rows for r in self.rules}

    def to_json(self) -> dict:
        return {"tenant": self.tenant_id, "dry_run": self.dry_run, "database": self.database,
                "log_table": self.log_table, "total_rows": self.total_rows,
                "rules": [asdict(r) for r in self.rules], "seconds": round(self.seconds, 3)}


def _ident(table: str) -> sql.Composed:
    schema, name = table.split(".", 1)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def table_columns(cur, table: str) -> set[str]:
    """Columns of a base table ({} when the tenant has no such table)."""
    schema, name = table.split(".", 1)
    cur.execute("SELECT c.column_name FROM information_schema.columns c JOIN information_schema.tables t "
                "USING (table_schema, table_name) WHERE c.table_schema = %s AND c.table_name = %s "
                "AND t.table_type = 'BASE TABLE'", (schema, name))
    return {row[0] for row in cur.fetchall()}


def skip_reason(cur, rule: RetentionRule) -> str | None:
    """Why `rule` cannot apply to this database (None: it can)."""
    columns = table_columns(cur, rule.table)
    if not columns:
        return f"table {rule.table} not in this tenant's database"
    missing = sorted(({rule.age_column} | set(rule.set)) - columns)
    if missing:
        return f"table {rule.table} has no column {', '.join(missing)}"
    guard = rule.unless_consent
    if guard:
        guard_columns = table_columns(cur, guard.table)
        if not guard_columns:
            # anonymising is irreversible: without the consents it cannot be judged, so it waits
            return f"consent table {guard.table} not in this tenant's database"
        if guard.references not in columns or {guard.column, guard.flag} - guard_columns:
            return f"consent guard columns missing ({guard.table}.{guard.column}/{guard.flag} -> {guard.references})"
    return None


def due_predicate(rule: RetentionRule) -> tuple[sql.Composed, list]:
    """WHERE clause (table aliased `t`) of the rows past their period that the rule would change."""
    parts = [sql.SQL("t.{} < now() - %s::interval").format(sql.Identifier(rule.age_column))]
    params: list = [rule.period]
    guard = rule.unless_consent
    if guard:
        parts.append(sql.SQL("NOT EXISTS (SELECT 1 FROM {} g WHERE g.{} = t.{} AND g.{} IS TRUE)").format(
            _ident(guard.table), sql.Identifier(guard.column), sql.Identifier(guard.references),
            sql.Identifier(guard.flag)))
    if rule.action == "anonymise":
        differs = [sql.SQL("t.{} IS DISTINCT FROM %s").format(sql.Identifier(col)) for col in rule.set]
        parts.append(sql.SQL("({})").format(sql.SQL(" OR ").join(differs)))
        params += list(rule.set.values())
    return sql.SQL(" AND ").join(parts), params


def count_due(cur, rule: RetentionRule) -> int:
    where, params = due_predicate(rule)
    cur.execute(sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(_ident(rule.table), where), params)
    return int(cur.fetchone()[0])


def subject_column(rules: LgpdRules, table: str, log_columns: set[str]) -> tuple[str, str] | None:
    """(log column, column of `table`) naming the person, from the rules' `person` map: the key
    (e.g. contato_id) whose database locations include `table`, when the log has that column."""
    for key, where in rules.person.items():
        for location in where.database:
            if location.table == table and key in log_columns:
                return key, location.match
    return None


def _log_insert(log_column: str | None) -> sql.Composed:
    if log_column:
        return sql.SQL("INSERT INTO {} ({}, operacao, base_legal, processado_em) "
                       "SELECT k, %s, %s, now() FROM changed").format(_ident(LOG_TABLE), sql.Identifier(log_column))
    return sql.SQL("INSERT INTO {} (operacao, base_legal, processado_em) "
                   "SELECT %s, %s, now() WHERE EXISTS (SELECT 1 FROM changed)").format(_ident(LOG_TABLE))


def apply_rule(cur, rule: RetentionRule, rules: LgpdRules, log_columns: set[str]) -> tuple[int, int]:
    """Change the rule's due rows; (rows changed, log rows written). One statement, so the log
    rows and the change cannot part."""
    where, params = due_predicate(rule)
    subject = subject_column(rules, rule.table, log_columns) if rule.action == "anonymise" else None
    key = sql.SQL("t.{}").format(sql.Identifier(subject[1])) if subject else sql.SQL("NULL")
    if rule.action == "anonymise":
        assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in rule.set)
        change = sql.SQL("UPDATE {} t SET {} WHERE {} RETURNING {} AS k").format(
            _ident(rule.table), assignments, where, key)
        params = list(rule.set.values()) + params
    else:
        change = sql.SQL("DELETE FROM {} t WHERE {} RETURNING NULL AS k").format(_ident(rule.table), where)
    if not log_columns:
        cur.execute(sql.SQL("WITH changed AS ({}) SELECT count(*), 0 FROM changed").format(change), params)
    else:
        log = _log_insert(subject[0] if subject else None)
        cur.execute(sql.SQL("WITH changed AS ({}), logged AS ({} RETURNING 1) "
                            "SELECT (SELECT count(*) FROM changed), (SELECT count(*) FROM logged)").format(change, log),
                    params + [LOG_OPERATION[rule.action], LEGAL_BASIS])
    rows, logged = cur.fetchone()
    return int(rows), int(logged)


def rule_failed(tenant_id: str, rule: RetentionRule, exc: Exception) -> OperationFailed:
    """The database's first line only: its DETAIL line can quote a row's (personal) values."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return OperationFailed(f"tenant {tenant_id}: LGPD rule {rule.name} ({rule.table}): {type(exc).__name__}: "
                           f"{first}; nothing changed")


def evaluate(cur, rules: LgpdRules, tenant_id: str) -> list[RuleOutcome]:
    """Rows each rule would change now, nothing changed (the dry run and the compliance report)."""
    outcomes = []
    for rule in rules.retention:
        outcome = RuleOutcome(rule.name, rule.table, rule.action, rule.period, skipped=skip_reason(cur, rule))
        if not outcome.skipped:
            try:
                outcome.rows = count_due(cur, rule)
            except Exception as exc:
                raise rule_failed(tenant_id, rule, exc) from None
        outcomes.append(outcome)
    return outcomes


def _log_columns(cur) -> set[str]:
    columns = table_columns(cur, LOG_TABLE)
    return columns if LOG_COLUMNS <= columns else set()


def _run(settings: Settings, database: str, rules: LgpdRules, result: RetentionResult, before_commit) -> None:
    with pg.connection(settings.pg_dsn, database) as conn, conn.cursor() as cur:
        if result.dry_run:
            cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        log_columns = _log_columns(cur)
        result.log_table = bool(log_columns)
        if result.dry_run:
            result.rules = evaluate(cur, rules, result.tenant_id)
            return
        for rule in rules.retention:
            outcome = RuleOutcome(rule.name, rule.table, rule.action, rule.period, skipped=skip_reason(cur, rule))
            if not outcome.skipped:
                try:
                    outcome.rows, outcome.logged = apply_rule(cur, rule, rules, log_columns)
                except Exception as exc:
                    raise rule_failed(result.tenant_id, rule, exc) from None
            result.rules.append(outcome)
        before_commit()  # the connection context commits after this returns


def apply(settings: Settings, tenant_id: str, rules: LgpdRules, dry_run: bool = False,
          wait_seconds: float = 0) -> RetentionResult:
    """Apply (or, dry, count) the retention rules on the tenant's live database."""
    validate_tenant_id(tenant_id)
    if registry.get_tenant(settings, tenant_id) is None:
        raise BadInput(f"tenant {tenant_id} is not registered: LGPD retention applies to registered tenants")
    database = names_for(settings, tenant_id).database
    result = RetentionResult(tenant_id, dry_run)
    with tenant_operation(settings, tenant_id, OPERATION, wait_seconds=wait_seconds, lease=not dry_run,
                          audit_row=not dry_run) as op:
        if not pg.database_exists(settings.pg_dsn, database):
            result.database = False
            result.rules = [RuleOutcome(r.name, r.table, r.action, r.period, skipped=f"no database {database}")
                            for r in rules.retention]
        else:
            _run(settings, database, rules, result, op.ensure_lease)
        result.seconds = op.seconds
        op.audit["details"] = {"rules": result.rows_by_rule(), "total_rows": result.total_rows,
                               "skipped": {r.rule: r.skipped for r in result.skipped},
                               "logged": sum(r.logged for r in result.rules), "database": result.database}
    return result
