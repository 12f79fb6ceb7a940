"""The one Definitions object of the project: it only gathers."""
from dagster import Definitions

from .assets import fleet_backup_report, tenant_backup_session
from .batches import BATCH_JOBS
from .checks import TENANT_CHECKS
from .jobs import backup_tenant_job, fleet_report_job, tenant_checks_job
from .resources import resources_from_env
from .schedules import SCHEDULES
from .sensors import failed_runs_sensor, stale_backups_sensor, tenant_partitions_sensor

defs = Definitions(
    assets=[tenant_backup_session, fleet_backup_report],
    asset_checks=TENANT_CHECKS,
    jobs=[backup_tenant_job, tenant_checks_job, fleet_report_job, *BATCH_JOBS],
    schedules=SCHEDULES,
    sensors=[tenant_partitions_sensor, stale_backups_sensor, failed_runs_sensor],
    resources=resources_from_env(),
)
