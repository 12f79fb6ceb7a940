"""Freshness: is every tenant's latest restore point younger than its plan's RPO? As a check per
tenant, and as a sensor that alerts once per stale tenant and once when it is fresh again.

Read per tenant from the audit trail (Dagster's freshness policies are per asset, not per
partition). The sensor's cursor holds the open incidents; an alert no channel took is retried
on the next tick.
"""
import json

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, DefaultSensorStatus,
                     MetadataValue, SensorEvaluationContext, SkipReason, asset_check, sensor)

from ..engine.alerts import Alert
from ..engine.fleet import TenantStatus
from ..backup.metadata import RESTORE_POINT_ASSET
from ..partitions import kryonix_tenants
from ..pitr.sensors import INCIDENT as ARCHIVING_INCIDENT, archiving_alerts
from ..resources import AlertsResource, BackupEngineResource

MAX_ALERTS_PER_TICK = 50  # alerts (stale + resolved) one tick sends at most


def freshness_evaluation(tenant_id: str, status: TenantStatus | None) -> dict:
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


@asset_check(asset=RESTORE_POINT_ASSET, name="freshness", partitions_def=kryonix_tenants,
             description="The latest restore point is younger than the plan's RPO (per tenant, from the audit trail).")
def freshness_check(context: AssetCheckExecutionContext, engine: BackupEngineResource) -> AssetCheckResult:
    tenant_id = context.partition_key
    status = next(iter(engine.statuses(tenant_ids=[tenant_id])), None)
    return AssetCheckResult(**freshness_evaluation(tenant_id, status))


def stale_alert(status: TenantStatus) -> Alert:
    age = "never backed up" if status.age_hours is None else f"latest restore point {status.age_hours:.1f} h old"
    return Alert("stale", f"Backup stale: tenant {status.id}",
                 f"Tenant {status.id} ({status.nome}, plan {status.plano}): {age}, RPO {status.rpo_hours:g} h."
                 + (f" Last attempt failed: {status.last_error}" if status.last_attempt_ok is False else ""),
                 tenant=status.id, fields={"plan": status.plano, "age_hours": status.age_hours,
                                           "rpo_hours": status.rpo_hours, "last_session": status.last_session})


def resolved_alert(status: TenantStatus) -> Alert:
    return Alert("resolved", f"Backup fresh again: tenant {status.id}",
                 f"Tenant {status.id} has a restore point {status.age_hours:.1f} h old (session {status.last_session}).",
                 tenant=status.id, fields={"last_session": status.last_session, "age_hours": status.age_hours})


@sensor(name="stale_backups_sensor", minimum_interval_seconds=300, default_status=DefaultSensorStatus.RUNNING,
        description="Alerts once per tenant whose latest restore point is older than its plan's RPO, and again "
                    "when it is resolved (webhook and e-mail); likewise when WAL archiving (PITR) stops.")
def stale_backups_sensor(context: SensorEvaluationContext, engine: BackupEngineResource, alerts: AlertsResource):
    open_incidents: dict = json.loads(context.cursor) if context.cursor else {}
    stale_ids = engine.stale_tenant_ids()  # the light query; full statuses only for the few alerted
    stale_set = set(stale_ids)
    configured = alerts.channels().configured
    # resolutions first, then new incidents, at most MAX_ALERTS_PER_TICK in all: a fleet-wide
    # outage pages in bounded waves (the rest on the next ticks), and the cursor stays small
    tenant_incidents = sorted(set(open_incidents) - {ARCHIVING_INCIDENT})
    resolving = [t for t in tenant_incidents if t not in stale_set][:MAX_ALERTS_PER_TICK]
    new_stale = [t for t in stale_ids if t not in open_incidents]
    opening = new_stale[:MAX_ALERTS_PER_TICK - len(resolving)]
    statuses = {s.id: s for s in engine.statuses(tenant_ids=resolving + opening)} if resolving or opening else {}
    sent: list[str] = []
    for tenant_id in resolving:
        status = statuses.get(tenant_id)
        if status is not None and status.stale:
            continue  # became stale again between the two queries: the incident stays open
        if status is None or alerts.send(resolved_alert(status)) or not configured:
            del open_incidents[tenant_id]
            sent.append(f"resolved {tenant_id}")
    for tenant_id in opening:
        status = statuses.get(tenant_id)
        if status is None or not status.stale:
            continue
        if alerts.send(stale_alert(status)) or not configured:
            open_incidents[tenant_id] = {"since": status.last_session_at.isoformat() if status.last_session_at else None}
            sent.append(f"stale {tenant_id}")
    sent += archiving_alerts(engine, alerts, open_incidents)  # issue 11: WAL archiving stopped
    context.update_cursor(json.dumps(open_incidents, sort_keys=True))
    waiting = sum(1 for t in new_stale if t not in open_incidents)
    later = f"; {waiting} more stale tenant(s) on the next ticks" if waiting else ""
    if not sent:
        return SkipReason(f"{len(open_incidents)} open stale incident(s), nothing new{later}")
    shown = ", ".join(sent[:20]) + (f" and {len(sent) - 20} more" if len(sent) > 20 else "")
    context.log.info(f"alerts: {shown}{later}")
    return SkipReason(f"alerted: {shown}{later}")
