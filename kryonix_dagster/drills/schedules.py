"""Every plan's restore drills, from the plans table."""
from ..engine.plans import PLANS
from ..scheduling import plan_schedule
from .jobs import drill_job

DRILL_SCHEDULES = [plan_schedule(name, "restore_drill", plan.drill_cron, drill_job) for name, plan in PLANS.items()]
