"""What every batch op shares: one run works through a list of tenants in one process.

At thousands of tenants a process per tenant costs more than most backups, so schedules
request runs of the batch jobs per batch of tenants; each tenant still gets its own partition
events (materializations, check evaluations), and a failing tenant never stops the batch.
The partitioned asset and checks stay available for one tenant at a time.
"""
from typing import Callable

from dagster import AssetCheckEvaluation, AssetKey, Config, Failure, MetadataValue, OpExecutionContext

from .backup.metadata import RESTORE_POINT_ASSET
from .resources import BackupEngineResource


class TenantBatchConfig(Config):
    tenants: list[str] = []  # empty: every active tenant
    backup_type: str = "incremental"


def active_tenants(engine: BackupEngineResource, config: TenantBatchConfig) -> list[str]:
    return list(config.tenants) or [t.id for t in engine.tenants(status="ativo")]


def log_check(context: OpExecutionContext, name: str, tenant_id: str, fields: dict) -> None:
    """One tenant's evaluation of a restore_point check, logged by a batch op."""
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


def check_batch(context: OpExecutionContext, check: str, engine: BackupEngineResource, config: TenantBatchConfig,
                evaluate: Callable[[BackupEngineResource, str], dict]) -> None:
    """One check over a batch of tenants: each result logged on its tenant's partition, the
    op failing at the end (naming the tenants) when any of them failed."""
    tenants = active_tenants(engine, config)
    failed: dict[str, str] = {}
    for tenant_id in tenants:
        fields = evaluate(engine, tenant_id)
        log_check(context, check, tenant_id, fields)
        if not fields["passed"]:
            failed[tenant_id] = fields["description"]
    finish_batch(context, check, tenants, failed)
