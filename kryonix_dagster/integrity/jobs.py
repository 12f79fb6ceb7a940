"""Integrity as a batch job: the integrity check for a batch of tenants."""
from dagster import OpExecutionContext, job, op

from ..batching import TenantBatchConfig, active_tenants, finish_batch, log_check
from ..resources import BackupEngineResource
from .checks import evaluate_integrity


@op(pool="kryonix_repository", description="restic check (rotating read-data subset) for a batch of tenants.")
def check_tenants(context: OpExecutionContext, config: TenantBatchConfig, engine: BackupEngineResource) -> None:
    tenants = active_tenants(engine, config)
    failed: dict[str, str] = {}
    for tenant_id in tenants:
        fields = evaluate_integrity(engine, tenant_id)
        log_check(context, "integrity", tenant_id, fields)
        if not fields["passed"]:
            failed[tenant_id] = fields["description"]
    finish_batch(context, "integrity", tenants, failed)


@job(description="Repository integrity checks for a batch of tenants.")
def integrity_job():
    check_tenants()
