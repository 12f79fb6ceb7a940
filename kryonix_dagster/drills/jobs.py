"""Restore drills as a batch job: the drill check for a batch of tenants."""
from dagster import OpExecutionContext, job, op

from ..batching import TenantBatchConfig, check_batch
from ..resources import BackupEngineResource
from .checks import evaluate_drill


@op(pool="kryonix_drills", description="Restore drills for a batch of tenants.")
def drill_tenants(context: OpExecutionContext, config: TenantBatchConfig, engine: BackupEngineResource) -> None:
    check_batch(context, "restore_drill", engine, config, evaluate_drill)


@job(description="Restore drills for a batch of tenants.")
def drill_job():
    drill_tenants()
