"""Per-tenant backups as assets: one materialization per tier per session, plus the
session's restore point. One run of `tenant_backup_session` is one coordinated session of
one tenant (the same engine code the CLI runs)."""

import time
import warnings

from dagster import AssetCheckSpec, AssetExecutionContext, AssetSpec, Config, Failure, MetadataValue, multi_asset

from ..engine.errors import KryonixError, one_line
from ..engine.tiers import TIERS, TierSpec
from .metadata import RESTORE_POINT_ASSET, TIER_DATA_CHECK, tier_assets
from ..partitions import kryonix_tenants
from .pools import SESSION_POOL, ServicePoolGate
from ..resources import BackupEngineResource
from .events import asset_results

GROUP = "tenant_backups"


class BackupConfig(Config):
    backup_type: str = "incremental"  # full | incremental


class DagsterReporter:
    """Engine messages into the run's log; progress at most every 15 s per task."""

    def __init__(self, log):
        self.log = log
        self._last: dict[str, float] = {}

    def info(self, message: str) -> None:
        self.log.info(message)

    def warn(self, message: str) -> None:
        self.log.warning(message)

    def progress(self, task: str, done: int, total: int | None) -> None:
        """restic's first status of a task says 0 bytes: nothing to log (a short tier would
        otherwise leave only "0 bytes of N" in the run's log; its end line gives the bytes)."""
        now = time.monotonic()
        if done > 0 and now - self._last.get(task, 0) >= 15:
            self._last[task] = now
            self.log.info(f"{task}: {done} bytes" + (f" of {total}" if total else ""))


def tier_asset_specs(tiers: tuple[TierSpec, ...] = TIERS) -> list[AssetSpec]:
    """One asset per tier, from the tier's own spec. The tiers are siblings: none is derived
    from another (the session only reads them in the seed's phase order, which each asset's
    description and metadata name); all of them feed the restore point."""
    return [
        AssetSpec(key=t.asset_key, group_name=GROUP, kinds=set(t.kinds), skippable=True,
                  description=f"{t.description} (read in phase {t.phase!r} of the session)")
        for t in tiers
    ]


def restore_point_spec(tier_specs: list[AssetSpec]) -> AssetSpec:
    return AssetSpec(
        key=RESTORE_POINT_ASSET, group_name=GROUP, kinds={"restic"}, skippable=True,
        deps=[spec.key for spec in tier_specs],
        description="The session's manifest, written last: a materialization here is a restorable point "
                    "(`kryonix-backup restore ID --snapshot SESSION`).",
    )


# Partitioned check specs are a preview in Dagster 1.13 (FACTS.md); this module is imported by
# the CLI too, whose stderr must not carry the preview notice on every backup.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Specifying a partitions_def")
    CONSISTENCY_CHECK = AssetCheckSpec(
        "consistency", asset=RESTORE_POINT_ASSET, partitions_def=kryonix_tenants,  # a result per tenant
        description="Cross-service consistency of what the session captured: database ↔ objects, cache ↔ rows, "
                    "expected queues ↔ vhost, config ↔ files. Fails naming what is missing; ERROR below the threshold.",
    )
    TIER_DATA_CHECK_SPEC = AssetCheckSpec(
        TIER_DATA_CHECK, asset=RESTORE_POINT_ASSET, partitions_def=kryonix_tenants,
        description="No tier came out empty while the previous restore point had items in it (a wiped Redis "
                    "namespace, emptied buckets): such a session is a restore point of lost data, and "
                    "`restore` without --snapshot warns and names the newest point that still has the data.",
    )


def build_backup_session(tiers: tuple[TierSpec, ...] = TIERS, name: str = "tenant_backup_session"):
    """The session multi-asset of a list of tiers: one asset per tier plus the restore point."""
    tier_specs = tier_asset_specs(tiers)

    @multi_asset(
        name=name,
        specs=[*tier_specs, restore_point_spec(tier_specs)],
        check_specs=[CONSISTENCY_CHECK, TIER_DATA_CHECK_SPEC],
        partitions_def=kryonix_tenants,
        can_subset=False,
        pool=SESSION_POOL,
    )
    def backup_session(context: AssetExecutionContext, config: BackupConfig, engine: BackupEngineResource):
        """One coordinated backup session of the partition's tenant, all tiers."""
        tenant_id = context.partition_key
        gate = ServicePoolGate(context.instance, context.run_id, context.op.name, context.log)
        try:
            result = engine.backup(tenant_id, config.backup_type, DagsterReporter(context.log), gate=gate,
                                   tiers=tiers)
        except KryonixError as exc:
            raise Failure(description=one_line(str(exc)), metadata={"tenant": tenant_id}) from None
        yield from asset_results(result, tier_assets(tiers))
        if not result.success:
            raise session_failure(result)

    return backup_session


TIER_SPECS = tier_asset_specs()
RESTORE_POINT_SPEC = restore_point_spec(TIER_SPECS)
tenant_backup_session = build_backup_session()


def session_failure(result) -> Failure:
    failed = {n: t.error for n, t in result.tiers.items() if t.error}
    return Failure(
        description=f"tenant {result.tenant_id}: session {result.session_id} {result.status}: {result.error}",
        metadata={"tenant": result.tenant_id, "session": result.session_id, "status": result.status,
                  "failed_tiers": MetadataValue.json(failed)},
    )
