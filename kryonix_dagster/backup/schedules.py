"""Every plan's incremental and full backups, from the plans table."""
from ..engine.plans import PLANS
from ..scheduling import plan_schedule
from .jobs import backup_batch_job

BACKUP_SCHEDULES = [
    s
    for name, plan in PLANS.items()
    for s in (
        plan_schedule(name, "incremental_backup", plan.incremental_cron, backup_batch_job, "incremental"),
        plan_schedule(name, "full_backup", plan.full_cron, backup_batch_job, "full"),
    )
]
