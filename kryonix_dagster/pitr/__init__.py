"""PITR: the cluster's pgBackRest base backups (one non-partitioned asset), its archiving and
window checks, and the weekly full / daily differential schedules. The archiving alert is sent
by the stale sensor (fleet/freshness.py) through `sensors.archiving_change`."""
from dagster import Definitions

from .assets import pitr_base_backup, wal_archiving_check, window_covers_plans_check
from .jobs import PITR_SCHEDULES, pitr_base_backup_job

defs = Definitions(assets=[pitr_base_backup], asset_checks=[wal_archiving_check, window_covers_plans_check],
                   jobs=[pitr_base_backup_job], schedules=PITR_SCHEDULES)

__all__ = ["PITR_SCHEDULES", "defs", "pitr_base_backup", "pitr_base_backup_job", "wal_archiving_check",
           "window_covers_plans_check"]
