"""`verify`: is every restore point of a tenant whole and readable?

restic checks the repository's structure (and, with --read-data, every pack's bytes);
on top, every manifest must parse and every snapshot it names must exist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import audit
from .config import Settings
from .errors import BadInput, KryonixError, one_line
from .repository_stats import refresh_repository_stats
from .manifest import KIND_TIER, read_manifest, restore_points
from .naming import validate_tenant_id
from .tenant_repository import open_repository
from .tiers.base import Stopwatch


@dataclass
class VerifyResult:
    tenant_id: str
    ok: bool
    read_data: str  # "none", "all" or a subset like "3/7"
    restore_points: int = 0
    problems: list[str] = field(default_factory=list)
    unfinished_sessions: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0

    def to_json(self) -> dict:
        return {"tenant": self.tenant_id, "ok": self.ok, "read_data": self.read_data,
                "restore_points": self.restore_points, "problems": self.problems,
                "unfinished_sessions": self.unfinished_sessions, "duration_seconds": self.duration_seconds}


def rotating_subset(now: datetime) -> str:
    """A seventh of the data per day of the week: run daily, the whole repository is read weekly."""
    return f"{now.isoweekday()}/7"


def run_verify(settings: Settings, tenant_id: str, read_data: bool = False, subset: str | None = None) -> VerifyResult:
    validate_tenant_id(tenant_id)
    repo = open_repository(settings, tenant_id)
    if repo is None:
        raise BadInput(f"tenant {tenant_id} has never been backed up")
    started = datetime.now(timezone.utc)
    watch = Stopwatch()
    result = VerifyResult(tenant_id, ok=False, read_data="all" if read_data else (subset or "none"))
    check = repo.check(read_data=read_data, subset=subset)
    if not check.ok:
        result.problems.append(f"restic check: {one_line(check.output, 600)}")
    try:
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
        result.unfinished_sessions = sorted({
            s.tag("session") for s in snapshots
            if KIND_TIER in s.tags and s.tag("session") not in manifest_sessions
        })
    except KryonixError as exc:
        result.problems.append(one_line(str(exc)))
    result.ok = not result.problems
    result.duration_seconds = watch.seconds
    try:
        refresh_repository_stats(settings, tenant_id, repo)
    except KryonixError:
        pass  # statistics only
    audit.record(settings, audit.AuditRecord(
        cliente_id=tenant_id, operation="check", started_at=started, success=result.ok,
        finished_at=datetime.now(timezone.utc), duration_seconds=result.duration_seconds,
        error="; ".join(result.problems) or None,
        details={"read_data": result.read_data, "restore_points": result.restore_points},
    ))
    return result
