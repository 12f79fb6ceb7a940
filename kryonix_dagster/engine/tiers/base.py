"""What every tier receives and returns. Each tier module offers `backup(ctx)` and
`restore(ctx)` and ends with its `SPEC`: everything the session, the restore, the drill and
the Dagster layer need to know about the tier, so a tier is one module plus one line in
`tiers.TIERS`. The engine never imports Dagster: asset keys and kinds are plain strings."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from ..config import Settings
from ..errors import OperationFailed
from ..manifest import SessionManifest, TierResult, read_manifest, restore_points
from ..naming import TenantNames
from ..registry import Tenant
from ..reporting import Reporter
from ..repository import BackupProgress, Restic


@dataclass
class BackupContext:
    settings: Settings
    tenant: Tenant
    names: TenantNames
    repo: Restic
    session_id: str
    session_time: datetime
    backup_type: str  # full | incremental
    report: Reporter
    captured: dict = field(default_factory=dict)  # what tiers saw, for the consistency rules
    _previous: list = field(default_factory=list, repr=False)

    def restic_progress(self, task: str) -> Callable[[BackupProgress], None]:
        def forward(p: BackupProgress) -> None:
            self.report.progress(task, p.bytes_done, p.total_bytes)
        return forward

    @property
    def previous(self) -> SessionManifest | None:
        """The latest restore point's manifest (read once, on first use, by incremental tiers)."""
        if not self._previous:
            points = restore_points(self.repo)
            self._previous.append(read_manifest(self.repo, points[0]) if points else None)
        return self._previous[0]

    def previous_tier(self, tier: str) -> TierResult | None:
        previous = self.previous if self.backup_type == "incremental" else None
        return previous.tiers.get(tier) if previous else None


@dataclass
class RestoreContext:
    settings: Settings
    source: TenantNames
    target: TenantNames
    repo: Restic  # the source tenant's repository
    manifest: SessionManifest
    result: TierResult  # this tier's entry of the manifest
    report: Reporter
    schema: str | None = None  # PostgreSQL only: restore one module schema
    erasure: object | None = None  # lgpd.reapply.ErasureFilter: the ledger re-applied to staged data

    def reapply(self, tier: str, staged) -> dict:
        """Re-apply the erasure ledger to this tier's staged data, in place (engine/lgpd/reapply.py);
        what it removed, for the tier's outcome details."""
        if self.erasure is None:
            return {}
        from ..lgpd.reapply import reapply_staged
        return reapply_staged(self, tier, staged)

    @property
    def into_other(self) -> bool:
        return self.source.tenant_id != self.target.tenant_id


def verified_stream(ctx: "RestoreContext", part: str, filename: str, where: str) -> bytes:
    """A tier's stream snapshot, refused unless it matches the sha256 its manifest recorded
    (a manifest without one is refused too): nothing live is touched before this passes."""
    expected = ctx.result.checksums.get("stream_sha256")
    if not expected:
        raise OperationFailed(f"{where}: the manifest records no checksum for the snapshot; not restoring it")
    data = ctx.repo.dump_bytes(ctx.result.snapshots[part], f"/{filename}")
    if hashlib.sha256(data).hexdigest() != expected:
        raise OperationFailed(f"{where}: snapshot does not match its manifest checksum; nothing was changed")
    return data


@dataclass
class RestoreOutcome:
    tier: str
    restored: int = 0  # rows, objects, keys, messages or files
    removed: int = 0  # keys, objects, messages or files the restore point lacks, deleted by the restore
    connections_terminated: int = 0
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DrillContext:
    """What a tier's drill comparison receives after the restore into the scratch tenant."""
    settings: Settings
    source: TenantNames  # the drilled tenant
    scratch: TenantNames  # where the drill restored it
    recorded: TierResult  # this tier's entry of the session's manifest
    outcome: RestoreOutcome  # what the restore into the scratch tenant did


DrillComparison = Callable[[DrillContext], str]  # "ok", or what differed


def verified_by_restore(_check: DrillContext) -> str:
    """For tiers whose restore already verifies every item against the manifest."""
    return "ok"


# (phase, tiers run in parallel within it, a failure stops the session), in order
PHASES: tuple[tuple[str, bool, bool], ...] = (
    ("foundation", True, True),
    ("storage", False, True),
    ("messaging", False, False),
    ("application", False, False),
    ("compliance", False, False),
)
PHASE_NAMES = tuple(p[0] for p in PHASES)


@dataclass(frozen=True)
class TierSpec:
    name: str
    phase: str  # one of PHASE_NAMES
    critical: bool  # a failure stops the session and leaves no restore point
    service: str  # which health check it depends on
    backup: Callable[[BackupContext], TierResult]
    restore: Callable[[RestoreContext], RestoreOutcome]
    asset_key: str = ""  # the Dagster asset; defaults to "{name}_backup"
    kinds: tuple[str, ...] = ("restic",)  # Dagster kinds shown in the UI
    description: str = ""  # for operators, on the asset
    pool: str | None = None  # concurrency pool of the service it loads (none: not throttled)
    drill: DrillComparison = verified_by_restore  # how a restore drill judges this tier
    restored_with: str | None = None  # a tier whose restore already brings this one back

    def __post_init__(self) -> None:
        if self.phase not in PHASE_NAMES:
            raise ValueError(f"tier {self.name}: unknown phase {self.phase!r}, expected one of {', '.join(PHASE_NAMES)}")
        if not self.asset_key:
            object.__setattr__(self, "asset_key", f"{self.name}_backup")
