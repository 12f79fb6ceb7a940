"""Retention as a batch job: forget + prune by plan, then the retention check, per tenant,
fanned out in chunks like the backups (a redone chunk simply forgets again: idempotent)."""
from dagster import OpExecutionContext, job, op

from ..batching import TenantChunk, finish_batch, log_check, split_active_tenants
from ..engine.errors import KryonixError, one_line
from ..resources import BackupEngineResource
from ..workers.executor import kryonix_executor
from .checks import evaluate_retention


@op(pool="kryonix_repository", description="Apply each tenant's plan retention (forget + prune), for one chunk.")
def forget_tenants(context: OpExecutionContext, chunk: dict, engine: BackupEngineResource) -> None:
    tenants = TenantChunk.from_value(chunk).tenants
    failed: dict[str, str] = {}
    for tenant_id in tenants:
        try:
            decision = engine.forget(tenant_id, wait_seconds=300)
            context.log.info(f"tenant {tenant_id}: kept {len(decision.kept_sessions)} restore points, "
                             f"removed {len(decision.removed_sessions)}"
                             + (f" ({decision.warning})" if decision.warning else ""))
        except KryonixError as exc:
            if exc.exit_code == 2:  # never backed up: nothing to forget
                continue
            failed[tenant_id] = one_line(str(exc))
            continue
        log_check(context, "retention", tenant_id, evaluate_retention(engine, tenant_id))
    finish_batch(context, "retention", tenants, failed)


@job(description="Daily retention (forget + prune) by plan, for a batch of tenants, one step per chunk.",
     executor_def=kryonix_executor, config={"ops": {"split_active_tenants": {"config": {"include_inactive": True}}}})
def retention_job():
    split_active_tenants().map(forget_tenants)
