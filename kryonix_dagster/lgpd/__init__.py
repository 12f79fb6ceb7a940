"""LGPD: the per-tenant retention asset and its compliance check, the batch job and daily
schedule that apply the retention rules to the fleet, the fleet compliance report, and the
per-tenant `erasure_ledger_applied` check (the erasure itself, --rewrite and off-boarding are
operator commands: `kryonix-backup lgpd erase`, `kryonix-backup tenants offboard`)."""
from dagster import Definitions

from .assets import lgpd_compliance_report, lgpd_retention
from .checks import lgpd_compliance
from .erasure_checks import erasure_ledger_applied, ledger_evaluation
from .jobs import lgpd_report_job, lgpd_retention_job
from .schedules import lgpd_report_schedule, lgpd_retention_schedule

defs = Definitions(
    assets=[lgpd_retention, lgpd_compliance_report],
    asset_checks=[lgpd_compliance, erasure_ledger_applied],
    jobs=[lgpd_retention_job, lgpd_report_job],
    schedules=[lgpd_retention_schedule, lgpd_report_schedule],
)

__all__ = ["defs", "erasure_ledger_applied", "ledger_evaluation", "lgpd_compliance", "lgpd_compliance_report", "lgpd_report_job", "lgpd_retention",
           "lgpd_retention_job", "lgpd_report_schedule", "lgpd_retention_schedule"]
