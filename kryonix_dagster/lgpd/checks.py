"""The per-tenant LGPD compliance check on the lgpd_retention asset."""
from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from ..partitions import kryonix_tenants
from ..resources import BackupEngineResource
from .assets import lgpd_retention
from .metadata import COMPLIANCE_CHECK, compliance_evaluation


def evaluate_compliance(engine: BackupEngineResource, tenant_id: str) -> dict:
    return compliance_evaluation(engine.lgpd_compliance(tenant_id))


@asset_check(asset=lgpd_retention, name=COMPLIANCE_CHECK, partitions_def=kryonix_tenants,
             description="ERROR when the tenant's personal data outlives its period: live rows a retention rule "
                         "would still change, or restore points kept past the plan. Evaluated without changing "
                         "anything (`kryonix-backup lgpd report ID`).")
def lgpd_compliance(context: AssetCheckExecutionContext, engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**evaluate_compliance(engine, context.partition_key))
