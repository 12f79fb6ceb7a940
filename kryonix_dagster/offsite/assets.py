"""The off-site copy as a partitioned asset downstream of each tenant's restore point, its lag
check, and the DR drill's measured RTO (an asset of its own, so the UI plots it per tenant)."""
from dagster import (AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, AssetKey, AssetSpec, Failure,
                     MaterializeResult, MetadataValue, asset, asset_check)

from ..backup.assets import DagsterReporter
from ..backup.metadata import RESTORE_POINT_ASSET
from ..engine.errors import KryonixError, one_line
from ..engine.offsite import CopyResult, OffsiteLag
from ..partitions import kryonix_tenants
from ..resources import BackupEngineResource

GROUP = "offsite"
OFFSITE_COPY_ASSET = "offsite_copy"
DR_DRILL_ASSET = "dr_drill"


def copy_metadata(result: CopyResult) -> dict:
    return {
        "copied_restore_points": MetadataValue.int(len(result.copied_sessions)),
        "restore_points_offsite": MetadataValue.int(result.restore_points_secondary),
        "snapshots_copied": MetadataValue.int(result.snapshots_copied),
        "duration_seconds": MetadataValue.float(float(result.duration_seconds)),
        "latest_session": result.latest_session or "",
    }


@asset(name=OFFSITE_COPY_ASSET, group_name=GROUP, kinds={"restic"}, partitions_def=kryonix_tenants,
       deps=[AssetKey(RESTORE_POINT_ASSET)], pool="kryonix_offsite",
       description="The tenant's restore points copied to the off-site repository (KRYONIX_REPO_SECONDARY) through "
                   "its append-only endpoint: whole restore points only, tier snapshots first, the manifest last.")
def offsite_copy(context: AssetExecutionContext, engine: BackupEngineResource) -> MaterializeResult:
    try:
        result = engine.copy(context.partition_key, DagsterReporter(context.log))
    except KryonixError as exc:
        raise Failure(description=one_line(str(exc)), metadata={"tenant": context.partition_key}) from None
    return MaterializeResult(metadata=copy_metadata(result))


def lag_evaluation(lag: OffsiteLag | None) -> dict:
    if lag is None:
        return {"passed": False, "severity": AssetCheckSeverity.WARN, "description": "tenant not registered",
                "metadata": {}}
    hours = lag.lag_hours
    return {
        "passed": lag.ok,
        "severity": AssetCheckSeverity.ERROR,
        "description": (f"tenant {lag.tenant_id}: the newest restore point is off-site" if hours == 0 else
                        "no restore point yet" if hours is None else
                        f"tenant {lag.tenant_id}: the newest restore point has waited {hours:.1f} h for the copy "
                        f"(limit {lag.limit_hours:g} h)"),
        "metadata": {"lag_hours": MetadataValue.float(float(hours or 0.0)),
                     "limit_hours": MetadataValue.float(float(lag.limit_hours)),
                     "secondary_latest": lag.secondary_latest or ""},
    }


@asset_check(asset=OFFSITE_COPY_ASSET, name="offsite_lag", partitions_def=kryonix_tenants,
             description="The newest restore point is in the off-site copy within the plan's limit "
                         "(engine/plans.py offsite_lag_hours).")
def offsite_lag_check(context, engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**lag_evaluation(engine.offsite_lag(context.partition_key)))


DR_DRILL_SPEC = AssetSpec(
    key=DR_DRILL_ASSET, group_name=GROUP, kinds={"restic"}, partitions_def=kryonix_tenants,
    deps=[AssetKey(OFFSITE_COPY_ASSET)],
    description="A restore from the off-site copy into the tenant's scratch names, compared with the manifest and "
                "erased; materialized by dr_drill_job with the measured RTO (rto_seconds).",
)
