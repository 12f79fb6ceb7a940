"""Failed runs: alert with the tenant(s), the tier(s) and the error."""
from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from ..engine.alerts import Alert, send_logged
from ..engine.errors import one_line
from ..resources import AlertsResource
from .batch_summary import BATCH_JOB, batch_alert


def _failure_details(context: RunFailureSensorContext) -> tuple[list[str], dict, str]:
    """(tenants, failed tiers or tenants, error) from the run's tags and step failures."""
    run = context.dagster_run
    tenants = [run.tags["dagster/partition"]] if "dagster/partition" in run.tags else []
    details: dict = {}
    errors = []
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        if user is not None:
            meta = {k: v.value for k, v in (user.metadata or {}).items()}
            if isinstance(meta.get("tenant"), str) and meta["tenant"] not in tenants:
                tenants.append(meta["tenant"])
            details.update(meta.get("failed_tiers") or {})
            for tenant in (meta.get("failed_tenants") or {}):
                if tenant not in tenants:
                    tenants.append(tenant)
            details.update(meta.get("failed_tenants") or {})
            errors.append(user.description or "")
        elif data is not None and getattr(data, "error", None) is not None:
            errors.append(data.error.message)
    return tenants, details, one_line(" | ".join(e for e in errors if e) or context.failure_event.message or "", 1000)


@run_failure_sensor(name="failed_runs_sensor", default_status=DefaultSensorStatus.RUNNING,
                    description="Alerts on every failed run with its tenant(s), tier(s) and error; a backup batch "
                                "with its summary (total, succeeded, failed, each failed tenant's reason).")
def failed_runs_sensor(context: RunFailureSensorContext, alerts: AlertsResource):
    run = context.dagster_run
    if run.job_name == BATCH_JOB:  # a backup batch: its one summary, every failed tenant with its reason
        summary = batch_alert(context.instance, run)
        if summary.fields["failed"]:  # (else the run failed before or beside its tenants: the generic alert)
            send_logged(context.log, alerts, summary)
            return
    tenants, details, error = _failure_details(context)
    who = ", ".join(tenants) or "(no tenant)"
    text = f"Run {run.run_id[:8]} of {run.job_name} failed for tenant(s) {who}: {error}"
    if details:
        text += "\n" + "\n".join(f"- {k}: {one_line(str(v), 300)}" for k, v in details.items())
    alert = Alert("run_failed", f"Backup run failed: {who}", text, tenant=tenants[0] if len(tenants) == 1 else None,
                  fields={"run_id": run.run_id, "job": run.job_name, "tenants": tenants, "failed": details})
    send_logged(context.log, alerts, alert)

