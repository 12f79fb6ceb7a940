"""A session as Dagster events: per-tier materializations, the restore point and its
consistency check, either as an asset's results or as events an op logs per partition."""
from __future__ import annotations

from dagster import AssetCheckResult, AssetKey, AssetMaterialization, MaterializeResult
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

from .engine.session import SessionResult
from .metadata import RESTORE_POINT_ASSET, TIER_ASSETS, consistency_evaluation, session_metadata, tier_metadata


def asset_results(result: SessionResult):
    """For the partitioned multi-asset: MaterializeResult / AssetCheckResult."""
    for name, tier in result.tiers.items():
        if tier.status == "ok" and name in TIER_ASSETS:
            yield MaterializeResult(asset_key=AssetKey(TIER_ASSETS[name]), metadata=tier_metadata(result, tier))
    if result.restore_point:
        yield MaterializeResult(asset_key=AssetKey(RESTORE_POINT_ASSET), metadata=session_metadata(result))
        yield AssetCheckResult(asset_key=RESTORE_POINT_ASSET, check_name="consistency", **consistency_evaluation(result))


def partition_events(result: SessionResult, tags: dict | None = None):
    """For batch ops and the CLI: events that name the tenant's partition."""
    tenant = result.tenant_id
    for name, tier in result.tiers.items():
        if tier.status == "ok" and name in TIER_ASSETS:
            yield AssetMaterialization(asset_key=TIER_ASSETS[name], partition=tenant,
                                       metadata=tier_metadata(result, tier), tags=tags)
    if result.restore_point:
        yield AssetMaterialization(asset_key=RESTORE_POINT_ASSET, partition=tenant,
                                   metadata=session_metadata(result), tags=tags)
        yield AssetCheckEvaluation(asset_key=AssetKey(RESTORE_POINT_ASSET), check_name="consistency",
                                   partition=tenant, **consistency_evaluation(result))
