"""Restore drills as a batch job: the drill check for a batch of tenants, one step per chunk."""
from dagster import OpExecutionContext, job, op

from ..batching import check_batch, split_active_tenants
from ..resources import BackupEngineResource
from ..workers.executor import kryonix_executor
from .checks import evaluate_drill


@op(pool="kryonix_drills", description="Restore drills for one chunk of tenants.")
def drill_tenants(context: OpExecutionContext, chunk: dict, engine: BackupEngineResource) -> None:
    check_batch(context, "restore_drill", engine, chunk, evaluate_drill)


@job(description="Restore drills for a batch of tenants, one step per chunk.", executor_def=kryonix_executor)
def drill_job():
    split_active_tenants().map(drill_tenants)
