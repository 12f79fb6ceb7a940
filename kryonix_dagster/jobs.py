"""Jobs. Runs are per tenant partition (backfills and retries target one tenant)."""
from dagster import AssetSelection, define_asset_job

from .assets import tenant_backup_session
from .partitions import kryonix_tenants

backup_tenant_job = define_asset_job(
    "backup_tenant_job",
    selection=AssetSelection.assets(tenant_backup_session),
    partitions_def=kryonix_tenants,
    description="One coordinated backup session (all tiers) of the partition's tenant.",
)
