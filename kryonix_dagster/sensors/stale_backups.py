"""Stale backups: an active tenant whose latest restore point is older than its plan's RPO.

Read per tenant from the audit trail (Dagster's freshness policies are per asset, not per
partition). The cursor holds the open incidents, so a tenant alerts once when it goes stale
and once more when it is resolved; an alert no channel took is retried on the next tick.
"""
import json

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from ..engine.alerts import Alert
from ..engine.fleet import tenant_statuses
from ..resources import AlertsResource, BackupEngineResource


def stale_alert(status) -> Alert:
    age = "never backed up" if status.age_hours is None else f"latest restore point {status.age_hours:.1f} h old"
    return Alert("stale", f"Backup stale: tenant {status.id}",
                 f"Tenant {status.id} ({status.nome}, plan {status.plano}): {age}, RPO {status.rpo_hours:g} h."
                 + (f" Last attempt failed: {status.last_error}" if status.last_attempt_ok is False else ""),
                 tenant=status.id, fields={"plan": status.plano, "age_hours": status.age_hours,
                                           "rpo_hours": status.rpo_hours, "last_session": status.last_session})


def resolved_alert(status) -> Alert:
    return Alert("resolved", f"Backup fresh again: tenant {status.id}",
                 f"Tenant {status.id} has a restore point {status.age_hours:.1f} h old (session {status.last_session}).",
                 tenant=status.id, fields={"last_session": status.last_session, "age_hours": status.age_hours})


@sensor(name="stale_backups_sensor", minimum_interval_seconds=300, default_status=DefaultSensorStatus.RUNNING,
        description="Alerts once per tenant whose latest restore point is older than its plan's RPO, and again "
                    "when it is resolved (webhook and e-mail).")
def stale_backups_sensor(context: SensorEvaluationContext, engine: BackupEngineResource, alerts: AlertsResource):
    open_incidents: dict = json.loads(context.cursor) if context.cursor else {}
    statuses = {s.id: s for s in tenant_statuses(engine.settings())}
    sent = []
    for tenant_id, status in sorted(statuses.items()):
        if status.stale and tenant_id not in open_incidents:
            if alerts.send(stale_alert(status)) or not alerts.channels().configured:
                open_incidents[tenant_id] = {"since": status.last_session_at.isoformat() if status.last_session_at else None}
                sent.append(f"stale {tenant_id}")
    for tenant_id in sorted(open_incidents):
        status = statuses.get(tenant_id)
        if status is None or not status.stale:
            if status is None or alerts.send(resolved_alert(status)) or not alerts.channels().configured:
                del open_incidents[tenant_id]
                sent.append(f"resolved {tenant_id}")
    context.update_cursor(json.dumps(open_incidents, sort_keys=True))
    if not sent:
        return SkipReason(f"{len(open_incidents)} open stale incident(s), nothing new")
    context.log.info("alerts: " + ", ".join(sent))
    return SkipReason("alerted: " + ", ".join(sent))
