"""Per-tenant jobs (one partition per run: backfills and retries) and the report job."""
from dagster import AssetCheckKey, AssetKey, AssetSelection, define_asset_job

from .assets import fleet_backup_report, tenant_backup_session
from .checks import TENANT_CHECKS
from .metadata import RESTORE_POINT_ASSET
from .partitions import kryonix_tenants

# The session's own consistency check only: the other checks (a drill restores the whole
# tenant) run on their schedules, not on every backup.
backup_tenant_job = define_asset_job(
    "backup_tenant_job",
    selection=AssetSelection.assets(tenant_backup_session).without_checks()
    | AssetSelection.checks(AssetCheckKey(AssetKey(RESTORE_POINT_ASSET), "consistency")),
    partitions_def=kryonix_tenants,
    description="One coordinated backup session (all tiers) of the partition's tenant.",
)

# A checks-only job carries no partitions definition in Dagster 1.13: launch it with the tag
# dagster/partition=<tenant> (or use the batch jobs, which take a list of tenants).
tenant_checks_job = define_asset_job(
    "tenant_checks_job",
    selection=AssetSelection.checks(*TENANT_CHECKS),
    description="Retention, freshness, integrity and restore-drill checks of one tenant "
                "(launch with the tag dagster/partition=<tenant id>).",
)

fleet_report_job = define_asset_job("fleet_report_job", selection=AssetSelection.assets(fleet_backup_report))
