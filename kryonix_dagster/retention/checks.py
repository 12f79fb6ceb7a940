"""The retention check of a tenant's restore points, judged by restic's own forget --dry-run."""
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from ..engine.retention import RetentionCheck
from ..backup.metadata import RESTORE_POINT_ASSET
from ..partitions import kryonix_tenants
from ..resources import BackupEngineResource

SEVERITY = {"ERROR": AssetCheckSeverity.ERROR, "WARN": AssetCheckSeverity.WARN}


def retention_evaluation(tenant_id: str, result: RetentionCheck) -> dict:
    """passed/severity/description/metadata of the retention check."""
    severity = result.severity
    text = {"ERROR": f"{len(result.over_retained)} restore point(s) kept beyond the {result.plan} plan",
            "WARN": (result.warning or (f"no restore point for {', '.join(result.missing_days)}" if result.missing_days
                                        else "no restore points")),
            "OK": f"{result.restore_points} restore points, as the {result.plan} plan says"}[severity]
    return {
        "passed": severity == "OK",
        "severity": SEVERITY.get(severity, AssetCheckSeverity.WARN),
        "description": f"tenant {tenant_id}: {text}",
        "metadata": {
            "plan": result.plan, "restore_points": MetadataValue.int(result.restore_points),
            "over_retained": MetadataValue.json(result.over_retained),
            "missing_days": MetadataValue.json(result.missing_days),
            "plan_warning": result.warning or "",
        },
    }


def evaluate_retention(engine: BackupEngineResource, tenant_id: str) -> dict:
    return retention_evaluation(tenant_id, engine.check_retention(tenant_id))


@asset_check(asset=RESTORE_POINT_ASSET, name="retention", partitions_def=kryonix_tenants,
             description="No restore point kept beyond the tenant's plan (ERROR) and one for every day the plan "
                         "keeps (WARN otherwise). Uses restic's own forget --dry-run as the judge.")
def retention_check(context: AssetCheckExecutionContext, engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**evaluate_retention(engine, context.partition_key))
