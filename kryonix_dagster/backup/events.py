"""A session as Dagster events: per-tier materializations, the restore point and its
consistency check, either as an asset's results or as events an op logs per partition."""
from dagster import (AssetCheckEvaluation, AssetCheckResult, AssetKey, AssetMaterialization, JobDefinition,
                     MaterializeResult, OpExecutionContext, job, op)

from ..engine.session import SessionResult
from .metadata import (RESTORE_POINT_ASSET, TIER_ASSETS, TIER_DATA_CHECK, consistency_evaluation, session_metadata,
                       tier_data_evaluation, tier_metadata)

CLI_SESSION_JOB = "cli_backup_session"


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


def session_report_job(result: SessionResult) -> JobDefinition:
    """A one-op job whose run logs a session the CLI ran as events of its tenant's partition
    (every check evaluation needs a run of its own: see dagster_bridge)."""

    @op(name="report_cli_session", description="Logs a CLI session's materializations and consistency check.")
    def report_cli_session(context: OpExecutionContext) -> None:
        for event in partition_events(result, {"kryonix/source": "cli", "kryonix/session": result.session_id}):
            context.log_event(event)

    @job(name=CLI_SESSION_JOB, description="A backup session the kryonix-backup CLI ran, as Dagster events.")
    def cli_backup_session():
        report_cli_session()

    return cli_backup_session
