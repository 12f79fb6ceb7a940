"""The partition sensor keeps `kryonix_tenants` equal to the registry, in batches."""
import json

from dagster import (AddDynamicPartitionsRequest, DagsterInstance, DeleteDynamicPartitionsRequest,
                     SkipReason, build_sensor_context)

from kryonix_dagster.engine import pg, registry
from kryonix_dagster.partitions import KRYONIX_TENANTS
from kryonix_dagster.resources import PostgresResource
from kryonix_dagster.fleet.tenant_partitions import (BATCH_SIZE, MAX_CHANGES_PER_TICK, partition_changes,
                                                       tenant_partitions_sensor)


def tick(instance, own, cursor=None):
    context = build_sensor_context(instance=instance, cursor=cursor,
                                   resources={"postgres": PostgresResource(main_db=own.main_db)})
    result = tenant_partitions_sensor(context)
    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        if isinstance(request, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        elif isinstance(request, DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def test_adds_new_removes_deleted_keeps_inactive(own_registry):
    own = own_registry
    for tid, plan in (("alpha1", "basic"), ("beta2", "pro"), ("gama3", "enterprise")):
        registry.add_tenant(own, tid, f"Tenant {tid}", plan)
    with DagsterInstance.ephemeral() as instance:
        result = tick(instance, own)
        assert [type(r) for r in result.dynamic_partitions_requests] == [AddDynamicPartitionsRequest]
        assert sorted(instance.get_dynamic_partitions(KRYONIX_TENANTS)) == ["alpha1", "beta2", "gama3"]
        cursor = json.loads(result.cursor)
        assert cursor["tenants"] == 3 and cursor["pending"] == 0

        registry.set_status(own, "beta2", "inativo")
        with pg.connection(own.pg_dsn, own.main_db) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM tenants.clientes WHERE id = 'gama3'")
        registry.add_tenant(own, "delta4", "Tenant delta4", "basic")
        result = tick(instance, own, result.cursor)
        kinds = sorted(type(r).__name__ for r in result.dynamic_partitions_requests)
        assert kinds == ["AddDynamicPartitionsRequest", "DeleteDynamicPartitionsRequest"]
        assert sorted(instance.get_dynamic_partitions(KRYONIX_TENANTS)) == ["alpha1", "beta2", "delta4"]

        again = tick(instance, own, result.cursor)
        assert not again.dynamic_partitions_requests and "in sync" in again.skip_reason.skip_message


def test_an_empty_registry_never_wipes_partitions(own_registry):
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(KRYONIX_TENANTS, ["keep1", "keep2"])
        result = tick(instance, own_registry)
        assert isinstance(result, SkipReason) and "registry is empty" in result.skip_message
        assert sorted(instance.get_dynamic_partitions(KRYONIX_TENANTS)) == ["keep1", "keep2"]


def test_changes_are_bounded_and_batched():
    registry_ids = [f"t{n}" for n in range(MAX_CHANGES_PER_TICK + 50)]
    to_add, to_delete = partition_changes(registry_ids, ["gone1", "gone2"])
    assert len(to_add) == MAX_CHANGES_PER_TICK and to_delete == []
    to_add, to_delete = partition_changes(["a", "b"], ["b", "c"])
    assert (to_add, to_delete) == (["a"], ["c"])
    assert BATCH_SIZE < MAX_CHANGES_PER_TICK


def test_large_registry_is_sent_in_batches(own_registry):
    own = own_registry
    ids = [f"bulk{n}" for n in range(BATCH_SIZE * 2 + 7)]
    with pg.connection(own.pg_dsn, own.main_db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO tenants.clientes (id, nome, plano) SELECT i, i, 'basic' FROM unnest(%s::text[]) i",
                    (ids,))
    with DagsterInstance.ephemeral() as instance:
        result = tick(instance, own)
        assert [len(r.partition_keys) for r in result.dynamic_partitions_requests] == [BATCH_SIZE, BATCH_SIZE, 7]
        assert sorted(instance.get_dynamic_partitions(KRYONIX_TENANTS)) == sorted(ids)
