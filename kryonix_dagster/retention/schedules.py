"""Retention runs daily for every tenant with backups (each by its own plan)."""
from dagster import ScheduleEvaluationContext, schedule

from ..engine.plans import RETENTION_CRON
from ..resources import PostgresResource
from ..scheduling import TIMEZONE, default_schedule_status, run_requests
from .jobs import retention_job


@schedule(name="retention_schedule", cron_schedule=RETENTION_CRON, job=retention_job, execution_timezone=TIMEZONE,
          default_status=default_schedule_status(),
          description="Daily retention (forget + prune) for every tenant with backups, by its plan")
def retention_schedule(context: ScheduleEvaluationContext, postgres: PostgresResource):
    return run_requests(context, retention_job, "retention", postgres.tenant_ids(), None)
