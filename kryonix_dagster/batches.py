"""Batch jobs: one run works through a list of tenants in one process.

At thousands of tenants a process per tenant costs more than most backups, so schedules
request runs of these jobs per batch of tenants; each tenant still gets its own partition
events (materializations, check evaluations), and a failing tenant never stops the batch.
`backup_tenant_job` and the partitioned checks stay available for one tenant at a time.
"""
from dagster import AssetKey, Config, Failure, MetadataValue, OpExecutionContext, job, op
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

from . import evaluations
from .assets.backups import DagsterReporter
from .engine import registry
from .engine.errors import KryonixError, one_line
from .engine.retention import run_forget
from .engine.session import run_backup
from .metadata import RESTORE_POINT_ASSET
from .pools import SESSION_POOL, ServicePoolGate
from .resources import BackupEngineResource
from .session_events import partition_events


class TenantBatchConfig(Config):
    tenants: list[str] = []  # empty: every active tenant
    backup_type: str = "incremental"


def _tenants(engine: BackupEngineResource, config: TenantBatchConfig) -> list[str]:
    return list(config.tenants) or [t.id for t in registry.list_tenants(engine.settings(), status="ativo")]


def _finish(context: OpExecutionContext, what: str, tenants: list[str], failed: dict) -> None:
    context.log.info(f"{what}: {len(tenants) - len(failed)} of {len(tenants)} tenants succeeded")
    if failed:
        raise Failure(
            description=f"{what} failed for {len(failed)} of {len(tenants)} tenants: "
                        + "; ".join(f"{t}: {e}" for t, e in list(failed.items())[:10]),
            metadata={"failed_tenants": MetadataValue.json(failed), "total": len(tenants),
                      "succeeded": len(tenants) - len(failed)},
        )


def _log_check(context: OpExecutionContext, name: str, tenant_id: str, fields: dict) -> None:
    context.log_event(AssetCheckEvaluation(asset_key=AssetKey(RESTORE_POINT_ASSET), check_name=name,
                                           partition=tenant_id, **fields))


@op(pool=SESSION_POOL, description="Backup sessions for a batch of tenants, one after the other.")
def backup_tenants(context: OpExecutionContext, config: TenantBatchConfig, engine: BackupEngineResource) -> None:
    tenants = _tenants(engine, config)
    settings = engine.settings()
    failed: dict[str, str] = {}
    for n, tenant_id in enumerate(tenants, 1):
        context.log.info(f"[{n}/{len(tenants)}] tenant {tenant_id}")
        gate = ServicePoolGate(context.instance, context.run_id, f"{context.op.name}:{tenant_id}", context.log)
        try:
            result = run_backup(settings, tenant_id, config.backup_type, DagsterReporter(context.log), gate=gate)
        except KryonixError as exc:
            failed[tenant_id] = one_line(str(exc))
            continue
        for event in partition_events(result, {"kryonix/session": result.session_id}):
            context.log_event(event)
        if not result.success:
            tiers = ", ".join(f"{name}: {t.error}" for name, t in result.tiers.items() if t.error)
            failed[tenant_id] = tiers or result.error or result.status
    _finish(context, f"{config.backup_type} backup", tenants, failed)


@op(pool="kryonix_repository", description="Apply each tenant's plan retention (forget + prune).")
def forget_tenants(context: OpExecutionContext, config: TenantBatchConfig, engine: BackupEngineResource) -> None:
    settings = engine.settings()
    tenants = list(config.tenants) or registry.list_tenant_ids(settings)
    failed: dict[str, str] = {}
    for tenant_id in tenants:
        try:
            decision = run_forget(settings, tenant_id, wait_seconds=300)
            context.log.info(f"tenant {tenant_id}: kept {len(decision.kept_sessions)} restore points, "
                             f"removed {len(decision.removed_sessions)}" + (f" ({decision.warning})" if decision.warning else ""))
        except KryonixError as exc:
            if exc.exit_code == 2:  # never backed up: nothing to forget
                continue
            failed[tenant_id] = one_line(str(exc))
            continue
        _log_check(context, "retention", tenant_id, evaluations.retention(settings, tenant_id))
    _finish(context, "retention", tenants, failed)


def _check_batch(context: OpExecutionContext, engine: BackupEngineResource, config: TenantBatchConfig,
                 name: str) -> None:
    settings = engine.settings()
    tenants = _tenants(engine, config)
    failed: dict[str, str] = {}
    for tenant_id in tenants:
        fields = evaluations.CHECKS[name](settings, tenant_id)
        _log_check(context, name, tenant_id, fields)
        if not fields["passed"]:
            failed[tenant_id] = fields["description"]
    _finish(context, name, tenants, failed)


@op(pool="kryonix_repository", description="restic check (rotating read-data subset) for a batch of tenants.")
def check_tenants(context: OpExecutionContext, config: TenantBatchConfig, engine: BackupEngineResource) -> None:
    _check_batch(context, engine, config, "integrity")


@op(pool="kryonix_drills", description="Restore drills for a batch of tenants.")
def drill_tenants(context: OpExecutionContext, config: TenantBatchConfig, engine: BackupEngineResource) -> None:
    _check_batch(context, engine, config, "restore_drill")


@job(description="Backup sessions for a batch of tenants (requested by the plan schedules).")
def backup_batch_job():
    backup_tenants()


@job(description="Daily retention (forget + prune) by plan, for a batch of tenants.")
def retention_job():
    forget_tenants()


@job(description="Repository integrity checks for a batch of tenants.")
def integrity_job():
    check_tenants()


@job(description="Restore drills for a batch of tenants.")
def drill_job():
    drill_tenants()


BATCH_JOBS = [backup_batch_job, retention_job, integrity_job, drill_job]
