"""LGPD retention daily for every registered tenant, in batches; the compliance report after it."""
from dagster import ScheduleDefinition, ScheduleEvaluationContext, schedule

from ..resources import PostgresResource
from ..scheduling import TIMEZONE, default_schedule_status, run_requests
from .jobs import lgpd_report_job, lgpd_retention_job

LGPD_RETENTION_CRON = "30 4 * * *"  # after the plans' retention (04:00)
LGPD_REPORT_CRON = "30 6 * * *"


@schedule(name="lgpd_retention_schedule", cron_schedule=LGPD_RETENTION_CRON, job=lgpd_retention_job,
          execution_timezone=TIMEZONE, default_status=default_schedule_status(),
          description="Daily LGPD retention (anonymise/delete personal data past its period), every registered tenant")
def lgpd_retention_schedule(context: ScheduleEvaluationContext, postgres: PostgresResource):
    return run_requests(context, lgpd_retention_job, "lgpd_retention", postgres.tenant_ids(), None)


lgpd_report_schedule = ScheduleDefinition(name="lgpd_report_schedule", job=lgpd_report_job,
                                          cron_schedule=LGPD_REPORT_CRON, execution_timezone=TIMEZONE,
                                          default_status=default_schedule_status(),
                                          description="The fleet's LGPD compliance report, daily after retention")
