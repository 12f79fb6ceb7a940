"""Keep the `kryonix_tenants` partitions equal to the tenant registry.

New tenants are added, deleted ones removed, inactive ones kept (their history stays
visible). Changes are sent in bulk requests of BATCH_SIZE keys (one INSERT each when the
daemon applies them), at most MAX_CHANGES_PER_TICK per tick, so 100,000 new tenants take
three ticks; the cursor records the registry fingerprint the tick worked from and how many changes
were left for the next tick, which the sensor's tick history shows to operators.
"""

import hashlib
import json

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from ..partitions import KRYONIX_TENANTS, kryonix_tenants
from ..resources import PostgresResource

BATCH_SIZE = 5_000  # keys per add/delete request
MAX_CHANGES_PER_TICK = 34_000  # the rest goes on the next tick


def registry_fingerprint(tenant_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(tenant_ids)).encode()).hexdigest()[:16]


def _batches(keys: list[str]) -> list[list[str]]:
    return [keys[i : i + BATCH_SIZE] for i in range(0, len(keys), BATCH_SIZE)]


def partition_changes(registry_ids: list[str], partition_keys: list[str]) -> tuple[list[str], list[str]]:
    """(to add, to delete), sorted, bounded to MAX_CHANGES_PER_TICK in total."""
    wanted, present = set(registry_ids), set(partition_keys)
    to_add = sorted(wanted - present)[:MAX_CHANGES_PER_TICK]
    to_delete = sorted(present - wanted)[: max(0, MAX_CHANGES_PER_TICK - len(to_add))]
    return to_add, to_delete


@sensor(
    name="tenant_partitions_sensor",
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Keeps the kryonix_tenants partitions equal to tenants.clientes (adds, removes; keeps inactive).",
)
def tenant_partitions_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    registry_ids = postgres.tenant_ids()
    fingerprint = registry_fingerprint(registry_ids)
    present = context.instance.get_dynamic_partitions(KRYONIX_TENANTS)
    if not registry_ids and present:
        # An empty registry next to existing partitions is far likelier a misconfigured
        # KRYONIX_MAIN_DB than every tenant leaving at once: change nothing, say why.
        return SkipReason(f"registry is empty; keeping the {len(present)} existing tenant partitions")
    to_add, to_delete = partition_changes(registry_ids, present)
    pending = len(set(registry_ids) ^ set(present)) - len(to_add) - len(to_delete)
    cursor = json.dumps({"fingerprint": fingerprint, "tenants": len(registry_ids), "pending": pending})
    if not to_add and not to_delete:
        return SensorResult(skip_reason=SkipReason(f"in sync: {len(registry_ids)} tenants"), cursor=cursor)
    context.log.info(f"tenant partitions: adding {len(to_add)}, removing {len(to_delete)}")
    requests = [kryonix_tenants.build_add_request(batch) for batch in _batches(to_add)]
    requests += [kryonix_tenants.build_delete_request(batch) for batch in _batches(to_delete)]
    return SensorResult(dynamic_partitions_requests=requests, cursor=cursor)
