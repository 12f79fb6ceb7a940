"""Backup: the per-tenant session asset (every tier and the restore point, with its consistency
check), the one-tenant and batch jobs, and each plan's incremental and full schedules."""
from dagster import Definitions

from .assets import tenant_backup_session
from .jobs import backup_batch_job, backup_tenant_job
from .schedules import BACKUP_SCHEDULES
from ..workers.io import CHUNKS_IO_KEY, event_log_io_manager

defs = Definitions(
    assets=[tenant_backup_session],
    jobs=[backup_tenant_job, backup_batch_job],
    schedules=BACKUP_SCHEDULES,
    resources={CHUNKS_IO_KEY: event_log_io_manager},
)

__all__ = ["BACKUP_SCHEDULES", "backup_batch_job", "backup_tenant_job", "defs", "tenant_backup_session"]
