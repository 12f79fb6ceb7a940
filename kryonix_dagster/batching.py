"""What every batch op shares: a run works through a list of tenants, chunk by chunk.

At thousands of tenants a process per tenant costs more than most backups, so schedules
request runs of the batch jobs per batch of tenants; each tenant still gets its own partition
events (materializations, check evaluations), and a failing tenant never stops the batch.
The partitioned asset and checks stay available for one tenant at a time.

A batch run fans out: its split step (`split_active_tenants`) yields one dynamic output per
chunk of tenants (TenantChunk), and one mapped step per chunk does the work, so with the
Celery executor one run spreads over every worker. A chunk step that is redone (its worker
died, or the run was re-executed) skips the tenants its run already backed up (`origin`).
"""
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from dagster import (AssetCheckEvaluation, AssetKey, Config, DynamicOut, DynamicOutput, Failure, MetadataValue,
                     OpExecutionContext, op)

from .resources import BackupEngineResource
from .workers.io import CHUNKS_IO_KEY


CHUNKS_PER_RUN = int(os.environ.get("KRYONIX_CHUNKS_PER_RUN", "8"))  # about the workers one run should reach
MAX_CHUNK = 25  # tenants per chunk step at most: a killed worker loses at most this much work


class TenantBatchConfig(Config):
    tenants: list[str] = []  # empty: every active tenant
    backup_type: str = "incremental"
    chunk_size: int = 0  # tenants per chunk step; 0: spread over CHUNKS_PER_RUN chunks, at most MAX_CHUNK each
    include_inactive: bool = False  # with an empty list: every registered tenant (retention)


@dataclass(frozen=True)
class TenantChunk:
    """One chunk step's share of a batch run (JSON between hosts: see workers/io.py)."""

    index: int
    tenants: list[str]
    backup_type: str

    @classmethod
    def from_value(cls, value: dict) -> "TenantChunk":
        return cls(int(value["index"]), list(value["tenants"]), str(value["backup_type"]))


def chunk_size_for(count: int, configured: int = 0) -> int:
    if configured > 0:
        return configured
    return max(1, min(MAX_CHUNK, math.ceil(count / max(1, CHUNKS_PER_RUN))))


def tenant_chunks(tenants: list[str], backup_type: str, configured: int = 0) -> list[TenantChunk]:
    size = chunk_size_for(len(tenants), configured)
    return [TenantChunk(n, tenants[i:i + size], backup_type) for n, i in enumerate(range(0, len(tenants), size))]


def run_origin(context: OpExecutionContext) -> str:
    """The id every attempt of a batch shares: its first run's (re-executions keep it)."""
    return context.run.root_run_id or context.run_id


@op(out=DynamicOut(dict, io_manager_key=CHUNKS_IO_KEY), description="The run's tenants (or every active tenant), in chunks: one step each.")
def split_active_tenants(context: OpExecutionContext, config: TenantBatchConfig,
                         engine: BackupEngineResource) -> Iterator[DynamicOutput]:
    chunks = tenant_chunks(active_tenants(engine, config), config.backup_type, config.chunk_size)
    context.log.info(f"{sum(len(c.tenants) for c in chunks)} tenants in {len(chunks)} chunks")
    for chunk in chunks:
        yield DynamicOutput(asdict(chunk), mapping_key=f"chunk_{chunk.index}")


def active_tenants(engine: BackupEngineResource, config: TenantBatchConfig) -> list[str]:
    if config.tenants:
        return list(config.tenants)
    return engine.tenant_ids() if config.include_inactive else [t.id for t in engine.tenants(status="ativo")]


def log_check(context: OpExecutionContext, name: str, tenant_id: str, fields: dict) -> None:
    """One tenant's evaluation of a restore_point check, logged by a batch op."""
    from .backup.metadata import RESTORE_POINT_ASSET  # here: backup/ imports this module at load

    context.log_event(AssetCheckEvaluation(asset_key=AssetKey(RESTORE_POINT_ASSET), check_name=name,
                                           partition=tenant_id, **fields))


def finish_batch(context: OpExecutionContext, what: str, tenants: list[str], failed: dict[str, str]) -> None:
    """Log the tally; fail the op naming the failed tenants (the others' events are kept)."""
    context.log.info(f"{what}: {len(tenants) - len(failed)} of {len(tenants)} tenants succeeded")
    if failed:
        raise Failure(
            description=f"{what} failed for {len(failed)} of {len(tenants)} tenants: "
                        + "; ".join(f"{t}: {e}" for t, e in list(failed.items())[:10]),
            metadata={"failed_tenants": MetadataValue.json(failed), "total": len(tenants),
                      "succeeded": len(tenants) - len(failed)},
        )


def check_batch(context: OpExecutionContext, check: str, engine: BackupEngineResource, chunk: dict,
                evaluate: Callable[[BackupEngineResource, str], dict]) -> None:
    """One check over a chunk of a batch's tenants: each result logged on its tenant's
    partition, the step failing at the end (naming the tenants) when any of them failed."""
    tenants = TenantChunk.from_value(chunk).tenants
    failed: dict[str, str] = {}
    for tenant_id in tenants:
        fields = evaluate(engine, tenant_id)
        log_check(context, check, tenant_id, fields)
        if not fields["passed"]:
            failed[tenant_id] = fields["description"]
    finish_batch(context, check, tenants, failed)
