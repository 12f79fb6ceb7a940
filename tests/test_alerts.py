"""Stale-backup and failed-run alerts reach a real local webhook and a real SMTP server."""
import json
import time
from datetime import timedelta

from dagster import (AssetCheckSeverity, DagsterEventType, DagsterInstance, build_run_status_sensor_context,
                     build_sensor_context)

from kryonix_dagster.engine import registry
from kryonix_dagster.engine.fleet import stale_tenant_ids, tenant_statuses
from kryonix_dagster.fleet.freshness import freshness_evaluation, stale_alert
from kryonix_dagster.partitions import KRYONIX_TENANTS
from kryonix_dagster.resources import BackupEngineResource, PostgresResource, resources_from_env
from kryonix_dagster.fleet import failed_runs_sensor, stale_backups_sensor

from .alert_inbox import inbox  # noqa: F401 (a fixture)
from .helpers import failed_session_run
from .repository_view import restore_points


def engine_for(own) -> BackupEngineResource:
    resources = resources_from_env()
    engine = resources["engine"]
    return BackupEngineResource(**{**{k: getattr(engine, k) for k in ("object_storage", "redis", "rabbitmq",
                                                                    "repository", "app_data")},
                                   "postgres": PostgresResource(main_db=own.main_db)})


def wait_for(predicate, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline and not predicate():
        time.sleep(0.1)
    return predicate()


def test_stale_tenant_alerts_once_and_again_when_resolved(own_registry, inbox, cli, tenant_factory, settings):
    from kryonix_dagster.demo import seed_tenant

    tid = tenant_factory()
    seed_tenant(own_registry, tid, scale=0.05)  # registers it active in the test's own registry
    registry.add_tenant(own_registry, tid + "x", "Inativo", "basic")
    registry.set_status(own_registry, tid + "x", "inativo")
    engine = engine_for(own_registry)
    with DagsterInstance.ephemeral() as instance:
        def tick(cursor):
            with build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"engine": engine, "alerts": inbox.alerts}) as context:
                stale_backups_sensor(context)
                return context.cursor

        cursor = tick(None)
        assert wait_for(lambda: len(inbox.webhook) == 1 and len(inbox.mail) == 1)
        alert = inbox.webhook[0]
        assert alert["kryonix"]["kind"] == "stale" and alert["kryonix"]["tenant"] == tid
        assert "never backed up" in alert["text"] and f"Backup stale: tenant {tid}" in inbox.mail[0]
        cursor = tick(cursor)
        cursor = tick(cursor)
        # delivery is synchronous (the receivers record an alert before they answer 200 / 250),
        # so whatever these ticks sent is in the inbox now: nothing, once per incident
        assert len(inbox.webhook) == 1 and len(inbox.mail) == 1

        result = cli("backup", tid, env={"KRYONIX_MAIN_DB": own_registry.main_db})
        assert result.returncode == 0, result.stderr
        cursor = tick(cursor)
        assert wait_for(lambda: len(inbox.webhook) == 2 and len(inbox.mail) == 2)
        assert inbox.webhook[1]["kryonix"]["kind"] == "resolved" and inbox.webhook[1]["kryonix"]["tenant"] == tid
        assert json.loads(cursor) == {}
        tick(cursor)
        assert len(inbox.webhook) == 2 and len(inbox.mail) == 2

    # the same restore point once it is OLD: the clock moves past the plan's RPO (the freshness
    # check and the sensor read the session's time from the audit trail, which restic's
    # manifest confirms; nothing is written to make it old)
    [point] = restore_points(own_registry, tid)
    [fresh] = tenant_statuses(own_registry, tenant_ids=[tid])
    assert fresh.last_session == point and freshness_evaluation(tid, fresh)["passed"] is True
    later = fresh.last_session_at + timedelta(hours=fresh.rpo_hours + 1)
    [old] = tenant_statuses(own_registry, now=later, tenant_ids=[tid])
    assert old.stale and old.age_hours > old.rpo_hours == 8
    assert stale_tenant_ids(own_registry, now=later) == [tid]  # the sensor's query (the inactive one aside)
    evaluation = freshness_evaluation(tid, old)
    assert evaluation["passed"] is False and evaluation["severity"] == AssetCheckSeverity.ERROR
    assert f"latest restore point {old.age_hours:.1f} h old (RPO 8 h)" in evaluation["description"]
    assert inbox.alerts.send(stale_alert(old)) == ["webhook", "email"]
    assert len(inbox.webhook) == len(inbox.mail) == 3
    alert = inbox.webhook[2]["kryonix"]
    assert alert["kind"] == "stale" and alert["tenant"] == tid and alert["last_session"] == point
    assert alert["age_hours"] > alert["rpo_hours"] == 8 and f"{old.age_hours:.1f} h old" in alert["text"]
    assert f"Backup stale: tenant {tid}" in inbox.mail[2]


def test_failed_run_alerts_with_tenant_tier_and_error(inbox, cli, tenant_factory, settings):
    tid = tenant_factory()
    assert cli("tenants", "add", tid, "--name", "Sem banco", "--plan", "pro").returncode == 0
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(KRYONIX_TENANTS, [tid])
        run = failed_session_run(instance, tid)
        failure = next(e for e in instance.all_logs(run.run_id)
                       if e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_FAILURE)
        context = build_run_status_sensor_context(
            sensor_name="failed_runs_sensor", dagster_event=failure.dagster_event, dagster_instance=instance,
            dagster_run=instance.get_run_by_id(run.run_id), resources={"alerts": inbox.alerts},
        ).for_run_failure()
        failed_runs_sensor(context)
    assert wait_for(lambda: inbox.webhook and inbox.mail)
    alert = inbox.webhook[0]
    assert alert["kryonix"]["kind"] == "run_failed" and alert["kryonix"]["tenants"] == [tid]
    assert "postgresql" in alert["text"] and f"kryonix_cliente_{tid} does not exist" in alert["text"]
    assert "postgresql" in inbox.mail[0]
