"""Freshness: is every tenant's latest restore point younger than its plan's RPO? As a check per
tenant, and as a sensor that alerts once per stale tenant and once when it is fresh again, all of
a tick's news in one message.

Read per tenant from the audit trail (Dagster's freshness policies are per asset, not per
partition). The sensor's cursor holds the open incidents; an alert no channel took is retried
on the next tick.
"""
import json

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, DefaultSensorStatus,
                     MetadataValue, SensorEvaluationContext, SkipReason, asset_check, sensor)

from ..engine.alerts import MAX_IDS_SHOWN, NO_CHANNEL, Alert, first_ids
from ..engine.errors import one_line
from ..engine.fleet import TenantStatus
from ..backup.metadata import RESTORE_POINT_ASSET
from ..partitions import kryonix_tenants
from ..pitr.sensors import INCIDENT as ARCHIVING_INCIDENT, ArchivingChange, archiving_change
from ..resources import AlertsResource, BackupEngineResource

MAX_ALERTS_PER_TICK = 50  # tenants (stale + resolved) one tick reports at most (in one message)
OFFSITE_INCIDENT = "__offsite_lag__"  # the lagging tenants, as the last tick saw them (not a tenant id)


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


def stale_line(status: TenantStatus) -> str:
    age = "never backed up" if status.age_hours is None else f"latest restore point {status.age_hours:.1f} h old"
    return (f"{status.id} ({status.nome}, plan {status.plano}): {age}, RPO {status.rpo_hours:g} h"
            + (f"; last attempt failed: {one_line(status.last_error or '', 200)}" if status.last_attempt_ok is False else ""))


def stale_alert(status: TenantStatus) -> Alert:
    """One stale tenant on its own (the sensor sends `tick_alert`, one message for all of them)."""
    return Alert("stale", f"Backup stale: tenant {status.id}", f"Backup stale: {stale_line(status)}.", tenant=status.id,
                 fields={"plan": status.plano, "age_hours": status.age_hours, "rpo_hours": status.rpo_hours,
                         "last_session": status.last_session})


def tick_alert(stale: list[TenantStatus], resolved: list[str], archiving: ArchivingChange | None,
               lag_new: list[str], lag_gone: list[str], lagging: int) -> Alert:
    """The sensor's one message per tick however many tenants: counts, and the first ids with their reasons."""
    heads, lines = [], []
    if stale:
        heads.append(f"{len(stale)} tenant(s) stale")
        lines.append(f"Backup stale: {len(stale)} tenant(s): {first_ids([s.id for s in stale])}")
        lines += [f"- {stale_line(s)}" for s in stale[:MAX_IDS_SHOWN]]
    if resolved:
        heads.append(f"{len(resolved)} fresh again")
        lines.append(f"Backup fresh again: {len(resolved)} tenant(s): {first_ids(resolved)}")
    if archiving is not None:
        heads.append(f"WAL {archiving.summary}")
        lines.append(archiving.line)
    if lag_new:
        heads.append(f"{len(lag_new)} off-site copy lagging")
        lines.append(f"Off-site copy lagging beyond the plan's limit: {len(lag_new)} new tenant(s): {first_ids(lag_new)}"
                     f" ({lagging} lagging in all); `kryonix-backup copy` catches up.")
    if lag_gone:
        heads.append(f"{len(lag_gone)} off-site copy caught up")
        lines.append(f"Off-site copy caught up: {len(lag_gone)} tenant(s): {first_ids(lag_gone)}")
    bad = bool(stale or lag_new or (archiving and archiving.opened))
    return Alert("stale" if bad else "resolved", "kryonix-backup: " + ", ".join(heads), "\n".join(lines),
                 fields={"stale": [s.id for s in stale], "resolved": resolved, "offsite_lagging": lag_new})


@sensor(name="stale_backups_sensor", minimum_interval_seconds=300, default_status=DefaultSensorStatus.RUNNING,
        description="One message per tick (however many tenants): tenants whose latest restore point is older than "
                    "their plan's RPO and those fresh again, WAL archiving (PITR) stopped or resumed, off-site copies "
                    "lagging or caught up; to every KRYONIX_NOTIFY_URLS channel.")
def stale_backups_sensor(context: SensorEvaluationContext, engine: BackupEngineResource, alerts: AlertsResource):
    open_incidents: dict = json.loads(context.cursor) if context.cursor else {}
    stale_ids = engine.stale_tenant_ids()  # the light query; full statuses only for the few alerted
    stale_set = set(stale_ids)
    # resolutions first, then new incidents, at most MAX_ALERTS_PER_TICK tenants in all: a fleet-wide
    # outage is told in bounded waves (the rest on the next ticks), and the cursor stays small
    tenant_incidents = sorted(set(open_incidents) - {ARCHIVING_INCIDENT, OFFSITE_INCIDENT})
    resolving = [t for t in tenant_incidents if t not in stale_set][:MAX_ALERTS_PER_TICK]
    new_stale = [t for t in stale_ids if t not in open_incidents]
    opening = new_stale[:MAX_ALERTS_PER_TICK - len(resolving)]
    statuses = {s.id: s for s in engine.statuses(tenant_ids=resolving + opening)} if resolving or opening else {}
    after = dict(open_incidents)
    resolved = []
    for tenant_id in resolving:
        status = statuses.get(tenant_id)
        if status is not None and status.stale:
            continue  # became stale again between the two queries: the incident stays open
        del after[tenant_id]
        resolved.append(tenant_id)
    stale = [statuses[t] for t in opening if t in statuses and statuses[t].stale]
    for status in stale:
        after[status.id] = {"since": status.last_session_at.isoformat() if status.last_session_at else None}
    archiving = archiving_change(engine, open_incidents)  # issue 11: WAL archiving stopped
    if archiving is not None:
        archiving.apply(after)
    lagging = sorted(lag.tenant_id for lag in engine.offsite_lags() if not lag.ok)
    was_lagging = open_incidents.get(OFFSITE_INCIDENT, [])
    lag_new = [t for t in lagging if t not in was_lagging]
    lag_gone = [t for t in was_lagging if t not in lagging]
    if lagging:
        after[OFFSITE_INCIDENT] = lagging
    else:
        after.pop(OFFSITE_INCIDENT, None)
    waiting = sum(1 for t in new_stale if t not in after)
    later = f"; {waiting} more stale tenant(s) on the next ticks" if waiting else ""
    if not (stale or resolved or archiving or lag_new or lag_gone):
        context.update_cursor(json.dumps(after, sort_keys=True))  # (a lagging tenant's set may shrink quietly)
        return SkipReason(f"{len(after)} open incident(s), nothing new{later}")
    alert = tick_alert(stale, resolved, archiving, lag_new, lag_gone, len(lagging))
    if not alerts.configured():
        context.log.warning(f"{NO_CHANNEL}: alert not sent: {alert.title}\n{alert.text}")
        context.update_cursor(json.dumps(after, sort_keys=True))  # said in the log; not repeated every tick
        return SkipReason(f"{NO_CHANNEL}: not sent: {alert.title}{later}")
    delivered = alerts.send(alert)
    if not delivered:  # every channel failed: the same incidents again on the next tick
        context.log.error(f"alert not delivered (every channel failed), retried next tick: {alert.title}\n{alert.text}")
        return SkipReason(f"alert not delivered: {alert.title}{later}")
    context.log.info(f"alert sent to {', '.join(delivered)}: {alert.title}\n{alert.text}")
    context.update_cursor(json.dumps(after, sort_keys=True))
    return SkipReason(f"alerted: {alert.title}{later}")
