"""Retention runs daily for every tenant with backups (each by its own plan), spread over
04:00-07:00: each tick takes the tenants whose retention hour it is (plans.retention_hour)."""
from zoneinfo import ZoneInfo

from dagster import ScheduleEvaluationContext, SkipReason, schedule

from ..engine.plans import RETENTION_CRON, RETENTION_HOURS, retention_hour
from ..resources import PostgresResource
from ..scheduling import TIMEZONE, default_schedule_status, run_requests
from .jobs import retention_job


def tenants_for_hour(tenant_ids: list[str], hour: int | None) -> list[str]:
    """The tenants of one retention tick; a tick without a scheduled time (manual) takes all."""
    if hour is None:
        return tenant_ids
    return [t for t in tenant_ids if retention_hour(t) == hour]


@schedule(name="retention_schedule", cron_schedule=RETENTION_CRON, job=retention_job, execution_timezone=TIMEZONE,
          default_status=default_schedule_status(),
          description="Daily retention (forget + prune) for every tenant with backups, by its plan; "
                      "spread over 04:00-07:00 by tenant")
def retention_schedule(context: ScheduleEvaluationContext, postgres: PostgresResource):
    when = context.scheduled_execution_time
    hour = when.astimezone(ZoneInfo(TIMEZONE)).hour if when else None
    if hour is not None and hour not in RETENTION_HOURS:
        return SkipReason(f"{hour:02d}:00 is outside the retention hours")
    return run_requests(context, retention_job, "retention", tenants_for_hour(postgres.tenant_ids(), hour), None)
