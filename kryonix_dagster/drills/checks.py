"""The restore-drill check: the latest session restored into a scratch tenant, compared with
its manifest, the scratch tenant erased."""
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from ..engine.drill import DrillResult
from ..backup.metadata import RESTORE_POINT_ASSET
from ..partitions import kryonix_tenants
from ..resources import BackupEngineResource


def drill_evaluation(tenant_id: str, result: DrillResult) -> dict:
    return {
        "passed": result.passed,
        "severity": AssetCheckSeverity.ERROR,
        "description": f"tenant {tenant_id}: session {result.session_id} "
                       + ("restored and matched its manifest" if result.passed else f"failed the drill: {result.error}"),
        "metadata": {
            "session": result.session_id or "", "scratch_tenant": result.scratch_id,
            "compared": MetadataValue.json(result.compared),
            "duration_seconds": MetadataValue.float(float(result.duration_seconds)),
        },
    }


def evaluate_drill(engine: BackupEngineResource, tenant_id: str) -> dict:
    return drill_evaluation(tenant_id, engine.drill(tenant_id))


@asset_check(asset=RESTORE_POINT_ASSET, name="restore_drill", partitions_def=kryonix_tenants, pool="kryonix_drills",
             description="Restores the latest session into a scratch tenant, compares it with the session's manifest, "
                         "and erases the scratch tenant.")
def restore_drill_check(context: AssetCheckExecutionContext, engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**evaluate_drill(engine, context.partition_key))
