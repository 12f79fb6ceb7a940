"""Restore drills: the restore-drill check of every tenant, its batch job and each plan's
schedule."""
from dagster import Definitions

from .checks import restore_drill_check
from .jobs import drill_job, drill_tenants
from .schedules import DRILL_SCHEDULES

defs = Definitions(asset_checks=[restore_drill_check], jobs=[drill_job], schedules=DRILL_SCHEDULES)

__all__ = ["DRILL_SCHEDULES", "defs", "drill_job", "drill_tenants", "restore_drill_check"]
