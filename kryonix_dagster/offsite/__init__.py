"""Off-site: the copy of every restore point to the secondary repository (asset + lag check),
its one-tenant job, and the weekly DR drill from the copy (job, schedule, RTO asset)."""
from dagster import Definitions

from .assets import DR_DRILL_SPEC, offsite_copy, offsite_lag_check
from .jobs import copy_after_session, dr_drill_job, dr_drill_schedule, offsite_copy_job

defs = Definitions(assets=[offsite_copy, DR_DRILL_SPEC], asset_checks=[offsite_lag_check],
                   jobs=[offsite_copy_job, dr_drill_job], schedules=[dr_drill_schedule])

__all__ = ["copy_after_session", "defs", "dr_drill_job", "dr_drill_schedule", "offsite_copy", "offsite_copy_job",
           "offsite_lag_check"]
