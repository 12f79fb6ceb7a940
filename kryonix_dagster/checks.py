"""Per-tenant asset checks on the restore points: retention, freshness, integrity, restore
drill (consistency is evaluated by each session). Each runs for one tenant partition."""
from dagster import AssetCheckExecutionContext, AssetCheckResult, Config, asset_check

from . import evaluations
from .metadata import RESTORE_POINT_ASSET
from .partitions import kryonix_tenants
from .resources import BackupEngineResource


class IntegrityConfig(Config):
    read_data_subset: str = ""  # e.g. "3/7" or "1/1"; empty: the day of the week's seventh


@asset_check(asset=RESTORE_POINT_ASSET, name="retention", partitions_def=kryonix_tenants,
             description="No restore point kept beyond the tenant's plan (ERROR) and one for every day the plan "
                         "keeps (WARN otherwise). Uses restic's own forget --dry-run as the judge.")
def retention_check(context: AssetCheckExecutionContext, engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**evaluations.retention(engine.settings(), context.partition_key))


@asset_check(asset=RESTORE_POINT_ASSET, name="freshness", partitions_def=kryonix_tenants,
             description="The latest restore point is younger than the plan's RPO (per tenant, from the audit trail).")
def freshness_check(context: AssetCheckExecutionContext, engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**evaluations.freshness(engine.settings(), context.partition_key))


@asset_check(asset=RESTORE_POINT_ASSET, name="integrity", partitions_def=kryonix_tenants, pool="kryonix_repository",
             description="restic check with a rotating read-data subset (the whole repository is read every week), "
                         "and every restore point's snapshots present.")
def integrity_check(context: AssetCheckExecutionContext, config: IntegrityConfig,
                    engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**evaluations.integrity(engine.settings(), context.partition_key,
                                                    config.read_data_subset or None))


@asset_check(asset=RESTORE_POINT_ASSET, name="restore_drill", partitions_def=kryonix_tenants, pool="kryonix_drills",
             description="Restores the latest session into a scratch tenant, compares it with the session's manifest, "
                         "and erases the scratch tenant.")
def restore_drill_check(context: AssetCheckExecutionContext, engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**evaluations.restore_drill(engine.settings(), context.partition_key))


TENANT_CHECKS = [retention_check, freshness_check, integrity_check, restore_drill_check]
