"""Plan schedules request runs for exactly the active tenants of their plan, in batches."""
import os
import secrets
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from dagster import DagsterInstance, DefaultScheduleStatus, build_schedule_context, validate_run_config

from kryonix_dagster.engine import pg, registry
from kryonix_dagster.engine.plans import retention_hour
from kryonix_dagster.engine.migrations import migrate
from kryonix_dagster.definitions import defs
from kryonix_dagster.resources import PostgresResource
from kryonix_dagster.backup import BACKUP_SCHEDULES
from kryonix_dagster.drills import DRILL_SCHEDULES
from kryonix_dagster.integrity import INTEGRITY_SCHEDULES
from kryonix_dagster.lgpd import lgpd_retention_schedule
from kryonix_dagster.retention import retention_schedule
from kryonix_dagster.scheduling import BATCH_SIZE, batch_op_name, default_schedule_status

from .conftest import ROOT

PLAN_SCHEDULES = [*BACKUP_SCHEDULES, *INTEGRITY_SCHEDULES, *DRILL_SCHEDULES]


@pytest.fixture
def fleet_registry(own_registry):
    own = own_registry
    tenants = {
        "basic": [f"b{n}" for n in range(BATCH_SIZE + 3)],
        "pro": ["p1", "p2"],
        "enterprise": ["e1"],
    }
    for plan, ids in tenants.items():
        for tid in ids:
            registry.add_tenant(own, tid, tid, plan)
    registry.add_tenant(own, "pgone", "inactive pro", "pro")
    registry.set_status(own, "pgone", "inativo")
    with pg.connection(own.pg_dsn, own.main_db) as conn, conn.cursor() as cur:  # a plan the SaaS invented
        cur.execute("INSERT INTO tenants.clientes (id, nome, plano) VALUES ('gold1', 'gold', 'gold')")
    return own, tenants


def evaluate(schedule, own, when: datetime = datetime(2026, 11, 29, 6, tzinfo=timezone.utc)):
    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(instance=instance, scheduled_execution_time=when,
                                         resources={"postgres": PostgresResource(main_db=own.main_db)})
        return schedule.evaluate_tick(context)


def requested(result) -> list[list[str]]:
    return [next(iter(r.run_config["ops"].values()))["config"]["tenants"] for r in result.run_requests]


def test_each_plan_schedule_requests_its_active_tenants(fleet_registry):
    own, tenants = fleet_registry
    names = {s.name for s in PLAN_SCHEDULES}
    for plan in ("basic", "pro", "enterprise"):
        for kind in ("incremental_backup", "full_backup", "integrity", "restore_drill"):
            assert f"{plan}_{kind}_schedule" in names
    for schedule in PLAN_SCHEDULES:
        plan = schedule.name.split("_")[0]
        result = evaluate(schedule, own)
        batches = requested(result)
        expected = sorted(tenants[plan] + (["gold1"] if plan == "basic" else []))
        assert sorted(t for batch in batches for t in batch) == expected, schedule.name
        assert all(len(batch) <= BATCH_SIZE for batch in batches)
        assert all(r.tags["kryonix/plan"] == plan for r in result.run_requests)
        assert len({r.run_key for r in result.run_requests}) == len(result.run_requests)
        if "backup" in schedule.name:
            kind = "full" if "full" in schedule.name else "incremental"
            assert all(next(iter(r.run_config["ops"].values()))["config"]["backup_type"] == kind
                       for r in result.run_requests)
    basic = next(s for s in PLAN_SCHEDULES if s.name == "basic_incremental_backup_schedule")
    assert [len(b) for b in requested(evaluate(basic, own))] == [BATCH_SIZE, 4]


def test_retention_schedule_covers_every_tenant_and_skips_an_empty_fleet(fleet_registry, settings):
    own, tenants = fleet_registry
    # spread over 04:00-07:00 (America/Sao_Paulo, UTC-3): each tenant once a day
    ticks = [evaluate(retention_schedule, own, datetime(2026, 11, 29, hour + 3, tzinfo=timezone.utc))
             for hour in (4, 5, 6, 7)]
    every = [t for result in ticks for batch in requested(result) for t in batch]
    assert len(every) == len(set(every)) == sum(len(v) for v in tenants.values()) + 2
    assert evaluate(retention_schedule, own, datetime(2026, 11, 29, 15, tzinfo=timezone.utc)).skip_message
    empty = settings.with_overrides(main_db="kryonix_test_empty_" + secrets.token_hex(4))
    migrate(empty)
    try:
        assert isinstance(evaluate(retention_schedule, empty).skip_message, str)
    finally:
        pg.drop_database(settings.pg_dsn, empty.main_db)


def test_each_run_request_configures_the_op_of_its_job(fleet_registry):
    """The op a request configures is derived from the job: a renamed op cannot drift."""
    own, tenants = fleet_registry
    registered = sorted([t for ids in tenants.values() for t in ids] + ["pgone", "gold1"])
    active = {plan: sorted(ids + (["gold1"] if plan == "basic" else [])) for plan, ids in tenants.items()}
    # 07:00 UTC is 04:00 in America/Sao_Paulo: retention's first hour takes its share of the tenants
    expected = {**{s.name: active[s.name.split("_")[0]] for s in PLAN_SCHEDULES},
                retention_schedule.name: [t for t in registered if retention_hour(t) == 4],
                lgpd_retention_schedule.name: registered}
    assert expected[retention_schedule.name], "no fixture tenant has retention at 04:00"
    for schedule in [*PLAN_SCHEDULES, retention_schedule, lgpd_retention_schedule]:
        job_def = defs.resolve_job_def(schedule.job.name)
        result = evaluate(schedule, own, datetime(2026, 11, 29, 7, tzinfo=timezone.utc))
        # the requests exist and name exactly the schedule's tenants before each is checked
        assert len(result.run_requests) == -(-len(expected[schedule.name]) // BATCH_SIZE), schedule.name
        assert sorted(t for batch in requested(result) for t in batch) == expected[schedule.name], schedule.name
        for request in result.run_requests:
            assert list(request.run_config["ops"]) == [batch_op_name(schedule.job)]
            assert validate_run_config(job_def, request.run_config), schedule.name


def test_schedules_start_running_unless_the_setting_says_false():
    assert default_schedule_status({}) == DefaultScheduleStatus.RUNNING
    assert default_schedule_status({"KRYONIX_SCHEDULES_RUNNING": "true"}) == DefaultScheduleStatus.RUNNING
    for off in ("false", "0", "no", "OFF"):
        assert default_schedule_status({"KRYONIX_SCHEDULES_RUNNING": off}) == DefaultScheduleStatus.STOPPED
    code = ("from kryonix_dagster.definitions import defs\n"
            "print(sorted({s.default_status.value for s in defs.get_repository_def().schedule_defs}))")
    for value, expected in (("", ["RUNNING"]), ("false", ["STOPPED"])):
        env = {k: v for k, v in os.environ.items() if k != "KRYONIX_SCHEDULES_RUNNING"}
        if value:
            env["KRYONIX_SCHEDULES_RUNNING"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == repr(expected)


# The cadence as README.md and engine/plans.py document it (seed: incrementals every 6 h, a full
# session at 02:00, retention at 04:00; enterprise incrementals every 3 h; the repository check
# at 06:30; drills weekly on Sunday, enterprise daily), on the clock of America/Sao_Paulo.
DOCUMENTED_CRONS = {
    "basic_incremental_backup_schedule": "0 */6 * * *", "pro_incremental_backup_schedule": "0 */6 * * *",
    "enterprise_incremental_backup_schedule": "0 */3 * * *",
    "basic_full_backup_schedule": "0 2 * * *", "pro_full_backup_schedule": "0 2 * * *",
    "enterprise_full_backup_schedule": "0 2 * * *",
    "basic_integrity_schedule": "30 6 * * *", "pro_integrity_schedule": "30 6 * * *",
    "enterprise_integrity_schedule": "30 6 * * *",
    "basic_restore_drill_schedule": "0 5 * * 0", "pro_restore_drill_schedule": "0 5 * * 0",
    "enterprise_restore_drill_schedule": "0 5 * * *",
    "retention_schedule": "0 4-7 * * *",
}


def test_each_schedule_runs_at_its_documented_time_on_the_sao_paulo_clock():
    schedules = {s.name: s for s in defs.get_repository_def().schedule_defs}
    assert {s.name for s in PLAN_SCHEDULES} | {retention_schedule.name} == set(DOCUMENTED_CRONS)
    for name, cron in DOCUMENTED_CRONS.items():
        assert schedules[name].cron_schedule == cron, name
        assert schedules[name].execution_timezone == "America/Sao_Paulo", name
    # every schedule of the deployment ticks on the same clock
    assert {s.execution_timezone for s in schedules.values()} == {"America/Sao_Paulo"}


def test_a_week_of_integrity_ticks_reads_every_seventh_of_every_tenant(fleet_registry):
    """The daily integrity run takes every active tenant of its plan, and the read-data subset
    rotates with the day: in any 7 consecutive days each tenant's repository is read whole."""
    from kryonix_dagster.engine.verify import rotating_subset

    own, tenants = fleet_registry
    for schedule in INTEGRITY_SCHEDULES:
        plan = schedule.name.split("_")[0]
        active = sorted(tenants[plan] + (["gold1"] if plan == "basic" else []))
        subsets = set()
        for day in range(7):  # Thursday 2026-12-03 .. Wednesday 2026-12-09, 06:30 in São Paulo
            when = datetime(2026, 12, 3 + day, 9, 30, tzinfo=timezone.utc)
            batches = requested(evaluate(schedule, own, when))
            assert batches and sorted(t for batch in batches for t in batch) == active, (schedule.name, when)
            subsets.add(rotating_subset(when))
        assert subsets == {f"{n}/7" for n in range(1, 8)}, schedule.name


def test_the_run_queue_limits_and_pools_name_what_the_definitions_use(fleet_registry):
    """deploy/dagster.yaml's tag limits key on tags the schedules put on their runs, and every
    pool an op, asset or check of the definitions takes has its limit in deploy/pools.sh."""
    import re

    import yaml

    from kryonix_dagster.backup.pools import SERVICE_POOLS

    own, _tenants = fleet_registry
    instance_yaml = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    runs = instance_yaml["concurrency"]["runs"]
    limits = {(limit["key"], limit["value"]): limit["limit"] for limit in runs["tag_concurrency_limits"]}
    assert runs["max_concurrent_runs"] == 8
    assert limits == {("kryonix/plan", "basic"): 3, ("kryonix/plan", "pro"): 3, ("kryonix/plan", "enterprise"): 4,
                      ("kryonix/kind", "integrity"): 2, ("kryonix/kind", "restore_drill"): 1}
    tags = set()
    for schedule in PLAN_SCHEDULES:
        result = evaluate(schedule, own)
        assert result.run_requests, schedule.name
        tags |= {(k, v) for r in result.run_requests for k, v in r.tags.items()}
    assert set(limits) <= tags  # no limit keyed on a tag nobody sets
    assert instance_yaml["run_retries"] == {"enabled": True, "max_retries": 1}

    pools_script = (ROOT / "deploy" / "pools.sh").read_text()
    configured = set(re.findall(r'^\s+"(\w+)": \$\{KRYONIX_POOL_\w+:-\d+\}', pools_script, re.M))
    used = set(SERVICE_POOLS.values())
    for job_def in defs.get_repository_def().get_all_jobs():
        used |= {op_def.pool for op_def in job_def.graph.iterate_op_defs() if op_def.pool}
    assert used and used <= configured, used - configured
    assert {"postgres", "s3", "redis", "rabbitmq", "kryonix_sessions", "kryonix_repository", "kryonix_drills",
            "kryonix_offsite"} == configured
