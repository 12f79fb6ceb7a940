"""LGPD retention as a batch job (what the daily schedule requests), and the report's job."""
from dagster import AssetMaterialization, AssetSelection, OpExecutionContext, define_asset_job, job, op

from ..batching import TenantBatchConfig, finish_batch
from ..engine.errors import KryonixError, one_line
from ..resources import BackupEngineResource
from .assets import lgpd_compliance_report
from .checks import evaluate_compliance
from .metadata import LGPD_RETENTION_ASSET, retention_metadata, tenant_evaluation


@op(description="Apply the LGPD retention rules to a batch of tenants, then evaluate each one's compliance.")
def lgpd_retention_tenants(context: OpExecutionContext, config: TenantBatchConfig,
                           engine: BackupEngineResource) -> None:
    tenants = list(config.tenants) or engine.tenant_ids()  # every registered tenant holds personal data
    failed: dict[str, str] = {}
    for n, tenant_id in enumerate(tenants, 1):
        context.log.info(f"[{n}/{len(tenants)}] tenant {tenant_id}")
        try:
            result = engine.lgpd_apply(tenant_id)
        except KryonixError as exc:
            failed[tenant_id] = one_line(str(exc))
            continue
        context.log_event(AssetMaterialization(asset_key=LGPD_RETENTION_ASSET, partition=tenant_id,
                                               metadata=retention_metadata(result)))
        try:
            fields = evaluate_compliance(engine, tenant_id)
        except KryonixError as exc:
            failed[tenant_id] = f"compliance not evaluated: {one_line(str(exc))}"
            continue
        context.log_event(tenant_evaluation(fields, tenant_id))
    finish_batch(context, "LGPD retention", tenants, failed)


@job(description="Daily LGPD retention for a batch of tenants (requested by lgpd_retention_schedule).")
def lgpd_retention_job():
    lgpd_retention_tenants()


lgpd_report_job = define_asset_job("lgpd_report_job", selection=AssetSelection.assets(lgpd_compliance_report),
                                   description="The fleet's LGPD compliance report.")
