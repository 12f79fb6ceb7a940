"""Integrity as a batch job: the integrity check for a batch of tenants."""
from dagster import OpExecutionContext, job, op

from ..batching import TenantBatchConfig, check_batch
from ..resources import BackupEngineResource
from .checks import evaluate_integrity


@op(pool="kryonix_repository", description="restic check (rotating read-data subset) for a batch of tenants.")
def check_tenants(context: OpExecutionContext, config: TenantBatchConfig, engine: BackupEngineResource) -> None:
    check_batch(context, "integrity", engine, config, evaluate_integrity)


@job(description="Repository integrity checks for a batch of tenants.")
def integrity_job():
    check_tenants()
