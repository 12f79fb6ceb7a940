"""Schedules by plan, built from the plans table: each requests runs only for the active
tenants of its plan, in batches, tagged with the plan so the run queue can throttle per plan.
(`build_schedule_from_partitioned_job` refuses dynamic partitions, hence plain @schedules.)"""
import os

from dagster import RunRequest, ScheduleDefinition, ScheduleEvaluationContext, SkipReason, schedule

from .batches import backup_batch_job, drill_job, integrity_job, retention_job
from .jobs import fleet_report_job
from .engine.plans import PLANS, RETENTION_CRON, plan_for
from .resources import PostgresResource

BATCH_SIZE = int(os.environ.get("KRYONIX_BATCH_SIZE", "25"))
TIMEZONE = os.environ.get("KRYONIX_SCHEDULE_TIMEZONE", "America/Sao_Paulo")
OPS = {backup_batch_job.name: "backup_tenants", retention_job.name: "forget_tenants",
       integrity_job.name: "check_tenants", drill_job.name: "drill_tenants"}


def batches(tenant_ids: list[str], size: int = BATCH_SIZE) -> list[list[str]]:
    return [tenant_ids[i:i + size] for i in range(0, len(tenant_ids), size)]


def run_requests(context: ScheduleEvaluationContext, job_name: str, kind: str, tenant_ids: list[str],
                 plan: str | None, backup_type: str | None = None):
    if not tenant_ids:
        return SkipReason(f"no active tenants{' on plan ' + plan if plan else ''}")
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M") if context.scheduled_execution_time else "manual"
    config = {"backup_type": backup_type} if backup_type else {}
    tags = {"kryonix/kind": kind, **({"kryonix/plan": plan} if plan else {})}
    return [
        RunRequest(
            run_key=f"{kind}-{plan or 'all'}-{tick}-{n}",
            run_config={"ops": {OPS[job_name]: {"config": {"tenants": batch, **config}}}},
            tags={**tags, "kryonix/batch": f"{n + 1}/{len(batches(tenant_ids))}"},
        )
        for n, batch in enumerate(batches(tenant_ids))
    ]


def plan_schedule(plan: str, kind: str, cron: str, job, backup_type: str | None = None):
    @schedule(name=f"{plan}_{kind}_schedule", cron_schedule=cron, job=job, execution_timezone=TIMEZONE,
              description=f"{kind.replace('_', ' ')} for the active tenants of the {plan} plan ({cron})")
    def _schedule(context: ScheduleEvaluationContext, postgres: PostgresResource):
        # unknown plans fall back to basic, so the basic schedules take those tenants too
        tenants = [t.id for t in postgres.tenants(status="ativo") if plan_for(t.plano)[0].name == plan]
        return run_requests(context, job.name, kind, tenants, plan, backup_type)

    return _schedule


@schedule(name="retention_schedule", cron_schedule=RETENTION_CRON, job=retention_job, execution_timezone=TIMEZONE,
          description="Daily retention (forget + prune) for every tenant with backups, by its plan")
def retention_schedule(context: ScheduleEvaluationContext, postgres: PostgresResource):
    return run_requests(context, retention_job.name, "retention", postgres.tenant_ids(), None)


PLAN_SCHEDULES = [
    s
    for name, plan in PLANS.items()
    for s in (
        plan_schedule(name, "incremental_backup", plan.incremental_cron, backup_batch_job, "incremental"),
        plan_schedule(name, "full_backup", plan.full_cron, backup_batch_job, "full"),
        plan_schedule(name, "integrity", plan.integrity_cron, integrity_job),
        plan_schedule(name, "restore_drill", plan.drill_cron, drill_job),
    )
]
fleet_report_schedule = ScheduleDefinition(name="fleet_report_schedule", job=fleet_report_job, cron_schedule="30 * * * *",
                                           execution_timezone=TIMEZONE, description="The fleet report, hourly")

SCHEDULES = [*PLAN_SCHEDULES, retention_schedule, fleet_report_schedule]
