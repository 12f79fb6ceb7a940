"""Backup sessions as jobs: one tenant per run (backfills, retries) or a batch of tenants per
run (what the plan schedules request), fanned out in chunks over the executor's workers."""
from dagster import AssetCheckKey, AssetKey, AssetSelection, OpExecutionContext, define_asset_job, job, op

from .assets import DagsterReporter, tenant_backup_session
from ..batching import TenantChunk, finish_batch, run_origin, split_active_tenants
from ..engine.errors import KryonixError, one_line
from .metadata import RESTORE_POINT_ASSET, TIER_DATA_CHECK
from ..partitions import kryonix_tenants
from .pools import SESSION_POOL, ServicePoolGate
from ..resources import BackupEngineResource
from .events import partition_events
from ..workers.executor import kryonix_executor

# The session's own checks only (consistency, no tier emptied): the other checks (a drill
# restores the whole tenant) run on their schedules, not on every backup.
backup_tenant_job = define_asset_job(
    "backup_tenant_job",
    selection=AssetSelection.assets(tenant_backup_session).without_checks()
    | AssetSelection.checks(*(AssetCheckKey(AssetKey(RESTORE_POINT_ASSET), name)
                              for name in ("consistency", TIER_DATA_CHECK))),
    partitions_def=kryonix_tenants,
    description="One coordinated backup session (all tiers) of the partition's tenant.",
)


@op(pool=SESSION_POOL, description="Backup sessions for one chunk of a batch's tenants, one after the other; "
                                    "tenants this batch already backed up (a redone chunk) are skipped.")
def backup_chunk(context: OpExecutionContext, chunk: dict, engine: BackupEngineResource) -> None:
    part = TenantChunk.from_value(chunk)
    origin = run_origin(context)
    done = engine.backed_up_by(origin, part.tenants)
    if done:
        context.log.info(f"{len(done)} of {len(part.tenants)} tenants already backed up by this batch: skipped")
    tenants = [t for t in part.tenants if t not in done]
    failed: dict[str, str] = {}
    for n, tenant_id in enumerate(tenants, 1):
        context.log.info(f"[{n}/{len(tenants)}] tenant {tenant_id}")
        gate = ServicePoolGate(context.instance, context.run_id, f"{context.op.name}:{tenant_id}", context.log)
        try:
            result = engine.backup(tenant_id, part.backup_type, DagsterReporter(context.log), gate=gate,
                                   origin=origin)
        except KryonixError as exc:
            failed[tenant_id] = one_line(str(exc))
            continue
        for event in partition_events(result, {"kryonix/session": result.session_id}):
            context.log_event(event)
        if not result.success:
            tiers = ", ".join(f"{name}: {t.error}" for name, t in result.tiers.items() if t.error)
            failed[tenant_id] = tiers or result.error or result.status
        if result.restore_point and engine.offsite_configured():  # the new restore point off-site too
            from ..offsite.jobs import copy_after_session
            if error := copy_after_session(context, engine, tenant_id):
                failed[tenant_id] = "; ".join(filter(None, (failed.get(tenant_id), error)))
    finish_batch(context, f"{part.backup_type} backup", tenants, failed)


@job(description="Backup sessions for a batch of tenants (requested by the plan schedules), one step per chunk.",
     executor_def=kryonix_executor)
def backup_batch_job():
    split_active_tenants().map(backup_chunk)
