"""CLI sessions show up in the Dagster UI: when DAGSTER_HOME is set, each session is
reported to that instance as materializations of the tenant's partition."""
from __future__ import annotations

import logging
import os

from .engine.session import SessionResult

log = logging.getLogger(__name__)


def report_session(result: SessionResult) -> bool:
    """True when reported; a Dagster problem never fails the backup that already happened."""
    if not os.environ.get("DAGSTER_HOME") or not result.restore_point:
        return False
    try:
        from dagster import AssetKey, AssetMaterialization, DagsterInstance
        from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

        from .metadata import RESTORE_POINT_ASSET, TIER_ASSETS, consistency_evaluation, session_metadata, tier_metadata
        from .partitions import KRYONIX_TENANTS

        with DagsterInstance.get() as instance:
            if not instance.has_dynamic_partition(KRYONIX_TENANTS, result.tenant_id):
                instance.add_dynamic_partitions(KRYONIX_TENANTS, [result.tenant_id])
            tags = {"kryonix/source": "cli", "kryonix/session": result.session_id}
            for name, tier in result.tiers.items():
                if tier.status == "ok" and name in TIER_ASSETS:
                    instance.report_runless_asset_event(AssetMaterialization(
                        asset_key=TIER_ASSETS[name], partition=result.tenant_id,
                        metadata=tier_metadata(result, tier), tags=tags))
            instance.report_runless_asset_event(AssetMaterialization(
                asset_key=RESTORE_POINT_ASSET, partition=result.tenant_id,
                metadata=session_metadata(result), tags=tags))
            instance.report_runless_asset_event(AssetCheckEvaluation(
                asset_key=AssetKey(RESTORE_POINT_ASSET), check_name="consistency", partition=result.tenant_id,
                **consistency_evaluation(result)))
        return True
    except Exception as exc:
        log.warning("session %s not reported to Dagster: %s", result.session_id, exc)
        return False
