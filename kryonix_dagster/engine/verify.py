"""`verify`: is every restore point of a tenant whole and readable?

restic checks the repository's structure (and, with --read-data, every pack's bytes);
on top, every manifest must parse and every snapshot it names must exist. Compliance
snapshots kept after their session expired under a legal hold (engine/retention.py place_hold) are legal holds,
not unfinished sessions. Runs under the tenant's lease, in the frame of `operation.py`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from . import registry
from .config import Settings
from .errors import BadInput, KryonixError, one_line
from .repository_stats import refresh_repository_stats
from .manifest import KIND_TIER, read_manifest, restore_points
from .naming import validate_tenant_id
from .operation import tenant_operation
from .plans import Plan, plan_for
from .repository import Restic
from .retention import legal_hold_ids
from . import locations
from .tenant_repository import open_repository

log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    tenant_id: str
    ok: bool
    read_data: str  # "none", "all" or a subset like "3/7"
    restore_points: int = 0
    problems: list[str] = field(default_factory=list)
    unfinished_sessions: list[str] = field(default_factory=list)
    legal_hold_sessions: list[str] = field(default_factory=list)  # compliance kept past the session
    duration_seconds: float = 0.0

    def to_json(self) -> dict:
        return {"tenant": self.tenant_id, "ok": self.ok, "read_data": self.read_data,
                "restore_points": self.restore_points, "problems": self.problems,
                "unfinished_sessions": self.unfinished_sessions, "legal_hold_sessions": self.legal_hold_sessions,
                "duration_seconds": self.duration_seconds}


def rotating_subset(now: datetime) -> str:
    """A seventh of the data per day of the week: run daily, the whole repository is read weekly."""
    return f"{now.isoweekday()}/7"


def run_verify(settings: Settings, tenant_id: str, read_data: bool = False, subset: str | None = None,
               wait_seconds: float = 0, repository: str = locations.PRIMARY) -> VerifyResult:
    """Under the tenant's lease: `restic check` takes an exclusive lock, which must never meet a
    session's backup or a forget of the same tenant."""
    validate_tenant_id(tenant_id)
    repo = open_repository(settings, tenant_id, repository=repository)
    if repo is None:
        raise BadInput(f"tenant {tenant_id} has never been backed up")
    tenant = registry.get_tenant(settings, tenant_id)
    result = VerifyResult(tenant_id, ok=False, read_data="all" if read_data else (subset or "none"))
    with tenant_operation(settings, tenant_id, "check", wait_seconds=wait_seconds) as op:
        repo.unlock()  # stale locks of killed processes; no live one can exist under the lease
        check = repo.check(read_data=read_data, subset=subset)
        if not check.ok:
            found = check.problems or [check.output]
            result.problems.append(f"restic check: {one_line('; '.join(found), 600)}")
        try:
            _check_restore_points(repo, plan_for(tenant.plano if tenant else None)[0], result)
        except KryonixError as exc:
            result.problems.append(one_line(str(exc)))
        result.ok = not result.problems
        result.duration_seconds = op.seconds
        op.success, op.error = result.ok, "; ".join(result.problems) or None
        op.audit = {"details": {"read_data": result.read_data, "restore_points": result.restore_points,
                                "unfinished_sessions": result.unfinished_sessions,
                                "legal_hold_sessions": result.legal_hold_sessions}}
    try:
        if repository == locations.PRIMARY:
            refresh_repository_stats(settings, tenant_id, repo)
    except Exception as exc:  # statistics only: the verdict stands
        log.warning("tenant %s: repository statistics not refreshed: %s", tenant_id, type(exc).__name__)
    return result


def _check_restore_points(repo: Restic, plan: Plan, result: VerifyResult) -> None:
    """Every manifest parses and names snapshots that exist; sessions without one are either
    legal holds (engine/retention.py place_hold) or unfinished."""
    snapshots = repo.snapshots()
    present = {s.id[:8] for s in snapshots}  # restic 0.14's backup summary gives short ids
    points = restore_points(repo)
    result.restore_points = len(points)
    manifest_sessions = {p.session_id for p in points}
    for point in points:
        try:
            manifest = read_manifest(repo, point)
        except (KryonixError, ValueError) as exc:
            result.problems.append(f"session {point.session_id}: manifest unreadable: {one_line(str(exc), 200)}")
            continue
        for tier, tier_result in manifest.tiers.items():
            for part, snap_id in tier_result.snapshots.items():
                if snap_id[:8] not in present:
                    result.problems.append(f"session {point.session_id}: {tier}/{part} snapshot {snap_id[:8]} is missing")
    orphans = [s for s in snapshots if KIND_TIER in s.tags and s.tag("session") not in manifest_sessions]
    held = legal_hold_ids(repo, plan, snapshots) if orphans else set()
    result.unfinished_sessions = sorted({s.tag("session") for s in orphans if s.id not in held})
    result.legal_hold_sessions = sorted({s.tag("session") for s in orphans if s.id in held} - set(result.unfinished_sessions))
