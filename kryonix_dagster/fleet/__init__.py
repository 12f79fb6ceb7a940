"""Fleet: the whole fleet at a glance and its alarms. The fleet report (asset, job, hourly
schedule), freshness (check per tenant, stale-backups sensor), failed-run alerts, the sensor
that keeps tenant partitions equal to the registry, the job that runs every check of one tenant,
the daily digest (fleet_digest_sensor) and the backup batches' summaries (batch_summary.py)."""
from dagster import Definitions

from .batch_summary import backup_batch_success_sensor
from .digest import fleet_digest_sensor
from .failed_runs import failed_runs_sensor
from .freshness import freshness_check, stale_backups_sensor
from .report import fleet_backup_report, fleet_report_job, fleet_report_schedule
from .tenant_checks import TENANT_CHECKS, tenant_checks_job
from .tenant_partitions import tenant_partitions_sensor

defs = Definitions(
    assets=[fleet_backup_report],
    asset_checks=[freshness_check],
    jobs=[fleet_report_job, tenant_checks_job],
    schedules=[fleet_report_schedule],
    sensors=[tenant_partitions_sensor, stale_backups_sensor, failed_runs_sensor, backup_batch_success_sensor,
             fleet_digest_sensor],
)

__all__ = ["TENANT_CHECKS", "backup_batch_success_sensor", "defs", "failed_runs_sensor", "fleet_backup_report", "fleet_report_job",
           "fleet_digest_sensor", "fleet_report_schedule", "freshness_check", "stale_backups_sensor", "tenant_checks_job",
           "tenant_partitions_sensor"]
