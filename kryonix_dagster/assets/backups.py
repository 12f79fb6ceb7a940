"""Per-tenant backups as assets: one materialization per tier per session, plus the
session's restore point. One run of `tenant_backup_session` is one coordinated session of
one tenant (the same engine code the CLI runs)."""

import time

from dagster import AssetCheckSpec, AssetExecutionContext, AssetSpec, Config, Failure, MetadataValue, multi_asset

from ..engine.errors import KryonixError, one_line
from ..engine.session import run_backup
from ..metadata import RESTORE_POINT_ASSET, TIER_ASSETS
from ..partitions import kryonix_tenants
from ..pools import SESSION_POOL, ServicePoolGate
from ..resources import BackupEngineResource
from ..session_events import asset_results

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


@multi_asset(
    name="tenant_backup_session",
    specs=[*TIER_SPECS, RESTORE_POINT_SPEC],
    check_specs=[CONSISTENCY_CHECK],
    partitions_def=kryonix_tenants,
    can_subset=False,
    pool=SESSION_POOL,
)
def tenant_backup_session(context: AssetExecutionContext, config: BackupConfig, engine: BackupEngineResource):
    """One coordinated backup session of the partition's tenant, all tiers."""
    tenant_id = context.partition_key
    gate = ServicePoolGate(context.instance, context.run_id, context.op.name, context.log)
    try:
        result = run_backup(engine.settings(), tenant_id, config.backup_type, DagsterReporter(context.log), gate=gate)
    except KryonixError as exc:
        raise Failure(description=one_line(str(exc)), metadata={"tenant": tenant_id}) from None
    yield from asset_results(result)
    if not result.success:
        raise session_failure(result)


def session_failure(result) -> Failure:
    failed = {n: t.error for n, t in result.tiers.items() if t.error}
    return Failure(
        description=f"tenant {result.tenant_id}: session {result.session_id} {result.status}: {result.error}",
        metadata={"tenant": result.tenant_id, "session": result.session_id, "status": result.status,
                  "failed_tiers": MetadataValue.json(failed)},
    )
