"""The per-tenant checks as Dagster check results (passed, severity, metadata), shared by the
partitioned asset checks and by the batch jobs that run them for many tenants at once."""
from __future__ import annotations

from datetime import datetime, timezone

from dagster import AssetCheckSeverity, MetadataValue

from .engine import fleet
from .engine.config import Settings
from .engine.drill import run_drill
from .engine.errors import KryonixError, one_line
from .engine.retention import check_retention
from .engine.verify import rotating_subset, run_verify

SEVERITY = {"ERROR": AssetCheckSeverity.ERROR, "WARN": AssetCheckSeverity.WARN}


def retention(settings: Settings, tenant_id: str) -> dict:
    result = check_retention(settings, tenant_id)
    severity = result.severity
    text = {"ERROR": f"{len(result.over_retained)} restore point(s) kept beyond the {result.plan} plan",
            "WARN": (result.warning or (f"no restore point for {', '.join(result.missing_days)}" if result.missing_days
                                        else "no restore points")),
            "OK": f"{result.restore_points} restore points, as the {result.plan} plan says"}[severity]
    return {
        "passed": severity == "OK",
        "severity": SEVERITY.get(severity, AssetCheckSeverity.WARN),
        "description": f"tenant {tenant_id}: {text}",
        "metadata": {
            "plan": result.plan, "restore_points": MetadataValue.int(result.restore_points),
            "over_retained": MetadataValue.json(result.over_retained),
            "missing_days": MetadataValue.json(result.missing_days),
            "plan_warning": result.warning or "",
        },
    }


def freshness(settings: Settings, tenant_id: str, now: datetime | None = None) -> dict:
    status = next((s for s in fleet.tenant_statuses(settings, now) if s.id == tenant_id), None)
    if status is None:
        return {"passed": False, "severity": AssetCheckSeverity.WARN,
                "description": f"tenant {tenant_id} is not registered", "metadata": {}}
    age = status.age_hours
    text = ("never backed up" if age is None else f"latest restore point {age:.1f} h old (RPO {status.rpo_hours:g} h)")
    return {
        "passed": not status.stale,
        "severity": AssetCheckSeverity.ERROR,
        "description": f"tenant {tenant_id}: {text}" + ("" if status.status == "ativo" else " (inactive)"),
        "metadata": {
            "age_hours": MetadataValue.float(float(age if age is not None else -1)),
            "rpo_hours": MetadataValue.float(float(status.rpo_hours)),
            "last_session": status.last_session or "", "plan": status.plano, "status": status.status,
        },
    }


def integrity(settings: Settings, tenant_id: str, subset: str | None = None) -> dict:
    subset = subset or rotating_subset(datetime.now(timezone.utc))
    try:
        result = run_verify(settings, tenant_id, subset=subset)
    except KryonixError as exc:
        return {"passed": False, "severity": AssetCheckSeverity.ERROR,
                "description": f"tenant {tenant_id}: {one_line(str(exc))}", "metadata": {"read_data_subset": subset}}
    return {
        "passed": result.ok,
        "severity": AssetCheckSeverity.ERROR,
        "description": f"tenant {tenant_id}: " + ("repository intact" if result.ok else "; ".join(result.problems)),
        "metadata": {
            "read_data_subset": subset, "restore_points": MetadataValue.int(result.restore_points),
            "problems": MetadataValue.json(result.problems),
            "unfinished_sessions": MetadataValue.int(len(result.unfinished_sessions)),
            "duration_seconds": MetadataValue.float(float(result.duration_seconds)),
        },
    }


def restore_drill(settings: Settings, tenant_id: str, report=None) -> dict:
    result = run_drill(settings, tenant_id, report=report)
    return {
        "passed": result.passed,
        "severity": AssetCheckSeverity.ERROR,
        "description": f"tenant {tenant_id}: session {result.session_id} "
                       + ("restored and matched its manifest" if result.passed else f"failed the drill: {result.error}"),
        "metadata": {
            "session": result.session_id or "", "scratch_tenant": result.scratch_id,
            "compared": MetadataValue.json(result.compared),
            "duration_seconds": MetadataValue.float(float(result.duration_seconds)),
        },
    }


CHECKS = {"retention": retention, "freshness": freshness, "integrity": integrity, "restore_drill": restore_drill}
