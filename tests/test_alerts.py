"""Stale-backup and failed-run alerts reach a real local webhook and a real SMTP server."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from aiosmtpd.controller import Controller
from dagster import (DagsterEventType, DagsterInstance, build_run_status_sensor_context, build_sensor_context)

from kryonix_dagster.engine import registry
from kryonix_dagster.partitions import KRYONIX_TENANTS
from kryonix_dagster.resources import AlertsResource, BackupEngineResource, PostgresResource, resources_from_env
from kryonix_dagster.fleet import failed_runs_sensor, stale_backups_sensor

from .conftest import free_port
from .helpers import failed_session_run


class Inbox:
    def __init__(self):
        self.webhook: list[dict] = []
        self.mail: list[str] = []


@pytest.fixture
def inbox():
    box = Inbox()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            box.webhook.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    http = HTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            box.mail.append(envelope.content.decode(errors="replace"))
            return "250 OK"

    smtp = Controller(Handler(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    box.alerts = AlertsResource(webhook_url=f"http://127.0.0.1:{http.server_port}/hook", smtp_host="127.0.0.1",
                                smtp_port=smtp.port, email_to="sre@kryonix.test")
    yield box
    smtp.stop()
    http.shutdown()


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
        time.sleep(0.5)
        assert len(inbox.webhook) == 1 and len(inbox.mail) == 1  # once per incident

        result = cli("backup", tid, env={"KRYONIX_MAIN_DB": own_registry.main_db})
        assert result.returncode == 0, result.stderr
        cursor = tick(cursor)
        assert wait_for(lambda: len(inbox.webhook) == 2 and len(inbox.mail) == 2)
        assert inbox.webhook[1]["kryonix"]["kind"] == "resolved" and inbox.webhook[1]["kryonix"]["tenant"] == tid
        assert json.loads(cursor) == {}
        tick(cursor)
        time.sleep(0.5)
        assert len(inbox.webhook) == 2


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
