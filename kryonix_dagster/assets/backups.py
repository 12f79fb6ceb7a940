"""Per-tenant backups as assets: one materialization per tier per session, plus the
session's restore point. One run of `tenant_backup_session` is one coordinated session of
one tenant (the same engine code the CLI runs)."""

import time

from dagster import (AssetCheckResult, AssetCheckSpec, AssetExecutionContext, AssetKey,
                     AssetSpec, Config, Failure, MaterializeResult, MetadataValue, multi_asset)

from ..engine.errors import KryonixError, one_line
from ..engine.session import run_backup
from ..metadata import RESTORE_POINT_ASSET, TIER_ASSETS, consistency_evaluation, session_metadata, tier_metadata
from ..partitions import kryonix_tenants
from ..resources import (AppDataResource, BackupRepositoryResource, ObjectStorageResource, PostgresResource,
                         RabbitMQResource, RedisResource, engine_settings)

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
        now = time.monotonic()
        if now - self._last.get(task, 0) >= 15:
            self._last[task] = now
            self.log.info(f"{task}: {done} bytes" + (f" of {total}" if total else ""))


# tier → (kinds, description, upstream tiers): the dependencies follow the seed's phases.
TIER_ASSET_DOCS = {
    "postgresql": ({"postgres", "restic"}, "The tenant's database kryonix_cliente_{id} and its roles: pg_dump (custom "
                   "format) of one snapshot streamed into the tenant's restic repository; rows per table.", []),
    "redis": ({"redis", "restic"}, "The tenant's Redis namespace cliente:{id}:*: SCAN + pipelined DUMP/PTTL, every "
              "type, TTLs kept.", []),
    "object_storage": ({"s3", "restic"}, "The tenant's buckets cliente-{id}-*: bytes, content type, user metadata, "
                       "tags; incremental sessions fetch only changed objects.", ["postgresql", "redis"]),
    "rabbitmq": ({"rabbitmq", "restic"}, "The tenant's vhost /cliente_{id}: definitions, permissions and the "
                 "messages of durable queues, read without loss (depths unchanged).", ["object_storage"]),
    "appdata": ({"restic"}, "The tenant's application folder (config, media, mobile data); biometric templates "
                "are never taken.", ["rabbitmq"]),
    "compliance": ({"postgres", "restic"}, "LGPD tables and audit rows as their own snapshot, tagged for the legal "
                   "retention periods.", ["appdata"]),
}

TIER_SPECS = [
    AssetSpec(key=TIER_ASSETS[tier], group_name=GROUP, kinds=kinds, description=doc, skippable=True,
              deps=[TIER_ASSETS[u] for u in upstream])
    for tier, (kinds, doc, upstream) in TIER_ASSET_DOCS.items()
]
RESTORE_POINT_SPEC = AssetSpec(
    key=RESTORE_POINT_ASSET, group_name=GROUP, kinds={"restic"}, skippable=True,
    deps=[spec.key for spec in TIER_SPECS],
    description="The session's manifest, written last: a materialization here is a restorable point "
                "(`kryonix-backup restore ID --snapshot SESSION`).",
)
CONSISTENCY_CHECK = AssetCheckSpec(
    "consistency", asset=RESTORE_POINT_ASSET,
    description="Cross-service consistency of what the session captured: database ↔ objects, cache ↔ rows, "
                "expected queues ↔ vhost, config ↔ files. Fails naming what is missing; ERROR below the threshold.",
)


def consistency_check_result(result) -> AssetCheckResult:
    return AssetCheckResult(asset_key=RESTORE_POINT_ASSET, check_name="consistency", **consistency_evaluation(result))


@multi_asset(
    name="tenant_backup_session",
    specs=[*TIER_SPECS, RESTORE_POINT_SPEC],
    check_specs=[CONSISTENCY_CHECK],
    partitions_def=kryonix_tenants,
    can_subset=False,
    pool="kryonix_backup_sessions",
)
def tenant_backup_session(
    context: AssetExecutionContext,
    config: BackupConfig,
    postgres: PostgresResource,
    object_storage: ObjectStorageResource,
    redis: RedisResource,
    rabbitmq: RabbitMQResource,
    repository: BackupRepositoryResource,
    app_data: AppDataResource,
):
    """One coordinated backup session of the partition's tenant, all tiers."""
    settings = engine_settings(postgres, object_storage, redis, rabbitmq, repository, app_data)
    tenant_id = context.partition_key
    try:
        result = run_backup(settings, tenant_id, config.backup_type, DagsterReporter(context.log))
    except KryonixError as exc:
        raise Failure(description=one_line(str(exc)), metadata={"tenant": tenant_id}) from None
    for name, tier in result.tiers.items():
        if tier.status == "ok" and name in TIER_ASSETS:
            yield MaterializeResult(asset_key=AssetKey(TIER_ASSETS[name]), metadata=tier_metadata(result, tier))
    if result.restore_point:
        yield MaterializeResult(asset_key=AssetKey(RESTORE_POINT_ASSET), metadata=session_metadata(result))
        yield consistency_check_result(result)
    if not result.success:
        failed = {n: t.error for n, t in result.tiers.items() if t.error}
        raise Failure(
            description=f"tenant {tenant_id}: session {result.session_id} {result.status}: {result.error}",
            metadata={"tenant": tenant_id, "session": result.session_id, "status": result.status,
                      "failed_tiers": MetadataValue.json(failed)},
        )
