"""Restore a tenant from a restore point, tier by tier, into itself or --into another tenant.

Nothing outside the target tenant's names is ever written. The leases of the target and of
the source are held for the whole restore (in the frame of `operation.py`), so no session of
the target interleaves with it and no forget removes the source's restore point under it.

Tiers that are empty in the session (the tenant had no bucket, no vhost) are skipped, not
cleared: the target's current data for them is left as it is, and the skip says so.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from . import locations, registry
from .config import Settings
from .errors import BadInput, KryonixError, OperationFailed, one_line
from .manifest import (SESSION_ID, SNAPSHOT_ID, STATUS_EMPTY, STATUS_OK, SessionManifest, find_manifest,
                       newest_with_data, restore_points)
from .naming import TenantNames, names_for, validate_tenant_id
from .pg_script import IDENTIFIER
from .lgpd.reapply import ErasureFilter, erasure_filter
from .tenant_repository import open_repository
from .tiers import TIER_NAMES, TIERS, TierSpec, tier
from .operation import tenant_operation
from .repository import Restic
from .tiers.base import RestoreContext, RestoreOutcome
from .reporting import NullReporter, Reporter


@dataclass
class RestoreResult:
    tenant_id: str
    target_id: str
    session_id: str
    started_at: datetime
    tiers: dict[str, RestoreOutcome] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    success: bool = False
    error: str | None = None
    duration_seconds: float = 0.0
    lgpd: dict = field(default_factory=lambda: {"subjects_reerased": 0})  # the erasure ledger re-applied
    warnings: list[str] = field(default_factory=list)  # e.g. `latest` has a tier emptied since the point before

    def to_json(self) -> dict:
        return {
            "tenant": self.tenant_id, "into": self.target_id, "session": self.session_id, "lgpd": self.lgpd,
            "success": self.success, "error": self.error, "duration_seconds": self.duration_seconds,
            "tiers": {name: asdict(o) for name, o in self.tiers.items()}, "skipped": self.skipped,
            "warnings": self.warnings,
        }


def parse_services(raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    wanted = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    unknown = [s for s in wanted if s not in TIER_NAMES]
    if unknown or not wanted:
        raise BadInput(f"unknown service(s) {', '.join(unknown) or '(none given)'}: expected some of {', '.join(TIER_NAMES)}")
    return wanted


def validate_restore_args(tenant_id: str, into: str | None, services: tuple[str, ...] | None, schema: str | None,
                          snapshot: str = "latest") -> None:
    validate_tenant_id(tenant_id)
    validate_snapshot(snapshot)
    if into is not None:
        validate_tenant_id(into)
    if schema is not None:
        if not IDENTIFIER.fullmatch(schema):
            raise BadInput(f"invalid schema name {schema!r}")
        if services is not None and services != ("postgresql",):
            raise BadInput("--schema restores one PostgreSQL schema: use it with --services postgresql or alone")


def validate_snapshot(snapshot: str) -> str:
    if snapshot != "latest" and not SESSION_ID.fullmatch(snapshot) and not SNAPSHOT_ID.fullmatch(snapshot):
        raise BadInput(f"invalid --snapshot {snapshot!r}: latest, a session id (20261129T020000Z-a1b2c3) or a snapshot id")
    return snapshot


def _plan(manifest: SessionManifest, services: tuple[str, ...] | None, schema: str | None,
          report: Reporter) -> tuple[list[str], dict[str, str]]:
    """Which tiers to restore, and why the others are skipped."""
    chosen = list(services or [t.name for t in TIERS])
    if schema:
        chosen = ["postgresql"]
    todo, skipped = [], {}
    for name in chosen:
        result = manifest.tiers.get(name)
        covered_by = tier(name).restored_with
        if covered_by in chosen and not schema:
            skipped[name] = f"it comes back with the {covered_by} tier of the same session"
            continue
        if result is None:
            reason = "not in this session"
        elif result.status == STATUS_EMPTY:
            reason = "empty in this session: the target's current data for it is left as it is"
        elif result.status != STATUS_OK:
            reason = f"{result.status} in this session"
        else:
            todo.append(name)
            continue
        if services and name in services:
            raise BadInput(f"session {manifest.session_id} cannot restore {name}: {reason}")
        skipped[name] = reason
        report.info(f"skipping {name}: {reason}")
    return todo, skipped


def run_restore(settings: Settings, tenant_id: str, snapshot: str = "latest", into: str | None = None,
                services: tuple[str, ...] | None = None, schema: str | None = None,
                report: Reporter | None = None, wait_seconds: float = 0,
                repository: str = locations.PRIMARY) -> RestoreResult:
    """Restore under the leases of the target and of the source. The manifest is read again
    once the leases are held: what is restored is what the repository holds then, not before
    the wait."""
    report = report or NullReporter()
    validate_restore_args(tenant_id, into, services, schema, snapshot)
    target_id = into or tenant_id
    if into and registry.get_tenant(settings, into) is None:
        raise BadInput(f"tenant {into} is not registered (add it with `kryonix-backup tenants add`)")
    registry.refuse_offboarded(settings, tenant_id, target_id)
    repo = open_repository(settings, tenant_id, repository=repository)
    if repo is None:
        raise BadInput(f"tenant {tenant_id} has never been backed up")
    manifest = _manifest(repo, tenant_id, snapshot)  # refuse early, before waiting for leases
    if snapshot == "latest" and services:  # asked for a tier that `latest` lost: say where it still is
        lost = emptied_warnings(repo, manifest, list(services))
        if lost:
            raise BadInput(lost[0])
    _plan(manifest, services, schema, NullReporter())
    source, target = names_for(settings, tenant_id), names_for(settings, target_id)
    also = () if target_id == tenant_id else (tenant_id,)
    result = RestoreResult(tenant_id, target_id, manifest.session_id, datetime.now(timezone.utc))
    with tenant_operation(settings, target_id, "restore", wait_seconds=wait_seconds, also_lease=also,
                          started_at=result.started_at) as op:
        op.audit = _audit_fields(result)
        registry.refuse_offboarded(settings, tenant_id, target_id)  # off-boarded while we waited
        manifest = _manifest(repo, tenant_id, manifest.session_id)  # re-read under the leases
        todo, result.skipped = _plan(manifest, services, schema, report)
        if snapshot == "latest":
            result.warnings = emptied_warnings(repo, manifest, list(services or TIER_NAMES))
            for warning in result.warnings:
                report.warn(warning)
        if schema and schema not in manifest.tiers["postgresql"].details.get("schemas", []):
            raise BadInput(f"schema {schema} is not in session {manifest.session_id}")
        restore_tiers(settings, source, target, repo, manifest, [tier(name) for name in todo], report, schema,
                      before_each=op.ensure_lease, outcomes=result.tiers, ledger=result.lgpd)
        result.success = True
        result.duration_seconds = op.seconds
        op.audit = _audit_fields(result)
    return result


def emptied_warnings(repo: Restic, manifest: SessionManifest, tiers: list[str]) -> list[str]:
    """For `latest`: each tier to restore that came out empty in it while the point before had
    items (a silent loss), with the newest restore point that still holds data in it."""
    lost = [name for name in manifest.emptied if name in tiers]
    if not lost:
        return []
    older = [p for p in restore_points(repo) if p.session_id != manifest.session_id and p.time <= _time_of(manifest)]
    warnings = []
    for name in lost:
        found = newest_with_data(repo, name, older)
        where = (f"the newest restore point with data in it is {found.session_id}: "
                 f"`restore {manifest.tenant_id} --snapshot {found.session_id} --services {name}`"
                 if found else "no earlier restore point has data in it either")
        warnings.append(f"tier {name} of the latest restore point {manifest.session_id} is empty although the "
                        f"restore point before it had items, so its data does not come back from it; {where}")
    return warnings


def preview(settings: Settings, tenant_id: str, snapshot: str, services: tuple[str, ...] | None,
            repository: str = locations.PRIMARY) -> tuple[str, list[str]]:
    """What a restore of `snapshot` would take, for the operator's prompt: the session id it
    resolves to and the warnings about it (reads only; the restore reads again under its lease)."""
    repo = open_repository(settings, tenant_id, repository=repository)
    if repo is None:
        raise BadInput(f"tenant {tenant_id} has never been backed up")
    manifest = _manifest(repo, tenant_id, snapshot)
    wanted = list(services or TIER_NAMES)
    return manifest.session_id, emptied_warnings(repo, manifest, wanted) if snapshot == "latest" else []


def _time_of(manifest: SessionManifest) -> datetime:
    return datetime.fromisoformat(manifest.started_at)


LOAD_LEDGER = object()  # restore_tiers loads the ledgers that apply itself


def restore_tiers(settings: Settings, source: TenantNames, target: TenantNames, repo: Restic,
                  manifest: SessionManifest, specs: list[TierSpec], report: Reporter, schema: str | None = None,
                  before_each=lambda: None, outcomes: dict[str, RestoreOutcome] | None = None,
                  preflight: bool = True, ledger: dict | None = None,
                  erasure: ErasureFilter | None | object = LOAD_LEDGER) -> dict[str, RestoreOutcome]:
    """Each tier's restore verb, in order, from `source`'s restore point into `target`'s names
    (a restore, or a drill's scratch names). A tier's failure names the tenant and the tier.

    Each tier verifies its own snapshot before it replaces anything; with several tiers,
    `preflight` first reads every later tier's snapshots through (restic authenticates every
    blob), so a damaged pack of the objects stops the restore before the database is swapped.
    (A drill, whose target is scratch, skips it.)

    The erasure ledger (engine/lgpd/reapply.py) is loaded here, once, and every tier re-applies
    it to its staged data before that data goes live; `ledger` receives how many subjects it
    re-erased (a caller that restored another tier itself passes the filter it used as `erasure`)."""
    outcomes = {} if outcomes is None else outcomes
    if erasure is LOAD_LEDGER:
        erasure = erasure_filter(settings, source, target)
    if preflight:
        _read_through(repo, manifest, specs[1:], target.tenant_id, report)
    for spec in specs:
        report.info(f"restoring {spec.name} of session {manifest.session_id} into {target.tenant_id}")
        ctx = RestoreContext(settings, source, target, repo, manifest, manifest.tiers[spec.name], report, schema,
                             erasure=erasure)
        before_each()
        try:
            outcomes[spec.name] = spec.restore(ctx)
        except KryonixError as exc:
            raise type(exc)(_with_tier(str(exc), target.tenant_id, spec.name)) from exc
        for warning in outcomes[spec.name].warnings:
            report.warn(warning)
    if ledger is not None and erasure is not None:
        ledger.update(erasure.to_json())
    return outcomes


def _read_through(repo: Restic, manifest: SessionManifest, specs: list[TierSpec], tenant_id: str,
                  report: Reporter) -> None:
    for spec in specs:
        report.info(f"checking that {spec.name} of session {manifest.session_id} reads back whole")
        for snapshot_id in manifest.tiers[spec.name].snapshots.values():
            try:
                repo.read_through(snapshot_id)
            except KryonixError as exc:
                raise type(exc)(_with_tier(f"{exc}; nothing was changed", tenant_id, spec.name)) from exc


def _with_tier(message: str, tenant_id: str, tier_name: str) -> str:
    """'tenant X: …' → 'tenant X, tier T: …' where the tier's own message did not say it."""
    message = one_line(message)
    if f"tier {tier_name}" in message:
        return message
    prefix = f"tenant {tenant_id}: "
    rest = message[len(prefix):] if message.startswith(prefix) else message
    return f"tenant {tenant_id}, tier {tier_name}: {rest}"


def _manifest(repo, tenant_id: str, snapshot: str) -> SessionManifest:
    try:
        manifest = find_manifest(repo, snapshot)
    except ValueError as exc:  # tampered or foreign manifest: never handed to the tools
        raise OperationFailed(f"tenant {tenant_id}: restore point {snapshot}: {one_line(str(exc), 300)}") from None
    if manifest is None:
        raise BadInput(f"tenant {tenant_id}: no restore point {snapshot!r} (see `kryonix-backup snapshots {tenant_id}`)")
    return manifest


def _audit_fields(result: RestoreResult) -> dict:
    return {"session_id": result.session_id,
            "details": {"source": result.tenant_id, "lgpd_subjects_reerased": result.lgpd.get("subjects_reerased", 0), "tiers": {n: o.restored for n, o in result.tiers.items()},
                        "removed": {n: o.removed for n, o in result.tiers.items()},
                        "skipped": result.skipped}}
