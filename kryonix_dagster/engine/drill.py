"""Restore drills: prove a restore point restores.

The latest session (or a given one) is restored into the tenant's scratch tenant, whose
names (`naming.scratch_names_for`) no registered tenant can have; the scratch tenant is
never registered, so no schedule picks it up. Each tier is judged by its own drill
comparison (`TierSpec.drill`) against what the session's manifest recorded, and the scratch
tenant is erased whatever happened. The restore itself already verifies table rows and
files against the manifest; the comparisons add object, key and message counts, so a
tampered or damaged session fails the drill. The scratch tenant's lease serialises two
drills of one tenant.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import locations, registry
from .config import Settings
from .erasure import erase_scratch
from .errors import KryonixError, one_line
from .operation import tenant_operation
from .manifest import STATUS_OK, SessionManifest, find_manifest
from .naming import TenantNames, names_for, scratch_names_for, validate_tenant_id
from .restore import restore_tiers, validate_snapshot
from .tenant_repository import open_repository
from .tiers import TIERS
from .tiers.base import DrillContext, RestoreOutcome, TierSpec
from .reporting import NullReporter, Reporter




@dataclass
class DrillResult:
    tenant_id: str
    scratch_id: str
    session_id: str | None
    passed: bool
    compared: dict[str, str] = field(default_factory=dict)  # tier → "ok" or what differed
    error: str | None = None
    duration_seconds: float = 0.0

    def to_json(self) -> dict:
        return self.__dict__.copy()


def drilled_tiers(manifest: SessionManifest, tiers: tuple[TierSpec, ...]) -> list[TierSpec]:
    """The tiers a drill restores: those the session holds, minus those another restored tier brings back."""
    present = [t for t in tiers if (r := manifest.tiers.get(t.name)) is not None and r.status == STATUS_OK]
    names = {t.name for t in present}
    return [t for t in present if t.restored_with not in names]


def compare_tiers(settings: Settings, source: TenantNames, manifest: SessionManifest, scratch: TenantNames,
                  outcomes: dict[str, RestoreOutcome], tiers: tuple[TierSpec, ...]) -> dict[str, str]:
    """Each restored tier judged by its own drill comparison."""
    specs = {t.name: t for t in tiers}
    return {name: specs[name].drill(DrillContext(settings, source, scratch, manifest.tiers[name], outcome))
            for name, outcome in outcomes.items()}


def run_drill(settings: Settings, tenant_id: str, snapshot: str = "latest", report: Reporter | None = None,
              tiers: tuple[TierSpec, ...] = TIERS, wait_seconds: float = 0,
              repository: str = locations.PRIMARY) -> DrillResult:
    """Restore into scratch names, judge every tier, erase the scratch: a failed drill is a
    result (audited), not an exception. It holds the scratch's lease and the tenant's (a
    forget's prune or a repository check must not run under the drill's reads), waiting up to
    `wait_seconds` for them."""
    validate_tenant_id(tenant_id)
    validate_snapshot(snapshot)
    registry.refuse_offboarded(settings, tenant_id)  # never restored again, not even into scratch
    report = report or NullReporter()
    scratch = scratch_names_for(settings, tenant_id)
    result = DrillResult(tenant_id, scratch.tenant_id, None, False)
    try:
        operation = "drill" if repository == locations.PRIMARY else "dr-drill"  # a DR drill: from the copy
        with tenant_operation(settings, scratch.tenant_id, operation, also_lease=(tenant_id,),
                              wait_seconds=wait_seconds, audit_tenant=tenant_id) as op:
            try:
                erase_scratch(settings, scratch)  # what a killed drill may have left
                _drill(settings, tenant_id, snapshot, scratch, tiers, report, result, repository)
            except KryonixError as exc:
                result.error = one_line(str(exc))
            finally:
                _erase_quietly(settings, scratch, report)
                result.duration_seconds = op.seconds
                op.audit = {"session_id": result.session_id,
                            "details": {"scratch": scratch.tenant_id, "compared": result.compared}}
                if not result.passed:
                    op.fail(result.error or "drill failed")
    except KryonixError as exc:  # the scratch lease was refused, or an unexpected error mapped by the frame
        result.error = one_line(str(exc))
    return result


def _drill(settings: Settings, tenant_id: str, snapshot: str, scratch: TenantNames, tiers: tuple[TierSpec, ...],
           report: Reporter, result: DrillResult, repository: str = locations.PRIMARY) -> None:
    registry.refuse_offboarded(settings, tenant_id)  # off-boarded while the drill waited for the leases
    repo = open_repository(settings, tenant_id, repository=repository)
    manifest = find_manifest(repo, snapshot) if repo else None
    if manifest is None:
        raise KryonixError(f"tenant {tenant_id}: no restore point to drill")
    result.session_id = manifest.session_id
    source = names_for(settings, tenant_id)
    outcomes = restore_tiers(settings, source, scratch, repo, manifest, drilled_tiers(manifest, tiers), report,
                             preflight=False)
    result.compared = compare_tiers(settings, source, manifest, scratch, outcomes, tiers)
    result.passed = all(v == "ok" for v in result.compared.values())
    if not result.passed:
        result.error = "; ".join(f"{t}: {v}" for t, v in result.compared.items() if v != "ok")


def _erase_quietly(settings: Settings, scratch: TenantNames, report: Reporter) -> None:
    try:
        erase_scratch(settings, scratch)
    except Exception as exc:  # the drill's verdict stands; the next drill erases the rest first
        report.warn(f"scratch tenant {scratch.tenant_id} not fully erased: {one_line(str(exc), 200)}")
