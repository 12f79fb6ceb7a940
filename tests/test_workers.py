"""Batch runs fanned out over real Celery workers (issue 14): two worker processes on the
product's RabbitMQ, a Dagster instance on PostgreSQL, tiny demo tenants."""
from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import amqp
import pytest
import requests
from dagster import AssetKey, DagsterEventType, DagsterInstance, build_reconstructable_job, execute_job

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine import pg
from kryonix_dagster.engine.naming import DAGSTER_BROKER_VHOST, names_for, tenant_names
from kryonix_dagster.workers.broker import broker_credentials, broker_url, redacted

from . import workers_world
from .helpers import purge_tenant
from .repository_view import restore_points, sessions

celery_workers = workers_world.celery_workers  # fixtures of the module's own
pg_dagster_home = workers_world.pg_dagster_home

SCALE = 0.05


def batch_job():
    return build_reconstructable_job("tests.workers_job", "backup_batch_job")


def run_config(tenants: list[str], mode: str, chunk_size: int) -> dict:
    return {"ops": {"split_active_tenants": {"config": {"tenants": tenants, "backup_type": "incremental",
                                                        "chunk_size": chunk_size}}},
            "execution": {"config": {"mode": mode}}}


def points(settings, tenants: list[str]) -> dict[str, set[str]]:
    """Each tenant's restore points, as restic lists its repository."""
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(tenants, pool.map(lambda t: restore_points(settings, t) if _has_repository(settings, t)
                                          else set(), tenants)))


def _has_repository(settings, tenant_id: str) -> bool:
    return (Path(settings.repo[len("file://"):]) / f"cliente_{tenant_id}" / "config").exists()


def run_restore_points(instance, run_id: str) -> dict[str, list[str]]:
    """{tenant: [session of each restore_point materialization]} the run recorded."""
    found = defaultdict(list)
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        materialization = record.event_log_entry.dagster_event.event_specific_data.materialization
        if materialization.asset_key == AssetKey("restore_point"):
            found[materialization.partition].append(materialization.metadata["session"].value)
    return dict(found)


def assert_one_new_restore_point_each(settings, instance, run_id: str, before: dict[str, set[str]]) -> dict[str, str]:
    """Every tenant has exactly one restore point more in its repository, and it is the one
    the run recorded for it: {tenant: that session}."""
    after = points(settings, list(before))
    new = {t: after[t] - before[t] for t in before}
    assert all(len(sessions_) == 1 and before[t] <= after[t] for t, sessions_ in new.items()), new
    recorded = run_restore_points(instance, run_id)
    assert recorded == {t: sorted(s) for t, s in new.items()}, (recorded, new)
    return {t: next(iter(s)) for t, s in new.items()}


def celery_workers_used(instance, run_id: str) -> set[str]:
    used = set()
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records:
        metadata = record.event_log_entry.dagster_event.event_specific_data.metadata or {}
        if "Celery worker" in metadata:
            used.add(metadata["Celery worker"].value.split("@")[0].split("-")[0])  # w1-<token>@host -> w1
    return used


@pytest.fixture(scope="module")
def six_tenants(settings):
    stem = "w" + secrets.token_hex(3)
    tenants = [f"{stem}{n}" for n in range(6)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda tid: seed_tenant(settings, tid, scale=SCALE), tenants))
    yield tenants
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda tid: purge_tenant(settings, tid), tenants))


def test_broker_vhost_is_no_tenant_vhost():
    assert DAGSTER_BROKER_VHOST == "/kryonix_dagster"
    assert tenant_names("kryonixdagster", "/tmp", "file:///r").vhost != DAGSTER_BROKER_VHOST
    # the broker's own user, never the product's AMQP user (u)
    own = {"KRYONIX_AMQP_URL": "amqp://u:secret@h:5672/", "KRYONIX_CELERY_BROKER_PASSWORD": "b-secret"}
    assert broker_url(own) == "pyamqp://kryonix-broker:b-secret@h:5672/%2Fkryonix_dagster"
    assert "secret" not in redacted(broker_url(own))


def test_the_broker_user_reaches_its_vhost_only(settings, celery_workers, six_tenants):
    """The user the workers and the executor connect as (the product's setup made it): rights on
    the broker vhost and nowhere else, no management access, refused by a tenant's vhost."""
    user, password = broker_credentials()
    assert user == os.environ["KRYONIX_CELERY_BROKER_USER"] and user in broker_url()
    admin = (settings.rabbitmq_api_user, settings.rabbitmq_api_password)
    granted = requests.get(f"{settings.rabbitmq_api}/api/users/{user}/permissions", auth=admin, timeout=10).json()
    assert [(p["vhost"], p["configure"], p["write"], p["read"]) for p in granted] == [
        (DAGSTER_BROKER_VHOST, ".*", ".*", ".*")]
    assert requests.get(f"{settings.rabbitmq_api}/api/vhosts", auth=(user, password), timeout=10).status_code == 401
    tenant_vhost = names_for(settings, six_tenants[0]).vhost
    assert requests.get(f"{settings.rabbitmq_api}/api/vhosts/{quote(tenant_vhost, safe='')}", auth=admin,
                        timeout=10).status_code == 200  # the tenant's vhost exists: the refusal below is a refusal
    with amqp.Connection("127.0.0.1:5672", userid=user, password=password, virtual_host=DAGSTER_BROKER_VHOST) as ok:
        assert ok.connected  # the right password: the refusal below is about the vhost
    with pytest.raises(amqp.exceptions.NotAllowed, match=f"access to vhost '{tenant_vhost}' refused"):
        amqp.Connection("127.0.0.1:5672", userid=user, password=password, virtual_host=tenant_vhost).connect()


def test_a_batch_run_spreads_over_two_workers(settings, celery_workers, pg_dagster_home, six_tenants):
    celery_workers.ensure_running()
    before = points(settings, six_tenants)
    with DagsterInstance.from_config(str(pg_dagster_home)) as instance:
        result = execute_job(batch_job(), instance=instance, run_config=run_config(six_tenants, "celery", 3))
        assert result.success
        assert celery_workers_used(instance, result.run_id) == {"w1", "w2"}
        assert_one_new_restore_point_each(settings, instance, result.run_id, before)  # every tenant, exactly once


def _snapshot_files(settings, tenant_id: str) -> int:
    folder = Path(settings.repo[len("file://"):]) / f"cliente_{tenant_id}" / "snapshots"
    return len(list(folder.iterdir())) if folder.exists() else 0


def _held_leases(settings, tenants: list[str]) -> list[tuple]:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT cliente_id, session_id, holder, acquired_at, expires_at FROM tenants.backup_leases "
                    "WHERE cliente_id = ANY(%s) AND operation = 'backup'", (tenants,))
        return cur.fetchall()


def _kill_mid_session(settings, celery_workers, tenant: str, running: threading.Thread) -> tuple:
    """Wait for `tenant`'s session to have written tier snapshots but no manifest yet; kill -9
    its worker (and its children). Returns (worker, (its session, when it was dead by the host's
    clock, its lease's expiry))."""
    before = _snapshot_files(settings, tenant)
    deadline = time.monotonic() + 240
    while running.is_alive() and time.monotonic() < deadline:
        for _tenant, session, holder, acquired_at, expires_at in _held_leases(settings, [tenant]):
            worker = celery_workers.group_of(int(holder.rsplit(":", 1)[1]))
            if worker and _snapshot_files(settings, tenant) > before:
                celery_workers.kill(worker)
                return worker, (session, datetime.now(timezone.utc), expires_at)
        time.sleep(0.05)
    raise AssertionError(f"tenant {tenant}'s session was not seen mid-way to kill its worker")


def test_killing_a_worker_mid_chunk_redoes_the_rest_without_double_sessions(settings, celery_workers,
                                                                            pg_dagster_home, six_tenants, cli):
    celery_workers.ensure_running()
    # chunk_0 = tenants 0 and 1, chunk_1 = tenant 2: the worker of chunk_0 dies in tenant 1's
    # session, after tenant 0's; the other worker redoes chunk_0, skipping tenant 0
    tenants = six_tenants[:3]
    tenant = tenants[1]
    before = points(settings, tenants)
    outcome: dict = {}
    with DagsterInstance.from_config(str(pg_dagster_home)) as instance:
        def run():
            outcome["result"] = execute_job(batch_job(), instance=instance,
                                            run_config=run_config(tenants, "celery", 2))

        running = threading.Thread(target=run, daemon=True)
        running.start()
        killed_worker, (killed_session, killed_at, _killed_expiry) = _kill_mid_session(
            settings, celery_workers, tenant, running)
        running.join(timeout=300)
        assert not running.is_alive(), "the run did not finish after a worker was killed"
        result = outcome["result"]
        assert result.success
        assert celery_workers_used(instance, result.run_id) == {"w1", "w2"}
        # every tenant backed up exactly once by this run (tenant 0 was skipped by the redone
        # chunk), as its repository and the run's materializations both say
        redo = assert_one_new_restore_point_each(settings, instance, result.run_id, before)[tenant]
    # no half restore point: the killed session wrote tier snapshots but no manifest
    in_repository = sessions(settings, tenant)
    assert in_repository[killed_session]["tier"] and not in_repository[killed_session]["manifest"]
    assert redo != killed_session and in_repository[redo]["manifest"]
    # one clock (the host's): the redo wrote its first snapshot only once the killed session was
    # dead (its lease, held by a process gone from this host, is taken over at once: no TTL wait)
    snapshot_dir = Path(settings.repo[len("file://"):]) / f"cliente_{tenant}" / "snapshots"
    first_write = min(datetime.fromtimestamp((snapshot_dir / snap["id"]).stat().st_mtime, timezone.utc)
                      for snap in in_repository[redo]["tier"] + in_repository[redo]["manifest"])
    assert first_write >= killed_at
    listed = cli("snapshots", tenant, "--json")
    assert listed.returncode == 0, listed.stderr
    listed_sessions = json.dumps(json.loads(listed.stdout))
    assert redo in listed_sessions and killed_session not in listed_sessions
    celery_workers.ensure_running()  # the next test finds both workers again
    assert killed_worker in celery_workers.procs


def test_the_same_job_runs_in_process_without_workers(settings, pg_dagster_home, six_tenants):
    tenants = six_tenants[4:5]
    before = points(settings, tenants)
    with DagsterInstance.from_config(str(pg_dagster_home)) as instance:
        result = execute_job(batch_job(), instance=instance, run_config=run_config(tenants, "in_process", 0))
        assert result.success
        assert celery_workers_used(instance, result.run_id) == set()
        assert_one_new_restore_point_each(settings, instance, result.run_id, before)
    # the check batch jobs fan out the same way: the integrity check of that tenant, in one chunk step
    with DagsterInstance.from_config(str(pg_dagster_home)) as instance:
        checked = execute_job(build_reconstructable_job("tests.workers_job", "integrity_job"), instance=instance,
                              run_config={"ops": {"split_active_tenants": {"config": {"tenants": tenants}}},
                                          "execution": {"config": {"mode": "in_process"}}})
        assert checked.success
        [evaluation] = [e.event_specific_data for e in checked.all_events
                        if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert evaluation.check_name == "integrity" and evaluation.partition == tenants[0] and evaluation.passed


def test_chunks_executor_mode_and_batch_sizes():
    from kryonix_dagster.backup import backup_batch_job  # (first: batching imports backup.metadata)
    from kryonix_dagster.batching import MAX_CHUNK, chunk_size_for, tenant_chunks
    from kryonix_dagster.retention import retention_job
    from kryonix_dagster.scheduling import BATCH_SIZE, MAX_RUNS_PER_TICK, batch_op_name, batch_size_for
    from kryonix_dagster.workers.executor import executor_mode

    for job in (backup_batch_job, retention_job):
        assert batch_op_name(job) == "split_active_tenants" and job.executor_def.name == "kryonix_executor"

    chunks = tenant_chunks([f"t{n}" for n in range(7)], "full", 3)
    assert [c.tenants for c in chunks] == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6"]]
    assert {c.backup_type for c in chunks} == {"full"} and [c.index for c in chunks] == [0, 1, 2]
    assert chunk_size_for(6) == 1 and chunk_size_for(100) == 13 and chunk_size_for(10_000) == MAX_CHUNK
    assert batch_size_for(28) == BATCH_SIZE and batch_size_for(100_000) == 100_000 // MAX_RUNS_PER_TICK
    assert executor_mode(None, {}) == "in_process"
    assert executor_mode(None, {"KRYONIX_EXECUTOR": "celery"}) == "celery"
    assert executor_mode("in_process", {"KRYONIX_EXECUTOR": "celery"}) == "in_process"
    with pytest.raises(ValueError):
        executor_mode("k8s", {})
