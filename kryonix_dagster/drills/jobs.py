"""Restore drills as a batch job: the drill check for a batch of tenants."""
from dagster import OpExecutionContext, job, op

from ..batching import TenantBatchConfig, active_tenants, finish_batch, log_check
from ..resources import BackupEngineResource
from .checks import evaluate_drill


@op(pool="kryonix_drills", description="Restore drills for a batch of tenants.")
def drill_tenants(context: OpExecutionContext, config: TenantBatchConfig, engine: BackupEngineResource) -> None:
    tenants = active_tenants(engine, config)
    failed: dict[str, str] = {}
    for tenant_id in tenants:
        fields = evaluate_drill(engine, tenant_id)
        log_check(context, "restore_drill", tenant_id, fields)
        if not fields["passed"]:
            failed[tenant_id] = fields["description"]
    finish_batch(context, "restore_drill", tenants, failed)


@job(description="Restore drills for a batch of tenants.")
def drill_job():
    drill_tenants()
