"""Retention: the retention check of every tenant's restore points, the forget + prune batch
job that applies each plan, and its daily schedule."""
from dagster import Definitions

from .checks import retention_check, retention_evaluation
from .jobs import forget_tenants, retention_job
from .schedules import retention_schedule

defs = Definitions(asset_checks=[retention_check], jobs=[retention_job], schedules=[retention_schedule])

__all__ = ["defs", "forget_tenants", "retention_check", "retention_evaluation", "retention_job", "retention_schedule"]
