"""The per-tenant LGPD compliance check on the lgpd_retention asset, and the fleet report's
check. Both evaluate `kryonix-backup lgpd report`'s read-only logic: running them never
materialises lgpd_retention, never changes a tenant's data."""
from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from ..partitions import kryonix_tenants
from ..resources import BackupEngineResource
from .assets import lgpd_retention
from .metadata import COMPLIANCE_CHECK, compliance_evaluation, fleet_evaluation, log_tenant_evaluations


def evaluate_compliance(engine: BackupEngineResource, tenant_id: str) -> dict:
    return compliance_evaluation(engine.lgpd_compliance(tenant_id))


@asset_check(asset=lgpd_retention, name=COMPLIANCE_CHECK, partitions_def=kryonix_tenants,
             description="ERROR when the tenant's personal data outlives its period: live rows a retention rule "
                         "would still change, or restore points kept past the plan. Evaluated without changing "
                         "anything (`kryonix-backup lgpd report ID`). Launched without a partition (\"Execute all\"), "
                         "it evaluates every registered tenant, each on its partition.")
def lgpd_compliance(context: AssetCheckExecutionContext, engine: BackupEngineResource) -> AssetCheckResult:
    if context.has_partition_key:
        return AssetCheckResult(**evaluate_compliance(engine, context.partition_key))
    fleet = engine.lgpd_fleet_compliance()
    log_tenant_evaluations(context.op_execution_context, fleet)
    context.log.info(f"no partition chosen: {len(fleet.tenants)} tenant(s) evaluated, "
                     f"{len(fleet.non_compliant)} not compliant")
    return AssetCheckResult(**fleet_evaluation(fleet))
