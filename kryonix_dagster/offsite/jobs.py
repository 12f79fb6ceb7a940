"""The off-site copy after each batch of sessions, and the weekly DR drill from the copy."""
import hashlib
from datetime import datetime

from dagster import (AssetKey, AssetMaterialization, AssetSelection, MetadataValue, OpExecutionContext,
                     ScheduleEvaluationContext, SkipReason, define_asset_job, job, op, schedule)

from ..backup.assets import DagsterReporter
from ..batching import TenantBatchConfig, active_tenants, finish_batch
from ..engine.errors import KryonixError, one_line
from ..engine.plans import plan_for
from ..partitions import kryonix_tenants
from ..resources import BackupEngineResource, PostgresResource
from ..scheduling import TIMEZONE, default_schedule_status, run_requests
from .assets import DR_DRILL_ASSET, OFFSITE_COPY_ASSET, copy_metadata, offsite_copy

DR_DRILL_CRON = "0 7 * * 0"  # weekly, Sunday 07:00, after the plans' drills and checks
DR_SHARE = 4  # non-enterprise tenants: a quarter of them per week, every one at least monthly

offsite_copy_job = define_asset_job(
    "offsite_copy_job", selection=AssetSelection.assets(offsite_copy), partitions_def=kryonix_tenants,
    description="Copy one tenant's new restore points off-site.")


def copy_after_session(context: OpExecutionContext, engine: BackupEngineResource, tenant_id: str) -> str | None:
    """The off-site copy of a tenant right after its session (batch jobs); its materialization
    logged on the tenant's partition. Returns an error message, or None."""
    try:
        result = engine.copy(tenant_id, DagsterReporter(context.log))
    except KryonixError as exc:
        return f"off-site copy: {one_line(str(exc))}"
    context.log_event(AssetMaterialization(asset_key=AssetKey(OFFSITE_COPY_ASSET), partition=tenant_id,
                                           metadata=copy_metadata(result)))
    return None


def dr_drill_tenants_for(tenants: list[tuple[str, str]], when: datetime) -> list[str]:
    """All enterprise tenants, and a rotating share of the others (stable per tenant)."""
    week = when.isocalendar().week
    return [tid for tid, plano in tenants
            if plan_for(plano)[0].name == "enterprise"
            or int(hashlib.sha256(tid.encode()).hexdigest(), 16) % DR_SHARE == week % DR_SHARE]


@op(pool="kryonix_drills", description="DR drills from the off-site copy for a batch of tenants; RTO per tenant.")
def dr_drill_tenants(context: OpExecutionContext, config: TenantBatchConfig, engine: BackupEngineResource) -> None:
    tenants = active_tenants(engine, config)
    failed: dict[str, str] = {}
    for tenant_id in tenants:
        result = engine.dr_drill(tenant_id, DagsterReporter(context.log))
        context.log_event(AssetMaterialization(
            asset_key=AssetKey(DR_DRILL_ASSET), partition=tenant_id,
            metadata={"rto_seconds": MetadataValue.float(float(result.duration_seconds)),
                      "passed": MetadataValue.bool(result.passed), "session": result.session_id or "",
                      "compared": MetadataValue.json(result.compared)}))
        if not result.passed:
            failed[tenant_id] = result.error or "drill failed"
    finish_batch(context, "DR drill", tenants, failed)


@job(description="Restore drills from the off-site copy into scratch tenants, with the measured RTO.")
def dr_drill_job():
    dr_drill_tenants()


@schedule(name="dr_drill_schedule", cron_schedule=DR_DRILL_CRON, job=dr_drill_job, execution_timezone=TIMEZONE,
          default_status=default_schedule_status(),
          description="Weekly DR drill: every enterprise tenant and a rotating quarter of the others")
def dr_drill_schedule(context: ScheduleEvaluationContext, postgres: PostgresResource):
    when = context.scheduled_execution_time or datetime.now()
    active = [(t.id, t.plano) for t in postgres.tenants(status="ativo")]
    chosen = dr_drill_tenants_for(active, when)
    if not chosen:
        return SkipReason("no tenant due for a DR drill this week")
    return run_requests(context, dr_drill_job, "dr_drill", chosen, None)
