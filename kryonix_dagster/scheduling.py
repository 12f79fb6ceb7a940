"""What every schedule shares: the timezone, batches of tenants, run requests for a batch job,
and whether schedules start running.

Schedules request runs only for the active tenants of their plan, in batches, tagged with the
plan so the run queue can throttle per plan (`build_schedule_from_partitioned_job` refuses
dynamic partitions, hence plain @schedules).
"""
import math
import os
from collections.abc import Mapping

from dagster import (DefaultScheduleStatus, JobDefinition, RunRequest, ScheduleEvaluationContext, SkipReason,
                     schedule)

from .engine.plans import plan_for
from .resources import PostgresResource

BATCH_SIZE = int(os.environ.get("KRYONIX_BATCH_SIZE", "25"))  # tenants per run at least
# At most this many run requests per tick: a larger fleet gets larger runs (each fanned out in
# chunks over the workers), so a tick at 100,000 tenants costs what one at 2,500 does.
MAX_RUNS_PER_TICK = int(os.environ.get("KRYONIX_MAX_RUNS_PER_TICK", "100"))
TIMEZONE = os.environ.get("KRYONIX_SCHEDULE_TIMEZONE", "America/Sao_Paulo")
FALSE_WORDS = ("0", "false", "no", "off")


def default_schedule_status(environ: Mapping[str, str] = os.environ) -> DefaultScheduleStatus:
    """RUNNING unless KRYONIX_SCHEDULES_RUNNING says false: a deployment backs up from its first
    minute; `make dev` sets it false so a laptop does not start backing up on its own."""
    value = environ.get("KRYONIX_SCHEDULES_RUNNING", "true").strip().lower()
    return DefaultScheduleStatus.STOPPED if value in FALSE_WORDS else DefaultScheduleStatus.RUNNING


def batch_op_name(job: JobDefinition) -> str:
    """The op of a batch job that takes the run config: its one op without inputs (the
    whole job, or the split step of a fanned-out one)."""
    names = [node.name for node in job.graph.nodes if not node.definition.input_defs]
    if len(names) != 1:
        raise ValueError(f"batch job {job.name} must have exactly one op without inputs, has {names}")
    return names[0]


def batch_size_for(count: int, minimum: int = BATCH_SIZE, max_runs: int = MAX_RUNS_PER_TICK) -> int:
    """Tenants per run: `minimum`, or more when that would take more than `max_runs` runs."""
    return max(minimum, math.ceil(count / max(1, max_runs)))


def batches(tenant_ids: list[str], size: int | None = None) -> list[list[str]]:
    size = size or batch_size_for(len(tenant_ids))
    return [tenant_ids[i:i + size] for i in range(0, len(tenant_ids), size)]


def run_requests(context: ScheduleEvaluationContext, job: JobDefinition, kind: str, tenant_ids: list[str],
                 plan: str | None, backup_type: str | None = None):
    if not tenant_ids:
        return SkipReason(f"no active tenants{' on plan ' + plan if plan else ''}")
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M") if context.scheduled_execution_time else "manual"
    config = {"backup_type": backup_type} if backup_type else {}
    tags = {"kryonix/kind": kind, **({"kryonix/plan": plan} if plan else {})}
    op_name = batch_op_name(job)
    runs = batches(tenant_ids)
    return [
        RunRequest(
            run_key=f"{kind}-{plan or 'all'}-{tick}-{n}",
            run_config={"ops": {op_name: {"config": {"tenants": batch, **config}}}},
            tags={**tags, "kryonix/batch": f"{n + 1}/{len(runs)}"},
        )
        for n, batch in enumerate(runs)
    ]


def plan_schedule(plan: str, kind: str, cron: str, job: JobDefinition, backup_type: str | None = None):
    """`{plan}_{kind}_schedule`: runs of `job` for the plan's active tenants, in batches."""

    @schedule(name=f"{plan}_{kind}_schedule", cron_schedule=cron, job=job, execution_timezone=TIMEZONE,
              default_status=default_schedule_status(),
              description=f"{kind.replace('_', ' ')} for the active tenants of the {plan} plan ({cron})")
    def _schedule(context: ScheduleEvaluationContext, postgres: PostgresResource):
        # unknown plans fall back to basic, so the basic schedules take those tenants too
        tenants = [t.id for t in postgres.tenants(status="ativo") if plan_for(t.plano)[0].name == plan]
        return run_requests(context, job, kind, tenants, plan, backup_type)

    return _schedule
