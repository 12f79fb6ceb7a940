"""Every plan's integrity checks, from the plans table."""
from ..engine.plans import PLANS
from ..scheduling import plan_schedule
from .jobs import integrity_job

INTEGRITY_SCHEDULES = [plan_schedule(name, "integrity", plan.integrity_cron, integrity_job)
                       for name, plan in PLANS.items()]
