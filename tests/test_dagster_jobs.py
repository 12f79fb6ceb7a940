"""The batch jobs the schedules request, executed in process on a tenant with a restore point
and judged by its repository (restic) and its services: retention_job, drill_job and
tenant_checks_job."""
from __future__ import annotations

import secrets
from datetime import datetime, timezone

import pytest
from dagster import DagsterInstance

from kryonix_dagster.definitions import defs
from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.naming import scratch_names_for
from kryonix_dagster.engine.verify import rotating_subset
from kryonix_dagster.partitions import KRYONIX_TENANTS

from . import observe
from .conftest import MAIN_DB, run_cli
from .helpers import purge_tenant
from .repository_view import sessions


@pytest.fixture(scope="module")
def backed_up(settings, test_env):
    """A small tenant with one restore point (its session through the CLI)."""
    tid = "j" + secrets.token_hex(4)
    seed_tenant(settings, tid, scale=0.05)
    result = run_cli("backup", tid)
    assert result.returncode == 0, result.stderr
    yield tid
    purge_tenant(settings, tid)


def execute(job_name: str, tid: str, **kwargs):
    """One run of a job of the deployment's definitions, in process, on an instance of its own."""
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(KRYONIX_TENANTS, [tid])
        return defs.resolve_job_def(job_name).execute_in_process(instance=instance, raise_on_error=False, **kwargs)


def batch_of(tid: str) -> dict:
    return {"ops": {"split_active_tenants": {"config": {"tenants": [tid]}}}}


def evaluations(result) -> dict:
    found = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return {e.check_name: e for e in found}


def points(repository: dict) -> dict[str, set[str]]:
    """{restore point session: its snapshot ids}: what a run must leave untouched."""
    return {s: {snap["id"] for snap in parts["manifest"] + parts["tier"]}
            for s, parts in repository.items() if parts["manifest"]}


def assert_scratch_tenant_gone(settings, tid: str) -> None:
    scratch = scratch_names_for(settings, tid)
    assert observe.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE '{scratch.database}%'") == "0"
    assert observe.psql(MAIN_DB, "SELECT count(*) FROM tenants.clientes WHERE id LIKE 'drill%'") == "0"
    client = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    assert observe.bucket_state(client, scratch.bucket_prefix) == {}
    assert observe.redis_state(settings.redis_url, scratch.redis_prefix) == {}
    vhosts = {v["name"] for v in observe.rabbit_api("/vhosts")}
    assert vhosts and scratch.vhost not in vhosts
    assert not scratch.app_data_dir.exists()


def test_retention_job_removes_an_unfinished_session_and_keeps_the_restore_point(settings, backed_up, cli):
    tid = backed_up
    # an unfinished session: a tier snapshot without a manifest, as a killed session leaves it
    unfinished = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    written = cli("restic", tid, "--", "backup", "--stdin", "--stdin-filename", "redis.dump", "--host", "kryonix",
                  "--tag", f"kind=tier,session={unfinished},tier=redis,part=keys,type=incremental", stdin="half")
    assert written.returncode == 0, written.stderr
    before = sessions(settings, tid)
    assert before[unfinished]["tier"] and not before[unfinished]["manifest"]
    kept = points(before)
    assert len(kept) == 1

    result = execute("retention_job", tid, run_config=batch_of(tid))
    assert result.success
    check = evaluations(result)["retention"]
    assert check.partition == tid and check.passed, check.description
    after = sessions(settings, tid)
    assert unfinished not in after  # forgotten (and pruned) by the plan's retention
    assert points(after) == kept  # the restore point, every snapshot of it


def test_drill_job_restores_into_scratch_names_and_removes_them(settings, backed_up):
    tid = backed_up
    before = points(sessions(settings, tid))
    result = execute("drill_job", tid, run_config=batch_of(tid))
    assert result.success
    drill = evaluations(result)["restore_drill"]
    assert drill.partition == tid and drill.passed, drill.description
    assert set(drill.metadata["compared"].value) == {"postgresql", "redis", "object_storage", "rabbitmq", "appdata"}
    assert set(drill.metadata["compared"].value.values()) == {"ok"}
    assert_scratch_tenant_gone(settings, tid)
    assert points(sessions(settings, tid)) == before  # a drill reads the repository, never writes it


def test_tenant_checks_job_runs_every_check_of_the_tenant(settings, backed_up):
    tid = backed_up
    before = points(sessions(settings, tid))
    today = rotating_subset(datetime.now(timezone.utc))
    result = execute("tenant_checks_job", tid, tags={"dagster/partition": tid})
    after_subset = rotating_subset(datetime.now(timezone.utc))  # (a run across midnight reads either)
    assert result.success
    checks = evaluations(result)
    assert set(checks) == {"retention", "freshness", "integrity", "restore_drill"}
    assert all(c.partition == tid and c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
    assert checks["integrity"].metadata["read_data_subset"].value in {today, after_subset}  # the day's seventh
    assert checks["integrity"].metadata["restore_points"].value == len(before) == 1
    assert checks["freshness"].metadata["last_session"].value in before
    assert_scratch_tenant_gone(settings, tid)
    assert points(sessions(settings, tid)) == before
