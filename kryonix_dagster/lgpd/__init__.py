"""LGPD: the per-tenant retention asset and its compliance check, the batch job and daily
schedule that apply the retention rules to the fleet, and the fleet compliance report."""
from dagster import Definitions

from .assets import lgpd_compliance_report, lgpd_retention
from .checks import lgpd_compliance
from .jobs import lgpd_report_job, lgpd_retention_job
from .schedules import lgpd_report_schedule, lgpd_retention_schedule

defs = Definitions(
    assets=[lgpd_retention, lgpd_compliance_report],
    asset_checks=[lgpd_compliance],
    jobs=[lgpd_retention_job, lgpd_report_job],
    schedules=[lgpd_retention_schedule, lgpd_report_schedule],
)

__all__ = ["defs", "lgpd_compliance", "lgpd_compliance_report", "lgpd_report_job", "lgpd_retention",
           "lgpd_retention_job", "lgpd_report_schedule", "lgpd_retention_schedule"]
