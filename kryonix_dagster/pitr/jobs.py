"""The base-backup job and its schedules: full weekly, differential the other days (plans.py)."""
from dagster import AssetSelection, ScheduleDefinition, define_asset_job

from ..engine.plans import PITR_DIFF_CRON, PITR_FULL_CRON
from ..scheduling import TIMEZONE, default_schedule_status
from .assets import PITR_ASSET

pitr_base_backup_job = define_asset_job(
    "pitr_base_backup_job", selection=AssetSelection.assets(PITR_ASSET),
    description="A pgBackRest base backup of the tenants' cluster, then its archiving and window checks.")


def _schedule(name: str, cron: str, backup_type: str, what: str) -> ScheduleDefinition:
    return ScheduleDefinition(
        name=name, cron_schedule=cron, job=pitr_base_backup_job, execution_timezone=TIMEZONE,
        default_status=default_schedule_status(), description=what,
        run_config={"ops": {PITR_ASSET: {"config": {"backup_type": backup_type}}}})


PITR_SCHEDULES = [
    _schedule("pitr_full_backup_schedule", PITR_FULL_CRON, "full", "Weekly full pgBackRest base backup"),
    _schedule("pitr_diff_backup_schedule", PITR_DIFF_CRON, "diff", "Daily differential pgBackRest base backup"),
]
