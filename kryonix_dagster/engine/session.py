"""A backup session: one coordinated, all-tier backup of one tenant (the seed's orchestrator).

Phases: check the tenant is registered and active; take its lease; raise the
`cliente:{id}:backup:in_progress` flag; health-check the services; create a PostgreSQL
restore point named after the session; run the tiers phase by phase (foundation tiers in
parallel; a failed critical tier stops the session); write the manifest last; release the
flag and the lease and record the audit row on every path (the frame in `operation.py`).

A session whose lease is lost (frozen or cut off from the main database past the TTL, so
another operation may have taken the tenant over) runs no further phase and never writes a
manifest: the manifest is written only after a fenced check that the lease is still ours.
The heartbeat is stopped before the backup flag is cleared, so no late renewal re-raises it.
"""
from __future__ import annotations

import contextlib
import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, ContextManager

from . import consistency, pg, registry, services
from .config import Settings
from .errors import BadInput, KryonixError, one_line
from .repository_stats import count_session
from .operation import Operation, tenant_operation
from .manifest import STATUS_FAILED, STATUS_SKIPPED, SessionManifest, TierResult, new_session_id, write_manifest
from .naming import BACKUP_TYPES, TenantNames, names_for, validate_tenant_id
from .repository import restic_version
from .tenant_repository import open_repository
from .tiers import PHASES, TIERS
from .tiers.base import BackupContext, TierSpec
from .reporting import NullReporter, Reporter, Stopwatch
from .pitr.archive import window_fields as pitr_window_fields

log = logging.getLogger(__name__)
# Around each tier: a context manager per service (the Dagster layer gives per-service pools).
Gate = Callable[[str], ContextManager]


@dataclass
class SessionResult:
    tenant_id: str
    session_id: str
    backup_type: str
    started_at: datetime
    finished_at: datetime | None = None
    status: str = "failed"  # complete | partial | failed
    tiers: dict[str, TierResult] = field(default_factory=dict)
    error: str | None = None
    manifest_snapshot: str | None = None
    duration_seconds: float = 0.0
    consistency: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    emptied: dict[str, int] = field(default_factory=dict)  # tier → items in the previous restore point
    pg_restore_point: dict = field(default_factory=dict)  # name, lsn, time; the PITR window when set up

    @property
    def consistent(self) -> bool:
        return bool(self.consistency.get("consistent", False))

    @property
    def success(self) -> bool:
        return self.status == "complete" and self.consistent

    @property
    def restore_point(self) -> bool:
        return self.manifest_snapshot is not None

    @property
    def bytes_processed(self) -> int:
        return sum(t.bytes_processed for t in self.tiers.values())

    @property
    def bytes_added(self) -> int:
        return sum(t.bytes_added for t in self.tiers.values())

    def to_json(self) -> dict:
        return {
            "tenant": self.tenant_id, "session": self.session_id, "type": self.backup_type,
            "status": self.status, "success": self.success, "restore_point": self.restore_point,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_seconds": self.duration_seconds, "bytes_processed": self.bytes_processed,
            "bytes_added": self.bytes_added, "error": self.error, "warnings": self.warnings,
            "emptied": self.emptied,
            "consistency": {k: self.consistency.get(k) for k in ("score", "consistent", "problems")},
            "tiers": {name: _tier_json(t) for name, t in self.tiers.items()},
        }


def _tier_json(t: TierResult) -> dict:
    doc = asdict(t)
    doc["checksums"] = {k: v for k, v in t.checksums.items() if k != "tables"}  # per-table hashes stay in the manifest
    return doc


def validate_backup_type(backup_type: str) -> str:
    if backup_type not in BACKUP_TYPES:
        raise BadInput(f"unknown backup type {backup_type!r}: expected full or incremental")
    return backup_type


class _TenantReporter:
    """Prefixes messages with the tenant and forwards them (and logs them)."""

    def __init__(self, tenant_id: str, inner: Reporter):
        self.tenant_id, self.inner = tenant_id, inner

    def info(self, message: str) -> None:
        log.info("tenant %s: %s", self.tenant_id, message)
        self.inner.info(message)

    def warn(self, message: str) -> None:
        log.warning("tenant %s: %s", self.tenant_id, message)
        self.inner.warn(message)

    def progress(self, task: str, done: int, total: int | None) -> None:
        self.inner.progress(f"{self.tenant_id} {task}", done, total)


def _run_tier(spec: TierSpec, ctx: BackupContext, gate: Gate) -> TierResult:
    watch = Stopwatch()
    try:
        with gate(spec.service):
            result = spec.backup(ctx)
    except KryonixError as exc:
        return TierResult(spec.name, STATUS_FAILED, duration_seconds=watch.seconds, error=one_line(str(exc)))
    except Exception as exc:  # unexpected: still a failed tier with a message that says where
        log.exception("tenant %s, tier %s", ctx.names.tenant_id, spec.name)
        return TierResult(spec.name, STATUS_FAILED, duration_seconds=watch.seconds,
                          error=f"tenant {ctx.names.tenant_id}, tier {spec.name}: {type(exc).__name__}: {one_line(str(exc))}")
    ctx.report.info(f"tier {spec.name}: {result.status}, {result.bytes_processed} bytes read, "
                    f"{result.bytes_added} bytes added in {result.duration_seconds:.1f}s")
    return result


def _run_phases(ctx: BackupContext, tiers: tuple[TierSpec, ...], gate: Gate,
                lease_lost: Callable[[], bool] = lambda: False) -> dict[str, TierResult]:
    results: dict[str, TierResult] = {}
    stopped_by: str | None = None
    for phase, parallel, critical in PHASES:
        specs = [t for t in tiers if t.phase == phase]
        if not specs:
            continue
        if not stopped_by and lease_lost():
            stopped_by = "the lease (lost)"
            ctx.report.warn("the session lost its lease; stopping without a restore point")
        if stopped_by:
            for spec in specs:
                results[spec.name] = TierResult(spec.name, STATUS_SKIPPED, error=f"not run: {stopped_by} failed"
                                                if "lease" not in stopped_by else "not run: lease lost")
            continue
        ctx.report.info(f"phase {phase}: {', '.join(s.name for s in specs)}")
        if parallel and len(specs) > 1:
            with ThreadPoolExecutor(max_workers=len(specs), thread_name_prefix=f"tier-{phase}") as pool:
                for spec, result in zip(specs, pool.map(lambda s: _run_tier(s, ctx, gate), specs)):
                    results[spec.name] = result
        else:
            for spec in specs:
                results[spec.name] = _run_tier(spec, ctx, gate)
        failed = [s.name for s in specs if not results[s.name].succeeded and (critical or s.critical)]
        if failed:
            stopped_by = ", ".join(failed)
            ctx.report.warn(f"critical tier {stopped_by} failed; stopping the session")
    return results


def _set_flag(settings: Settings, key: str, session_id: str, ttl: int) -> None:
    services.redis_client(settings).set(key, session_id, ex=ttl)


def _clear_flag(settings: Settings, key: str, session_id: str) -> None:
    """Delete the flag only if it is still ours."""
    script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
    services.redis_client(settings).eval(script, 1, key, session_id)


def _restore_point(settings: Settings, names: TenantNames, session_id: str, report: Reporter) -> dict:
    name = names.restore_point_name(session_id)
    try:
        with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_create_restore_point(%s)::text, now()", (name,))
            lsn, at = cur.fetchone()
        return {"name": name, "lsn": lsn, "time": at.isoformat(), **pitr_window_fields(settings)}
    except Exception as exc:  # PITR is a bonus on top of the logical backup, not a reason to fail it
        report.warn(f"no PostgreSQL restore point: {one_line(str(exc), 200)}")
        return {"name": None, "error": one_line(str(exc), 200)}


def _tool_versions() -> dict[str, str]:
    versions = {"restic": restic_version()}
    try:
        versions["pg_dump"] = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True).stdout.split()[-1]
    except (OSError, IndexError):
        versions["pg_dump"] = "unknown"
    try:
        versions["kryonix-dagster"] = metadata.version("kryonix-dagster")
    except metadata.PackageNotFoundError:
        versions["kryonix-dagster"] = "unknown"
    return versions


def run_backup(
    settings: Settings,
    tenant_id: str,
    backup_type: str = "incremental",
    report: Reporter | None = None,
    wait_seconds: float = 0,
    tiers: tuple[TierSpec, ...] = TIERS,
    gate: Gate | None = None,
    origin: str | None = None,
) -> SessionResult:
    """Run one session. Bad input and a busy tenant raise; a failed session returns its result.
    `origin` (e.g. the batch run that asked for it) goes into the audit row's details, so a
    redone batch can tell which of its tenants are already backed up (audit.backed_up_by)."""
    validate_tenant_id(tenant_id)
    validate_backup_type(backup_type)
    tenant = registry.require_tenant(settings, tenant_id)
    if not tenant.active:
        raise BadInput(f"tenant {tenant_id} is {tenant.status}: backups run only for active tenants")
    reporter = _TenantReporter(tenant_id, report or NullReporter())
    names = names_for(settings, tenant_id)
    started = datetime.now(timezone.utc)
    session_id = new_session_id(started)
    result = SessionResult(tenant_id, session_id, backup_type, started)
    flag_ttl = settings.lease_ttl_seconds * 2
    with tenant_operation(settings, tenant_id, "backup", wait_seconds=wait_seconds, lease_id=session_id,
                          started_at=started,
                          on_renew=lambda: _set_flag(settings, names.backup_flag_key, session_id, flag_ttl)) as op:
        try:
            _session(settings, tenant, names, op, result, tiers, gate, reporter)
        except KryonixError as exc:
            result.error = one_line(str(exc))
        except Exception as exc:
            log.exception("tenant %s: session %s", tenant_id, session_id)
            result.error = f"tenant {tenant_id}: {type(exc).__name__}: {one_line(str(exc))}"
        finally:
            op.stop_heartbeats()  # no late renewal re-raises the flag after it is cleared
            try:
                _clear_flag(settings, names.backup_flag_key, session_id)
            except Exception as exc:
                reporter.warn(f"could not clear {names.backup_flag_key}: {type(exc).__name__}")
            result.finished_at = datetime.now(timezone.utc)
            result.duration_seconds = op.seconds
            op.success, op.error, op.audit = result.success, result.error, _audit_fields(result)
            if origin:
                op.audit["details"]["origin"] = origin
    reporter.info(f"session {session_id}: {result.status}" + (f" ({result.error})" if result.error else ""))
    return result


def _session(settings: Settings, tenant, names, op: Operation, result: SessionResult,
             tiers: tuple[TierSpec, ...], gate: Gate | None, reporter: Reporter) -> None:
    """The session's phases, under its lease (the caller clears the flag and audits)."""
    tenant_id, session_id, started = tenant.id, result.session_id, result.started_at
    reporter.info(f"session {session_id} ({result.backup_type}) started")
    try:
        _set_flag(settings, names.backup_flag_key, session_id, settings.lease_ttl_seconds * 2)
    except Exception as exc:
        reporter.warn(f"could not set {names.backup_flag_key}: {one_line(str(exc), 200)}")
    health = {h.service: {"ok": h.ok, "detail": h.detail} for h in services.check_health(settings)}
    needed = {t.service for t in tiers}
    down = [s for s in needed if s in health and not health[s]["ok"]]
    for service in down:
        reporter.warn(f"service {service} is unhealthy: {health[service]['detail']}")
    point = result.pg_restore_point = _restore_point(settings, names, session_id, reporter)
    repo = open_repository(settings, tenant_id, create=True)
    ctx = BackupContext(settings, tenant, names, repo, session_id, started, result.backup_type, reporter)
    result.tiers = _run_phases(ctx, tiers, gate or (lambda _service: contextlib.nullcontext()),
                               lease_lost=lambda: op.lease_lost)
    if op.lease_lost:
        op.ensure_lease()  # raises LeaseLost: no manifest from a session that lost its lease
    result.consistency = consistency.evaluate(ctx.captured).to_json()
    if result.consistency["problems"]:
        score = result.consistency["score"]
        label = "no rule could be evaluated" if score is None else (
            f"score {score}%, " + ("consistent" if result.consistent else "inconsistent"))
        reporter.warn(f"consistency ({label}): " + "; ".join(result.consistency["problems"]))
    result.emptied = _emptied_tiers(ctx, result.tiers)
    result.warnings = _tier_warnings(result.tiers) + [
        f"tier {name}: empty, the previous restore point had {count} item(s)" for name, count in result.emptied.items()]
    for warning in result.warnings:
        reporter.warn(warning)
    critical_ok = all(result.tiers[t.name].succeeded for t in tiers if t.critical)
    all_ok = all(r.succeeded for r in result.tiers.values())
    if critical_ok:
        manifest = SessionManifest(
            tenant_id=tenant_id, session_id=session_id, backup_type=result.backup_type,
            started_at=started.isoformat(), finished_at=datetime.now(timezone.utc).isoformat(),
            status="complete" if all_ok else "partial", tiers=result.tiers, tools=_tool_versions(),
            restore_point=point, health=health, consistency=result.consistency, warnings=result.warnings,
            emptied=sorted(result.emptied),
        )
        op.ensure_lease()  # fenced: the lease is ours in the main database, renewed for one more TTL
        result.manifest_snapshot = write_manifest(repo, manifest, started)
        result.status = manifest.status
        try:
            written = 1 + sum(len(t.snapshots) for t in result.tiers.values())
            count_session(settings, tenant_id, session_id, written, repo)
        except Exception as exc:  # statistics only: the restore point is written
            reporter.warn(f"repository statistics not refreshed: {one_line(str(exc), 200)}")
    failed = [f"{name}: {r.error}" for name, r in result.tiers.items() if r.error and r.status == STATUS_FAILED]
    if result.restore_point and not result.consistent:
        failed.append(f"inconsistent (score {result.consistency['score']}%): "
                      + "; ".join(result.consistency["problems"]))
    result.error = "; ".join(failed) or None


def _tier_warnings(tiers: dict[str, TierResult]) -> list[str]:
    """Warnings a tier put in its details (`details["warnings"]`), prefixed with the tier."""
    return [f"tier {name}: {w}" for name, t in tiers.items() for w in t.details.get("warnings", []) or []]


def _emptied_tiers(ctx: BackupContext, tiers: dict[str, TierResult]) -> dict[str, int]:
    """Tiers with no items now whose previous restore point (read from the repository, not from
    the audit trail) had some: tier → the previous count."""
    try:
        previous = ctx.previous
    except (KryonixError, ValueError) as exc:  # a warning source, never a reason to fail the session
        ctx.report.warn(f"previous restore point unreadable, emptied tiers not checked: {one_line(str(exc), 200)}")
        return {}
    if previous is None:
        return {}
    return {name: previous.tiers[name].items for name, t in tiers.items()
            if t.succeeded and t.items == 0 and name in previous.tiers and previous.tiers[name].items > 0}


def _audit_fields(result: SessionResult) -> dict:
    return {
        "session_id": result.session_id, "backup_type": result.backup_type,
        "size_bytes": result.bytes_processed, "bytes_added": result.bytes_added,
        "snapshot_ids": {name: t.snapshots for name, t in result.tiers.items()} | (
            {"manifest": result.manifest_snapshot} if result.manifest_snapshot else {}),
        "details": {"status": result.status, "tiers": {n: t.status for n, t in result.tiers.items()},
                    "items": {n: t.items for n, t in result.tiers.items()}, "warnings": result.warnings,
                    "consistency_score": result.consistency.get("score"), "consistent": result.consistent},
    }
