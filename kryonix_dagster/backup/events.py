"""A session as Dagster events: per-tier materializations, the restore point and its
consistency check, either as an asset's results or as events an op logs per partition."""
from dagster import AssetCheckEvaluation, AssetCheckResult, AssetKey, AssetMaterialization, MaterializeResult

from ..engine.session import SessionResult
from .metadata import (RESTORE_POINT_ASSET, TIER_ASSETS, TIER_DATA_CHECK, consistency_evaluation, session_metadata,
                       tier_data_evaluation, tier_metadata)

def asset_results(result: SessionResult, assets: dict[str, str] = TIER_ASSETS):
    """For the partitioned multi-asset: MaterializeResult / AssetCheckResult."""
    for name, tier in result.tiers.items():
        if tier.status == "ok" and name in assets:
            yield MaterializeResult(asset_key=AssetKey(assets[name]), metadata=tier_metadata(result, tier))
    if result.restore_point:
        yield MaterializeResult(asset_key=AssetKey(RESTORE_POINT_ASSET), metadata=session_metadata(result))
        yield AssetCheckResult(asset_key=RESTORE_POINT_ASSET, check_name="consistency", **consistency_evaluation(result))
        yield AssetCheckResult(asset_key=RESTORE_POINT_ASSET, check_name=TIER_DATA_CHECK, **tier_data_evaluation(result))


def partition_events(result: SessionResult, tags: dict | None = None, assets: dict[str, str] = TIER_ASSETS):
    """For batch ops and the CLI: events that name the tenant's partition."""
    tenant = result.tenant_id
    for name, tier in result.tiers.items():
        if tier.status == "ok" and name in assets:
            yield AssetMaterialization(asset_key=assets[name], partition=tenant,
                                       metadata=tier_metadata(result, tier), tags=tags)
    if result.restore_point:
        yield AssetMaterialization(asset_key=RESTORE_POINT_ASSET, partition=tenant,
                                   metadata=session_metadata(result), tags=tags)
        yield AssetCheckEvaluation(asset_key=AssetKey(RESTORE_POINT_ASSET), check_name="consistency",
                                   partition=tenant, **consistency_evaluation(result))
        yield AssetCheckEvaluation(asset_key=AssetKey(RESTORE_POINT_ASSET), check_name=TIER_DATA_CHECK,
                                   partition=tenant, **tier_data_evaluation(result))
