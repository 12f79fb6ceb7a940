"""Integrity as a batch job: the integrity check for a batch of tenants, one step per chunk."""
from dagster import OpExecutionContext, job, op

from ..batching import check_batch, split_active_tenants
from ..resources import BackupEngineResource
from ..workers.executor import kryonix_executor
from .checks import evaluate_integrity


@op(pool="kryonix_repository", description="restic check (rotating read-data subset) for one chunk of tenants.")
def check_tenants(context: OpExecutionContext, chunk: dict, engine: BackupEngineResource) -> None:
    check_batch(context, "integrity", engine, chunk, evaluate_integrity)


@job(description="Repository integrity checks for a batch of tenants, one step per chunk.", executor_def=kryonix_executor)
def integrity_job():
    split_active_tenants().map(check_tenants)
