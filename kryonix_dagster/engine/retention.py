"""Retention by plan, with restic's own GFS semantics deciding.

restic decides which restore points (session manifests) the plan keeps, with the plan's
--keep-daily/weekly/monthly/yearly, --keep-within 48h and --keep-last 1. A session's tier
snapshots live and die with its manifest, so a kept restore point is always whole; every
tier therefore follows the plan's GFS (all snapshots of a session carry the session's
time). The compliance tier follows the plan too (no standing five-year extension: a row would
outlive its LGPD period by years in it); only a legal hold (a `kind=hold` marker snapshot
naming the session, place_hold) keeps its compliance snapshot after its session expired, on every later run too. Other snapshots of unfinished sessions
(no manifest) are removed: forget holds the tenant's lease, and a session that lost its
lease never writes a manifest, so none is in flight. Then restic prunes. An unknown plan
is refused (a dry run shows basic's decision with a warning); so is an unregistered tenant.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from . import registry
from .config import Settings
from .errors import BadInput, OperationFailed, one_line
from .repository_stats import refresh_repository_stats
from .manifest import KIND_MANIFEST, KIND_TIER

KIND_HOLD = "kind=hold"  # a legal hold's marker snapshot (place_hold)
from .naming import validate_tenant_id
from .plans import PLANS, Plan, plan_for
from .repository import Restic, Snapshot
from .operation import tenant_operation
from . import locations
from .tenant_repository import open_repository
from .tiers.compliance import PAST_PERIOD_TAG, TIER as COMPLIANCE

log = logging.getLogger(__name__)


@dataclass
class SessionDecision:
    session_id: str
    time: str
    keep: bool
    reasons: list[str]


@dataclass
class RetentionDecision:
    tenant_id: str
    plan: str
    warning: str | None
    sessions: list[SessionDecision] = field(default_factory=list)
    remove_ids: list[str] = field(default_factory=list)
    tiers: dict[str, dict[str, int]] = field(default_factory=dict)
    unfinished_sessions: list[str] = field(default_factory=list)
    legal_hold_sessions: list[str] = field(default_factory=list)

    @property
    def kept_sessions(self) -> list[SessionDecision]:
        return [s for s in self.sessions if s.keep]

    @property
    def removed_sessions(self) -> list[SessionDecision]:
        return [s for s in self.sessions if not s.keep]

    def to_json(self) -> dict:
        return {
            "tenant": self.tenant_id, "plan": self.plan, "warning": self.warning,
            "restore_points": {"kept": len(self.kept_sessions), "removed": len(self.removed_sessions)},
            "sessions": [s.__dict__ for s in self.sessions], "tiers": self.tiers,
            "unfinished_sessions": self.unfinished_sessions, "legal_hold_sessions": self.legal_hold_sessions,
            "snapshots_removed": len(self.remove_ids),
        }


def _kept_by_policy(repo: Restic, args: list[str], tag: str) -> tuple[set[str], dict[str, list[str]]]:
    """(ids restic keeps, reasons per id) among the snapshots tagged `tag`."""
    groups = repo.forget_policy(args, tags=[tag], group_by="host", dry_run=True)
    kept = {s.id for g in groups for s in g.keep}
    reasons: dict[str, list[str]] = {}
    for group in groups:
        for snap in group.keep:
            reasons[snap.id] = group.reasons.get(snap.id, [])
    return kept, reasons


def held_sessions(snapshots: list[Snapshot]) -> set[str]:
    """Sessions under a legal hold: a `kind=hold` marker snapshot names them (place_hold)."""
    return {s.tag("session") for s in snapshots if KIND_HOLD in s.tags and s.tag("session")}


def place_hold(repo: Restic, session_id: str, reason: str) -> str:
    """A legal hold on a session's compliance snapshot: a small marker snapshot of its own
    (`kind=hold`, `session=`), so no existing snapshot is re-tagged (which would change the id
    its manifest names). Released by forgetting the marker. Returns the marker's id."""
    import json

    body = json.dumps({"session": session_id, "reason": reason,
                       "placed_at": datetime.now(timezone.utc).isoformat()}).encode()
    return repo.backup_stream(iter([body]), "hold.json", [KIND_HOLD, f"session={session_id}"],
                              datetime.now(timezone.utc)).snapshot_id


def legal_hold_ids(repo: Restic, plan: Plan, snapshots: list[Snapshot] | None = None) -> set[str]:
    """Compliance snapshots under a legal hold, whatever became of their session's manifest.
    There is no standing legal period on top of the plan any more: the compliance tier keeps
    only what the plan keeps, because a snapshot kept years past its session keeps rows past
    their LGPD period (docs/lgpd-erasure.md, "Data past their period"). `snapshots` must hold
    the hold markers (the whole listing), or None to list them here."""
    snapshots = repo.snapshots() if snapshots is None else snapshots
    held = held_sessions(snapshots)
    return {s.id for s in snapshots if s.tag("tier") == COMPLIANCE and s.tag("session") in held}


def decide(repo: Restic, tenant_id: str, plan: Plan, warning: str | None,
           snapshots: list[Snapshot] | None = None) -> RetentionDecision:
    """What the plan keeps. A tier snapshot is kept with its kept restore point, or, for the
    compliance tier, while the legal policy holds it; that is decided before "unfinished",
    because a legal hold outlives its session's manifest (the first forget removes the
    manifest, every later one must still keep the hold). Only then is a snapshot whose
    session has no manifest unfinished, and removed: the caller holds the tenant's lease, and
    a session that lost its lease never writes a manifest, so no session is in flight."""
    snapshots = repo.snapshots() if snapshots is None else snapshots
    decision = RetentionDecision(tenant_id, plan.name, warning)
    manifests = [s for s in snapshots if KIND_MANIFEST in s.tags]
    kept_manifests, reasons = _kept_by_policy(repo, plan.forget_args(), KIND_MANIFEST) if manifests else (set(), {})
    live_sessions = {s.tag("session") for s in manifests if s.id in kept_manifests}
    for snap in sorted(manifests, key=lambda s: s.time, reverse=True):
        keep = snap.id in kept_manifests
        decision.sessions.append(SessionDecision(snap.tag("session") or "?", snap.time.isoformat(), keep,
                                                 reasons.get(snap.id, []) if keep else []))
        if not keep:
            decision.remove_ids.append(snap.id)
    known_sessions = {s.tag("session") for s in manifests}
    legal_kept = legal_hold_ids(repo, plan, snapshots)
    counts: dict[str, Counter] = {}
    unfinished, legal = set(), set()
    for snap in snapshots:
        if KIND_TIER not in snap.tags:
            continue
        tier, session = snap.tag("tier") or "?", snap.tag("session")
        if session in live_sessions:
            keep = True
        elif tier == COMPLIANCE and snap.id in legal_kept:
            keep = True
            legal.add(session or "?")
        else:
            keep = False
            if session not in known_sessions:
                unfinished.add(session or "?")
        counts.setdefault(tier, Counter())["keep" if keep else "remove"] += 1
        if not keep:
            decision.remove_ids.append(snap.id)
    decision.tiers = {tier: {"keep": c["keep"], "remove": c["remove"]} for tier, c in sorted(counts.items())}
    decision.unfinished_sessions = sorted(unfinished)
    decision.legal_hold_sessions = sorted(legal)
    return decision


def retention_plan(tenant_id: str, plano: str | None, dry_run: bool) -> tuple[Plan, str | None]:
    """The tenant's plan; an unknown one is refused unless nothing is removed (never prune by a guess)."""
    if plano not in PLANS and not dry_run:
        raise OperationFailed(f"tenant {tenant_id}: unknown plan {plano!r}: forget refuses to prune by a guess; "
                              "set the plan (basic, pro or enterprise) first")
    return plan_for(plano)


def run_forget(settings: Settings, tenant_id: str, dry_run: bool = False, wait_seconds: float = 0,
               repository: str = locations.PRIMARY) -> RetentionDecision:
    """Apply the tenant's plan, under its lease, with an audit row on every path (dry runs excepted).
    `repository=SECONDARY_ADMIN`: the off-site copy, through its admin path (workers cannot delete there)."""
    validate_tenant_id(tenant_id)
    tenant = registry.get_tenant(settings, tenant_id)
    if tenant is None:
        raise BadInput(f"tenant {tenant_id} is not registered: forget applies a registered tenant's plan")
    repo = open_repository(settings, tenant_id, repository=repository)
    if repo is None:
        raise BadInput(f"tenant {tenant_id} has never been backed up")
    with tenant_operation(settings, tenant_id, "forget", wait_seconds=wait_seconds, audit_row=not dry_run) as op:
        plan, warning = retention_plan(tenant_id, tenant.plano, dry_run)
        repo.unlock()
        decision = decide(repo, tenant_id, plan, warning)
        op.audit = {"details": {**decision.to_json(), "sessions": None},
                    "snapshot_ids": {"removed": decision.remove_ids}}
        if not dry_run and decision.remove_ids:
            op.ensure_lease()
            repo.forget_ids(decision.remove_ids)
            repo.prune()
    if not dry_run and repository == locations.PRIMARY:
        try:
            refresh_repository_stats(settings, tenant_id, repo)
        except Exception as exc:  # statistics only: the forget itself is done
            log.warning("tenant %s: repository statistics not refreshed: %s", tenant_id, one_line(str(exc), 200))
    return decision


@dataclass
class RetentionCheck:
    over_retained: list[str]  # sessions the plan would remove
    missing_days: list[str]  # days (UTC) within the plan's daily window without a restore point
    restore_points: int
    plan: str
    warning: str | None
    past_period: list[str] = field(default_factory=list)  # sessions whose data holds a row past its LGPD period

    @property
    def severity(self) -> str:
        if self.over_retained:
            return "ERROR"
        if self.missing_days or not self.restore_points or self.warning:
            return "WARN"
        return "OK"


def check_retention(settings: Settings, tenant_id: str) -> RetentionCheck:
    """Is the repository holding exactly what the plan says? ERROR over-retention, WARN under."""
    tenant = registry.get_tenant(settings, tenant_id)
    plan, warning = plan_for(tenant.plano if tenant else None)
    repo = open_repository(settings, tenant_id)
    if repo is None:
        return RetentionCheck([], [], 0, plan.name, warning)
    snapshots = repo.snapshots()
    decision = decide(repo, tenant_id, plan, warning, snapshots)
    kept = decision.kept_sessions
    days_with_points = {datetime.fromisoformat(s.time).date() for s in kept}
    missing = []
    if kept:
        # gaps inside the plan's daily window, counted back from the newest restore point
        # (a day that has not had its sessions yet is the freshness check's business)
        newest = max(days_with_points)
        oldest = min(datetime.fromisoformat(s.time) for s in decision.sessions).date()
        window = min(plan.keep_daily, (newest - oldest).days + 1)
        for back in range(window):
            day = newest - timedelta(days=back)
            if day not in days_with_points:
                missing.append(day.isoformat())
    return RetentionCheck([s.session_id for s in decision.removed_sessions], missing, len(kept), plan.name, warning,
                          past_period_sessions(snapshots, datetime.now(timezone.utc).date().isoformat()))


def past_period_sessions(snapshots: list[Snapshot], today: str) -> list[str]:
    """Sessions the repository still holds a compliance snapshot of whose `past-period-from`
    day has come: they hold a row past its LGPD period (until the plan or `lgpd apply` plus a
    newer session lets them go). Snapshots taken before the tag existed are not judged."""
    found = set()
    for snap in snapshots:
        day = snap.tag(PAST_PERIOD_TAG) if snap.tag("tier") == COMPLIANCE else None
        if day and day <= today:
            found.add(snap.tag("session") or snap.id)
    return sorted(found)
