"""Integrity: the integrity check of every tenant's repository, its batch job and each plan's
schedule."""
from dagster import Definitions

from .checks import integrity_check
from .jobs import check_tenants, integrity_job
from .schedules import INTEGRITY_SCHEDULES

defs = Definitions(asset_checks=[integrity_check], jobs=[integrity_job], schedules=INTEGRITY_SCHEDULES)

__all__ = ["INTEGRITY_SCHEDULES", "check_tenants", "defs", "integrity_check", "integrity_job"]
