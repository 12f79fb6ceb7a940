"""Notifications through Apprise reach a real local JSON receiver (json://) and a real SMTP server
that wants STARTTLS and a login (mailtos://): stale tenants (one message per sensor tick), failed
runs, a multi-tenant backup's summary; a channel that fails never fails the backup."""
import json
import secrets
from datetime import timedelta

from dagster import (AssetCheckSeverity, DagsterEventType, DagsterInstance, build_run_status_sensor_context,
                     build_sensor_context)

from kryonix_dagster.engine import registry
from kryonix_dagster.engine.alerts import NO_CHANNEL, legacy_urls
from kryonix_dagster.engine.fleet import stale_tenant_ids, tenant_statuses
from kryonix_dagster.fleet.freshness import freshness_evaluation, stale_alert
from kryonix_dagster.partitions import KRYONIX_TENANTS
from kryonix_dagster.resources import AlertsResource, BackupEngineResource, PostgresResource, resources_from_env
from kryonix_dagster.fleet import failed_runs_sensor, stale_backups_sensor
from kryonix_dagster.fleet.digest import fleet_digest_sensor
from kryonix_dagster.fleet.freshness import OFFSITE_INCIDENT
from kryonix_dagster.pitr.sensors import INCIDENT as ARCHIVING_INCIDENT

from .alert_inbox import SMTP_PASSWORD, SMTP_USER, inbox  # noqa: F401 (a fixture)
from .conftest import free_port
from .helpers import failed_session_run
from .repository_view import restore_points


def engine_for(own) -> BackupEngineResource:
    resources = resources_from_env()
    engine = resources["engine"]
    return BackupEngineResource(**{**{k: getattr(engine, k) for k in ("object_storage", "redis", "rabbitmq",
                                                                    "repository", "app_data")},
                                   "postgres": PostgresResource(main_db=own.main_db)})


def test_stale_tenants_alert_in_one_message_per_tick_and_again_when_resolved(own_registry, inbox, cli,
                                                                             tenant_factory, settings):
    from kryonix_dagster.demo import seed_tenant

    tid = tenant_factory()
    seed_tenant(own_registry, tid, scale=0.05)  # registers it active in the test's own registry
    other = tenant_factory()
    registry.add_tenant(own_registry, other, "Nunca", "basic")  # active, never backed up: stale too
    registry.add_tenant(own_registry, tid + "x", "Inativo", "basic")
    registry.set_status(own_registry, tid + "x", "inativo")
    engine = engine_for(own_registry)
    with DagsterInstance.ephemeral() as instance:
        def tick(cursor, alerts=inbox.alerts):
            with build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"engine": engine, "alerts": alerts}) as context:
                skip = stale_backups_sensor(context)
                return context.cursor, skip.skip_message

        # no channel: the tick says so, with the alert's text, and keeps nothing open
        _, said = tick(None, AlertsResource())
        assert said.startswith(NO_CHANNEL) and "2 tenant(s) stale" in said
        cursor, said = tick(None)
        # both stale tenants in ONE message on each channel (delivery is synchronous: the receivers
        # record it before they answer 200 / 250)
        assert len(inbox.webhook) == 1 and len(inbox.mail) == 1, (inbox.webhook, inbox.mail)
        alert = inbox.webhook[0]
        assert alert["type"] == "failure" and "2 tenant(s) stale" in alert["title"] and "2 tenant(s) stale" in said
        assert f"{tid} (" in alert["message"] and f"{other} (" in alert["message"]
        assert "never backed up" in alert["message"] and tid + "x" not in alert["message"]
        assert "2 tenant(s) stale" in inbox.mail[0] and f"{other} (Nunca, plan basic): never backed up" in inbox.mail[0]
        assert inbox.logins == [SMTP_USER] and inbox.tls == [True]  # after STARTTLS, with the login
        assert set(json.loads(cursor)) >= {tid, other}
        cursor, _ = tick(cursor)
        cursor, _ = tick(cursor)
        assert len(inbox.webhook) == 1 and len(inbox.mail) == 1  # nothing new: nothing sent

        result = cli("backup", tid, env={"KRYONIX_MAIN_DB": own_registry.main_db})
        assert result.returncode == 0, result.stderr
        cursor, _ = tick(cursor)
        assert len(inbox.webhook) == 2 and len(inbox.mail) == 2
        resolved = inbox.webhook[1]
        assert resolved["type"] == "success" and "1 fresh again" in resolved["title"]
        assert f"Backup fresh again: 1 tenant(s): {tid}" in resolved["message"] and other not in resolved["message"]
        assert set(json.loads(cursor)) - {ARCHIVING_INCIDENT, OFFSITE_INCIDENT} == {other}
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
    assert sorted(stale_tenant_ids(own_registry, now=later)) == sorted([tid, other])  # (the inactive one aside)
    evaluation = freshness_evaluation(tid, old)
    assert evaluation["passed"] is False and evaluation["severity"] == AssetCheckSeverity.ERROR
    assert f"latest restore point {old.age_hours:.1f} h old (RPO 8 h)" in evaluation["description"]
    assert inbox.alerts.send(stale_alert(old)) == ["json://127.0.0.1", "mailtos://127.0.0.1"]
    assert len(inbox.webhook) == len(inbox.mail) == 3
    alert = inbox.webhook[2]
    assert alert["type"] == "failure" and alert["title"] == f"Backup stale: tenant {tid}"
    assert f"latest restore point {old.age_hours:.1f} h old, RPO 8 h" in alert["message"]
    assert f"Subject: Backup stale: tenant {tid}" in inbox.mail[2]

    # the daily digest: one message a day with the fleet's ages, stale tenants, storage, last 24 h
    with DagsterInstance.ephemeral() as instance:
        with build_sensor_context(instance=instance, resources={"engine": engine, "alerts": inbox.alerts}) as context:
            fleet_digest_sensor(context)
            day = context.cursor
        with build_sensor_context(instance=instance, cursor=day,
                                  resources={"engine": engine, "alerts": inbox.alerts}) as context:
            assert "already sent" in fleet_digest_sensor(context).skip_message
    assert len(inbox.webhook) == len(inbox.mail) == 4
    digest = inbox.webhook[3]
    assert digest["type"] == "info" and digest["title"] == f"kryonix-backup daily digest {day}: 3 tenant(s), 1 stale"
    assert f"3 tenant(s), 2 active; 1 stale: {other}" in digest["message"]
    assert f"never backed up: 1 ({other})" in digest["message"] and f"({tid}), oldest" in digest["message"]
    assert "Last 24 h: 1 session(s), 1 tenant(s) backed up" in digest["message"]
    assert "daily digest" in inbox.mail[3]


def failed_run_tick(instance, run_id: str, alerts) -> None:
    """failed_runs_sensor on the run's RUN_FAILURE event, as the daemon would call it."""
    failure = next(e for e in instance.all_logs(run_id)
                   if e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_FAILURE)
    failed_runs_sensor(build_run_status_sensor_context(
        sensor_name="failed_runs_sensor", dagster_event=failure.dagster_event, dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run_id), resources={"alerts": alerts}).for_run_failure())


def test_failed_run_alerts_with_tenant_tier_and_error(inbox, cli, tenant_factory, settings):
    tid = tenant_factory()
    assert cli("tenants", "add", tid, "--name", "Sem banco", "--plan", "pro").returncode == 0
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(KRYONIX_TENANTS, [tid])
        run = failed_session_run(instance, tid)
        failed_run_tick(instance, run.run_id, inbox.alerts)
    assert len(inbox.webhook) == 1 and len(inbox.mail) == 1  # sent before the sensor returned
    alert = inbox.webhook[0]
    assert alert["type"] == "failure" and alert["title"] == f"Backup run failed: {tid}"
    assert "postgresql" in alert["message"] and f"kryonix_cliente_{tid} does not exist" in alert["message"]
    assert "postgresql" in inbox.mail[0] and f"Subject: Backup run failed: {tid}" in inbox.mail[0]


def test_multi_tenant_backup_sends_one_summary_and_a_failing_channel_never_fails_it(inbox, cli, settings,
                                                                                      tenant_factory):
    """The CLI's `backup A B`: one summary (total, succeeded, failed, rate, each failure's reason) on
    KRYONIX_NOTIFY_URLS and on the old KRYONIX_ALERT_* set-up (SMTP with STARTTLS and a login, the
    certificate verified); a dead channel is a warning naming no secret, never the backup's failure."""
    from kryonix_dagster.demo import seed_tenant

    good, good2, broken = tenant_factory(), tenant_factory(), tenant_factory()
    seed_tenant(settings, good, scale=0.02)
    seed_tenant(settings, good2, scale=0.02)
    assert cli("tenants", "add", broken, "--name", "Sem banco", "--plan", "pro").returncode == 0
    token = "T0KEN" + secrets.token_hex(8)
    dead = f"json://kryonix:{token}@127.0.0.1:{free_port()}/services/{token}"  # nothing listens there
    env = {"KRYONIX_NOTIFY_URLS": f"{inbox.json_url} {dead}",
           "KRYONIX_ALERT_SMTP_HOST": "127.0.0.1", "KRYONIX_ALERT_SMTP_PORT": str(inbox.smtp_port),
           "KRYONIX_ALERT_SMTP_USER": SMTP_USER, "KRYONIX_ALERT_SMTP_PASSWORD": SMTP_PASSWORD,
           "KRYONIX_ALERT_SMTP_STARTTLS": "true", "KRYONIX_ALERT_EMAIL_TO": "sre@kryonix.test",
           "KRYONIX_ALERT_EMAIL_FROM": "backup@kryonix.test", "SSL_CERT_FILE": str(inbox.cert)}
    assert legacy_urls(env)[0].startswith("mailtos://")

    result = cli("backup", good, broken, "--json", env=env)
    assert result.returncode == 1, result.stderr  # the broken tenant's failure, not the channels'
    assert json.loads(result.stdout)["summary"]["failed"] == 1  # stdout: the one JSON document
    assert len(inbox.webhook) == 1 and len(inbox.mail) == 1, (inbox.webhook, inbox.mail, result.stderr)
    summary = inbox.webhook[0]
    assert summary["type"] == "failure" and summary["title"] == "kryonix-backup: incremental backup failed for 1 of 2 tenant(s)"
    assert "total 2, succeeded 1, failed 1, success rate 50%" in summary["message"]
    assert f"- {broken}: " in summary["message"] and f"kryonix_cliente_{broken}" in summary["message"]
    assert f"- {good}:" not in summary["message"]
    assert "total 2, succeeded 1, failed 1, success rate 50%" in inbox.mail[0] and inbox.logins == [SMTP_USER]
    assert "summary not delivered to 1 of 3 notification channel(s)" in result.stderr
    for secret in (token, SMTP_PASSWORD):
        assert secret not in result.stderr and secret not in result.stdout

    # all succeeded: no summary, unless KRYONIX_NOTIFY_SUCCESS=true; the dead channel still fails
    result = cli("backup", good, good2, env=env)
    assert result.returncode == 0, result.stderr
    assert len(inbox.webhook) == 1 and len(inbox.mail) == 1
    result = cli("backup", good, good2, env={**env, "KRYONIX_NOTIFY_SUCCESS": "true"})
    assert result.returncode == 0, result.stderr
    assert len(inbox.webhook) == 2 and len(inbox.mail) == 2
    ok = inbox.webhook[1]
    assert ok["type"] == "success" and "total 2, succeeded 2, failed 0, success rate 100%" in ok["message"]
    assert "summary not delivered to 1 of 3" in result.stderr and token not in result.stderr

    # a scheduled batch of the same tenants: the failed-run sensor sends the batch's one summary
    from kryonix_dagster.definitions import defs

    with DagsterInstance.ephemeral() as instance:
        run = defs.get_job_def("backup_batch_job").execute_in_process(
            run_config={"ops": {"split_active_tenants": {"config": {"tenants": [good, broken], "chunk_size": 1}}}},
            instance=instance, raise_on_error=False)
        assert not run.success
        failed_run_tick(instance, run.run_id, inbox.alerts)
    assert len(inbox.webhook) == 3, inbox.webhook
    batch = inbox.webhook[2]
    assert batch["title"] == "kryonix-backup: incremental backup failed for 1 of 2 tenant(s)"
    assert "total 2, succeeded 1, failed 1, success rate 50%" in batch["message"]
    assert f"run {run.run_id[:8]} of backup_batch_job" in batch["message"]
    assert f"- {broken}: " in batch["message"] and f"kryonix_cliente_{broken}" in batch["message"]
