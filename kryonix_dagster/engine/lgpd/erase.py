"""`lgpd erase ID --subject KIND=VALUE`: erase a person from the tenant's live data in every
service the rules name, append the erasure ledger entry, and issue a certificate.

Order: under the tenant's lease (no backup session interleaves), the subject is resolved to
the person's key(s) in the live database; the database rows are deleted/anonymised in ONE
transaction; then Redis keys, objects (every version) and application-data paths; the ledger
entry is appended last, so a failure before it leaves no entry claiming an erasure that did
not finish (running the command again finishes it). A dry run resolves and counts only.

The certificate says what was erased where (counts), and which restore points may still hold
the person: every restore point taken before the erasure (they are not opened to look, so the
list is honest and cheap: a restore point taken earlier may hold the person; one taken later
cannot, since the live data no longer has them). Every restore re-applies the ledger, and
`--rewrite` removes them from those restore points. The value never appears in any output,
log, audit row or certificate: only the subject kind and a short reference of its keyed hash.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from psycopg2 import sql

from .. import locations, pg, registry, services
from ..config import Settings
from ..errors import BadInput, KryonixError, OperationFailed, one_line
from ..manifest import restore_points
from ..naming import TenantNames, names_for, validate_tenant_id
from ..operation import tenant_operation
from ..reporting import NullReporter, Reporter
from ..tenant_repository import open_repository
from . import ledger, ledger_stash
from .locations import (Erased, erase_appdata, erase_database, erase_objects, erase_redis, existing_tables,
                        path_component)
from .rules import LgpdRules, load_rules, parse_subject


@dataclass
class Certificate:
    tenant_id: str
    subject_kind: str
    reference: str  # ledger entry id and a prefix of the keyed hash; never the value
    dry_run: bool
    erased_at: datetime
    persons: int = 0  # person keys the subject resolved to
    erased: Erased = field(default_factory=Erased)
    restore_points_before: list[str] = field(default_factory=list)  # the primary's: may still hold the person
    # every location that holds restore points (primary, secondary: the off-site copy) -> its
    # restore points taken before the erasure; None: the location could not be listed
    locations_before: dict[str, list[str] | None] = field(default_factory=dict)
    location_errors: dict[str, str] = field(default_factory=dict)
    rewritten: list[dict] = field(default_factory=list)  # filled by --rewrite (each names its location)
    rewritten_locations: list[str] = field(default_factory=list)  # locations --rewrite went through
    rewrite_done: bool = False  # --rewrite looked at every restore point of every location
    duration_seconds: float = 0.0

    def holding(self) -> list[dict]:
        """Per location: what it still holds of the person after this command."""
        found = []
        for name, before in (self.locations_before or {"primary": self.restore_points_before}).items():
            rewritten = self.rewrite_done and (name in self.rewritten_locations or before == [])
            found.append({"location": name, "restore_points_taken_before": before, "rewritten": rewritten,
                          "may_still_hold": [] if rewritten else before,
                          **({"error": self.location_errors[name]} if name in self.location_errors else {})})
        return found

    def to_json(self) -> dict:
        holding = self.holding()
        may = sorted({s for h in holding for s in (h["may_still_hold"] or [])})
        unknown = [h["location"] for h in holding if h["may_still_hold"] is None]
        return {
            "tenant": self.tenant_id, "subject_kind": self.subject_kind, "reference": self.reference,
            "dry_run": self.dry_run, "erased_at": self.erased_at.isoformat(), "persons": self.persons,
            "erased": self.erased.to_json(),
            "restore_points_that_may_hold_the_person": may + [f"(every restore point in {u}: not listed)"
                                                              for u in unknown],
            "restore_points_taken_before": self.restore_points_before,
            "locations": holding,
            "rewritten_restore_points": self.rewritten, "duration_seconds": self.duration_seconds,
        }


def resolve_keys(settings: Settings, names: TenantNames, rules: LgpdRules, kind: str, value: str,
                 erased: Erased) -> list[str]:
    """The person's key(s) from the live database (`SELECT key FROM table WHERE column = value`)."""
    resolve = rules.subject(kind).resolve
    if not pg.database_exists(settings.pg_dsn, names.database):
        erased.skipped.append(f"postgresql:{names.database}")
        return [value] if resolve.column == resolve.key else []
    with pg.connection(settings.pg_dsn, names.database) as conn, conn.cursor() as cur:
        if resolve.table not in existing_tables(cur):
            erased.skipped.append(f"postgresql:{resolve.table}")
            return [value] if resolve.column == resolve.key else []
        schema, table = resolve.table.split(".", 1)
        cur.execute(sql.SQL("SELECT DISTINCT {}::text FROM {} WHERE {}::text = %s").format(
            sql.Identifier(resolve.key), sql.Identifier(schema, table), sql.Identifier(resolve.column)), (value,))
        found = [row[0] for row in cur.fetchall()]
    if resolve.column == resolve.key and value not in found:
        found.append(value)  # an id names the person even where the row itself is gone
    return found


def erase_everywhere(settings: Settings, names: TenantNames, rules: LgpdRules, kind: str, keys: list[str],
                     dry_run: bool, erased: Erased) -> None:
    """The person's keys erased from every live service of `names` (database in one transaction)."""
    key_name = rules.subject(kind).resolve.as_
    where = rules.locations(kind)
    if keys and pg.database_exists(settings.pg_dsn, names.database):
        with pg.connection(settings.pg_dsn, names.database) as conn, conn.cursor() as cur:
            erase_database(cur, where, keys, dry_run, erased)
            if dry_run:
                conn.rollback()
    erase_redis(services.redis_client(settings), names, where.redis, key_name, keys, dry_run, erased)
    erase_objects(services.s3_client(settings), names, where.objects, key_name, keys, dry_run, erased,
                  services.bucket_exists)
    erase_appdata(names.app_data_dir, where.appdata, key_name, keys, dry_run, erased)


def _points_before(settings: Settings, tenant_id: str, moment: datetime, kind: str = locations.PRIMARY) -> list[str]:
    repo = open_repository(settings, tenant_id, repository=kind)
    if repo is None or (kind != locations.PRIMARY and not repo.exists()):
        return []
    return [p.session_id for p in restore_points(repo) if p.time <= moment]


def _locations_before(settings: Settings, tenant_id: str, moment: datetime, cert: "Certificate") -> None:
    """Every location's restore points taken before the erasure: the primary, and the off-site
    copy (through its admin path when configured, else the workers' endpoint). A copy that
    cannot be listed is named, never left out."""
    cert.restore_points_before = _points_before(settings, tenant_id, moment)
    cert.locations_before = {locations.PRIMARY: cert.restore_points_before}
    if not (settings.repo_secondary or settings.repo_secondary_admin):
        return
    kind = locations.SECONDARY_ADMIN if settings.repo_secondary_admin else locations.SECONDARY
    try:
        cert.locations_before[locations.SECONDARY] = _points_before(settings, tenant_id, moment, kind)
    except KryonixError as exc:
        cert.locations_before[locations.SECONDARY] = None
        cert.location_errors[locations.SECONDARY] = one_line(str(exc), 200)


def run_erase(settings: Settings, tenant_id: str, subject: str, dry_run: bool = False,
              report: Reporter | None = None, wait_seconds: float = 0,
              rules: LgpdRules | None = None) -> Certificate:
    report = report or NullReporter()
    validate_tenant_id(tenant_id)
    rules = rules or load_rules()
    kind, value = parse_subject(subject, rules)
    if registry.get_tenant(settings, tenant_id) is None:
        raise BadInput(f"tenant {tenant_id} is not registered")
    names = names_for(settings, tenant_id)
    now = datetime.now(timezone.utc)
    cert = Certificate(tenant_id, kind, "(dry run)", dry_run, now)
    with tenant_operation(settings, tenant_id, "lgpd_erase", wait_seconds=wait_seconds,
                          audit_row=not dry_run) as op:
        key = ledger.ledger_key(settings, tenant_id, create=not dry_run)
        keys = resolve_keys(settings, names, rules, kind, value, cert.erased)
        where = rules.locations(kind)
        if (where.objects or where.appdata) and not all(map(path_component, keys)):
            raise OperationFailed(f"tenant {tenant_id}: the {kind} subject resolves to a person key that is not one "
                                  "safe path component (it would name more than the person's files); nothing was erased")
        cert.persons = len(keys)
        report.info(f"tenant {tenant_id}: subject {kind} resolves to {len(keys)} person(s)"
                    + (" (dry run: nothing is changed)" if dry_run else ""))
        erase_everywhere(settings, names, rules, kind, keys, dry_run, cert.erased)
        _locations_before(settings, tenant_id, now, cert)
        if not dry_run:
            key_name = rules.subject(kind).resolve.as_
            entry = ledger.append(settings, tenant_id, kind, ledger.keyed_hash(key, kind, value),
                                  [ledger.keyed_hash(key, key_name, k) for k in keys],
                                  {"erased": cert.erased.to_json(), "persons": len(keys)})
            cert.reference, cert.erased_at = entry.reference, entry.erased_at
            ledger_stash.stash_everywhere(settings, tenant_id)  # survives the loss of the main database
        cert.duration_seconds = op.seconds
        op.audit = {"details": {"subject_kind": kind, "reference": cert.reference, "persons": len(keys),
                                "erased": cert.erased.to_json(),
                                "restore_points_before": {k: None if v is None else len(v)
                                                          for k, v in cert.locations_before.items()}}}
    report.info(f"tenant {tenant_id}: erased {cert.erased.total} item(s) of {kind} subject {cert.reference}")
    return cert
