"""Per-tenant jobs (one partition per run: backfills and retries) and the report job."""
from dagster import AssetSelection, define_asset_job

from .assets import fleet_backup_report, tenant_backup_session
from .checks import TENANT_CHECKS
from .partitions import kryonix_tenants

backup_tenant_job = define_asset_job(
    "backup_tenant_job",
    selection=AssetSelection.assets(tenant_backup_session),
    partitions_def=kryonix_tenants,
    description="One coordinated backup session (all tiers) of the partition's tenant.",
)

tenant_checks_job = define_asset_job(
    "tenant_checks_job",
    selection=AssetSelection.checks(*TENANT_CHECKS),
    partitions_def=kryonix_tenants,
    description="Retention, freshness, integrity and restore-drill checks of the partition's tenant.",
)

fleet_report_job = define_asset_job("fleet_report_job", selection=AssetSelection.assets(fleet_backup_report))
