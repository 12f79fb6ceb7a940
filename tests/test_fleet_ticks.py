"""Sensor and schedule ticks at 100,000 tenants (issue 14): at most 100 run requests per tick,
retention spread over four hours, partitions in at most three ticks, stale alerts in bounded waves.
How long each tick takes is measured by `make bench` (benchmarks/bench_fleet.py), not asserted here.

The registry is generated with COPY in a main database of the module's own (seconds)."""
from __future__ import annotations

import io
import json
import secrets
from datetime import datetime, timezone

import pytest
from dagster import DagsterInstance, build_schedule_context, build_sensor_context

from kryonix_dagster.backup import BACKUP_SCHEDULES
from kryonix_dagster.engine import pg
from kryonix_dagster.engine.migrations import migrate
from kryonix_dagster.fleet import stale_backups_sensor, tenant_partitions_sensor
from kryonix_dagster.fleet.freshness import MAX_ALERTS_PER_TICK, OFFSITE_INCIDENT
from kryonix_dagster.partitions import KRYONIX_TENANTS
from kryonix_dagster.pitr.sensors import INCIDENT as ARCHIVING_INCIDENT
from kryonix_dagster.resources import AlertsResource, BackupEngineResource, PostgresResource, resources_from_env
from kryonix_dagster.retention import retention_schedule
from kryonix_dagster.scheduling import MAX_RUNS_PER_TICK

FLEET = 100_000
PLANS = {"basic": 0.6, "pro": 0.3, "enterprise": 0.1}
SAO_PAULO_HOUR = 3  # 03:00 UTC-3 is 06:00 UTC


@pytest.fixture(scope="module")
def fleet(settings):
    """{plan: [tenant ids]} of 100,000 active tenants, registered with one COPY."""
    own = settings.with_overrides(main_db=f"{settings.main_db}_fleet_{secrets.token_hex(3)}")
    migrate(own)
    ids = {plan: [] for plan in PLANS}
    rows = io.StringIO()
    for n in range(FLEET):
        plan = "basic" if n % 10 < 6 else "pro" if n % 10 < 9 else "enterprise"
        tid = f"f{n:06d}"
        ids[plan].append(tid)
        rows.write(f"{tid}\tCliente {n}\t{plan}\n")
    rows.seek(0)
    with pg.connection(own.pg_dsn, own.main_db) as conn, conn.cursor() as cur:
        cur.copy_expert("COPY tenants.clientes (id, nome, plano) FROM STDIN", rows)
        cur.execute("ANALYZE tenants.clientes")
    yield own, ids
    pg.drop_database(settings.pg_dsn, own.main_db)


def schedule_tick(schedule, own, when: datetime):
    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(instance=instance, scheduled_execution_time=when,
                                         resources={"postgres": PostgresResource(main_db=own.main_db)})
        return schedule.evaluate_tick(context)


def requested(result) -> list[str]:
    return [t for r in result.run_requests for t in next(iter(r.run_config["ops"].values()))["config"]["tenants"]]


def test_plan_schedules_bound_the_run_requests(fleet):
    own, ids = fleet
    when = datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    for schedule in BACKUP_SCHEDULES:
        if "incremental" not in schedule.name:
            continue
        plan = schedule.name.split("_")[0]
        result = schedule_tick(schedule, own, when)
        assert 0 < len(result.run_requests) <= MAX_RUNS_PER_TICK
        assert sorted(requested(result)) == ids[plan]  # every tenant of the plan, once


def test_retention_is_spread_over_four_hourly_ticks(fleet):
    own, ids = fleet
    everyone = sorted(t for plan in ids.values() for t in plan)
    seen: list[str] = []
    for local_hour in (4, 5, 6, 7):
        when = datetime(2026, 12, 1, local_hour + 3, tzinfo=timezone.utc)  # America/Sao_Paulo is UTC-3
        result = schedule_tick(retention_schedule, own, when)
        assert 0 < len(result.run_requests) <= MAX_RUNS_PER_TICK
        assert len(requested(result)) < FLEET * 0.3  # about a quarter of the fleet per tick
        seen += requested(result)
    assert sorted(seen) == everyone  # every tenant exactly once a day
    outside = schedule_tick(retention_schedule, own, datetime(2026, 12, 1, 12, tzinfo=timezone.utc))
    assert not outside.run_requests


def test_partition_sensor_brings_100k_tenants_in_three_ticks(fleet):
    own, _ids = fleet
    postgres = PostgresResource(main_db=own.main_db)
    with DagsterInstance.ephemeral() as instance:
        cursor, ticks = None, 0
        while True:
            with build_sensor_context(instance=instance, cursor=cursor, resources={"postgres": postgres}) as context:
                result = tenant_partitions_sensor(context)
            requests = result.dynamic_partitions_requests if hasattr(result, "dynamic_partitions_requests") else []
            if not requests:
                break
            ticks += 1
            assert ticks <= 3, "the partitions took more than three ticks"  # (and the loop ends)
            cursor = result.cursor
            # what the daemon does with the tick's result: one bulk insert per request
            for request in requests:
                instance.add_dynamic_partitions(KRYONIX_TENANTS, request.partition_keys)
        assert len(instance.get_dynamic_partitions(KRYONIX_TENANTS)) == FLEET
        assert json.loads(cursor)["pending"] == 0


def test_stale_sensor_alerts_in_bounded_waves(fleet):
    own, _ids = fleet
    engine = resources_from_env()["engine"]
    engine = BackupEngineResource(**{**{k: getattr(engine, k) for k in ("object_storage", "redis", "rabbitmq",
                                                                       "repository", "app_data")},
                                     "postgres": PostgresResource(main_db=own.main_db)})
    with DagsterInstance.ephemeral() as instance:
        cursor = None
        for tick in (1, 2):
            with build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"engine": engine, "alerts": AlertsResource()}) as context:
                stale_backups_sensor(context)
                cursor = context.cursor
            # nobody was ever backed up: every tenant is stale, a bounded wave per tick
            tenants_alerted = set(json.loads(cursor)) - {ARCHIVING_INCIDENT, OFFSITE_INCIDENT}  # (PITR's, off-site's)
            assert len(tenants_alerted) == tick * MAX_ALERTS_PER_TICK
