"""Hardening of the messaging, Redis and compliance tiers (issue 8, REVIEW.md 6, 14, 15, 17, 21, 26, 35).

Every check goes through an independent path: the RabbitMQ HTTP API with requests, AMQP with
pika, redis-py, psql. Tampered snapshots are written into the tenant's real restic repository
with a manifest entry whose checksum matches them, so only the tier's own validation stands
between them and the live data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import struct
from contextlib import contextmanager
from urllib.parse import quote

import pika
import pytest
import redis
import requests

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.errors import KryonixError
from kryonix_dagster.engine.manifest import find_manifest, tier_tags
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.tenant_repository import open_repository
from kryonix_dagster.engine.tiers import rabbitmq, redis_keys
from kryonix_dagster.engine.reporting import NullReporter
from kryonix_dagster.engine.tiers.base import RestoreContext

from . import observe

API = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")


# --- independent RabbitMQ helpers (requests + pika, never the product's client) ----------------

def q(name: str) -> str:
    return quote(name, safe="")


def api(method: str, path: str, body=None, ok=(200, 201, 204)):
    resp = requests.request(method, f"{API}{path}", auth=AUTH, json=body, timeout=30)
    assert resp.status_code in ok, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp.json() if resp.content else None


def permissions_of(vhost: str) -> dict[str, tuple]:
    return {p["user"]: (p["configure"], p["write"], p["read"]) for p in api("GET", f"/vhosts/{q(vhost)}/permissions")}


def topic_permissions_of(vhost: str) -> dict[tuple, tuple]:
    return {(p["user"], p["exchange"]): (p["write"], p["read"])
            for p in api("GET", f"/vhosts/{q(vhost)}/topic-permissions")}


@contextmanager
def rabbit_users(*names: str):
    """Real RabbitMQ users, deleted afterwards."""
    for name in names:
        api("PUT", f"/users/{q(name)}", {"password": secrets.token_hex(8), "tags": ""})
    try:
        yield names
    finally:
        for name in names:
            api("DELETE", f"/users/{q(name)}", ok=(200, 204, 404))


def grant(vhost: str, user: str, configure=".*", write=".*", read=".*") -> None:
    api("PUT", f"/permissions/{q(vhost)}/{q(user)}", {"configure": configure, "write": write, "read": read})


def amqp_channel(vhost: str):
    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/")
    params.virtual_host = vhost
    connection = pika.BlockingConnection(params)
    return connection, connection.channel()


def restore_json(cli, *args: str) -> dict:
    result = cli("restore", *args, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def backup_session(cli, tid: str) -> dict:
    result = cli("backup", tid, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["sessions"][0]


# --- tampered snapshots: a tier entry whose checksum matches bytes the test wrote ------------------

def tier_context(settings, tid: str, tier: str, into: str | None = None):
    repo = open_repository(settings, tid)
    manifest = find_manifest(repo, "latest")
    return RestoreContext(settings, names_for(settings, tid), names_for(settings, into or tid), repo, manifest,
                          manifest.tiers[tier], NullReporter())


def with_stream(ctx: RestoreContext, part: str, filename: str, data: bytes, checksum: str | None = None):
    """The same context, its tier entry pointing at a new snapshot holding `data`."""
    summary = ctx.repo.backup_bytes(data, filename, tier_tags(ctx.manifest.session_id, ctx.result.tier, part, "full"))
    checksums = {**ctx.result.checksums, "stream_sha256": checksum or hashlib.sha256(data).hexdigest()}
    result = dataclasses.replace(ctx.result, snapshots={part: summary.snapshot_id}, checksums=checksums)
    return dataclasses.replace(ctx, result=result)


def rabbit_stream(ctx: RestoreContext) -> tuple[dict, list[bytes]]:
    lines = ctx.repo.dump_bytes(ctx.result.snapshots["vhost"], f"/{rabbitmq.STREAM_FILE}").splitlines()
    return json.loads(lines[0]), lines[1:]


def rabbit_bytes(head: dict, rest: list[bytes]) -> bytes:
    return b"\n".join([json.dumps(head, sort_keys=True).encode(), *rest]) + b"\n"


def assert_one_line_failure(exc: BaseException, tid: str, tier: str) -> None:
    text = str(exc)
    assert "\n" not in text and f"tenant {tid}" in text and f"tier {tier}" in text, text


# --- item 6 / finding 6: --into keeps the target's users, never grants the source's ---------------

def test_into_other_tenant_keeps_target_users_and_grants_none_of_the_source(settings, cli, tenant_factory):
    a, b = tenant_factory("a"), tenant_factory("b")
    seed_tenant(settings, a, scale=0.02)
    seed_tenant(settings, b, scale=0.02)
    va, vb = names_for(settings, a).vhost, names_for(settings, b).vhost
    user_a, user_b = f"app_cliente_{a}", f"app_cliente_{b}"
    with rabbit_users(user_a, user_b):
        grant(va, user_a)
        grant(vb, user_b, "^b\\.", "^b\\.", ".*")
        api("PUT", f"/topic-permissions/{q(vb)}/{q(user_b)}", {"exchange": "amq.topic", "write": "^b", "read": ".*"})
        b_perms, b_topics = permissions_of(vb)[user_b], topic_permissions_of(vb)
        backup_session(cli, a)
        doc = restore_json(cli, a, "--into", b, "--services", "rabbitmq")
        assert doc["success"] is True
        after = permissions_of(vb)
        assert after[user_b] == b_perms                  # the target's own user kept its access
        assert user_a not in after                       # the source's user got nothing on the target
        assert topic_permissions_of(vb) == b_topics
        assert permissions_of(va)[user_a] == (".*", ".*", ".*")  # the source is untouched
        assert observe.vhost_messages(vb) == observe.vhost_messages(va)


# --- finding 17: a same-tenant restore says which access it re-granted ---------------------------

def test_same_tenant_restore_reports_regranted_access_and_keeps_newer_grants(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.02)
    vhost = names_for(settings, tid).vhost
    revoked, newer = f"app_cliente_{tid}", f"relatorios_cliente_{tid}"
    with rabbit_users(revoked, newer):
        grant(vhost, revoked)
        backup_session(cli, tid)
        api("DELETE", f"/permissions/{q(vhost)}/{q(revoked)}")
        grant(vhost, newer, "", "", ".*")
        doc = restore_json(cli, tid, "--services", "rabbitmq")
        warnings = doc["tiers"]["rabbitmq"]["warnings"]
        assert any(revoked in w and "re-granted" in w for w in warnings), warnings
        perms = permissions_of(vhost)
        assert perms[revoked] == (".*", ".*", ".*")
        assert perms[newer] == ("", "", ".*")           # access given after the backup is not taken away


# --- item 10 / finding 14: nothing is deleted before the snapshot is known to load ---------------

def backed_up_vhost(settings, cli, tenant_factory):
    """A small tenant backed up: (id, vhost, its state and messages, the rabbitmq restore context, its stream)."""
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.02)
    vhost = names_for(settings, tid).vhost
    backup_session(cli, tid)
    before = observe.vhost_state(vhost), observe.vhost_messages(vhost)
    ctx = tier_context(settings, tid, "rabbitmq")
    return tid, vhost, before, ctx, rabbit_stream(ctx)


def test_definitions_the_broker_refuses_leave_the_vhost_as_it_was(settings, cli, tenant_factory):
    tid, vhost, before, ctx, (head, rest) = backed_up_vhost(settings, cli, tenant_factory)
    head["definitions"]["exchanges"].append({"name": "quebrada", "type": "x-no-such-type", "durable": True,
                                             "auto_delete": False, "internal": False, "arguments": {}})
    bad = with_stream(ctx, "vhost", rabbitmq.STREAM_FILE, rabbit_bytes(head, rest))
    with pytest.raises(KryonixError) as failure:
        rabbitmq.restore(bad)
    assert_one_line_failure(failure.value, tid, "rabbitmq")
    assert (observe.vhost_state(vhost), observe.vhost_messages(vhost)) == before
    assert not [v for v in api("GET", "/vhosts") if v["name"].startswith(vhost + "~")]  # no staging left


def test_snapshot_that_does_not_match_its_checksum_touches_nothing(settings, cli, tenant_factory):
    tid, vhost, before, ctx, (head, rest) = backed_up_vhost(settings, cli, tenant_factory)
    bad = with_stream(ctx, "vhost", rabbitmq.STREAM_FILE, rabbit_bytes(head, rest[:1]), checksum="0" * 64)
    with pytest.raises(KryonixError) as failure:
        rabbitmq.restore(bad)
    assert_one_line_failure(failure.value, tid, "rabbitmq")
    unchecked = dataclasses.replace(bad, result=dataclasses.replace(bad.result, checksums={}))
    with pytest.raises(KryonixError) as failure:
        rabbitmq.restore(unchecked)  # a manifest stripped of its checksum is not trusted either
    assert_one_line_failure(failure.value, tid, "rabbitmq")
    assert (observe.vhost_state(vhost), observe.vhost_messages(vhost)) == before


# --- finding 26: a tampered snapshot naming another tenant's vhost or users ----------------------

@pytest.mark.parametrize("tamper", ["vhost", "user"])
def test_snapshot_naming_another_tenant_is_refused(settings, cli, tenant_factory, tamper):
    tid, other = tenant_factory("x"), tenant_factory("y")
    seed_tenant(settings, tid, scale=0.02)
    vhost, other_vhost = names_for(settings, tid).vhost, names_for(settings, other).vhost
    other_user = f"app_cliente_{other}"
    with rabbit_users(other_user):
        backup_session(cli, tid)
        before = observe.vhost_state(vhost), observe.vhost_messages(vhost), permissions_of(vhost)
        ctx = tier_context(settings, tid, "rabbitmq")
        head, rest = rabbit_stream(ctx)
        if tamper == "vhost":
            head["vhost"] = other_vhost
        else:
            head["permissions"].append({"user": other_user, "configure": ".*", "write": ".*", "read": ".*"})
        bad = with_stream(ctx, "vhost", rabbitmq.STREAM_FILE, rabbit_bytes(head, rest))
        with pytest.raises(KryonixError) as failure:
            rabbitmq.restore(bad)
        assert_one_line_failure(failure.value, tid, "rabbitmq")
        assert (observe.vhost_state(vhost), observe.vhost_messages(vhost), permissions_of(vhost)) == before


# --- finding 15: reading a quorum queue with a delivery limit would count deliveries -------------

def test_quorum_queue_with_delivery_limit_is_not_drained_by_backups(settings, cli, tenant_factory):
    assert tuple(int(p) for p in api("GET", "/overview")["rabbitmq_version"].split(".")[:2]) >= (3, 8)
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.02)
    vhost = names_for(settings, tid).vhost
    api("PUT", f"/queues/{q(vhost)}/pedidos.qq", {"durable": True, "arguments": {
        "x-queue-type": "quorum", "x-delivery-limit": 1}})
    connection, channel = amqp_channel(vhost)
    channel.confirm_delivery()
    for n in range(3):
        channel.basic_publish("", "pedidos.qq", f"pedido {n}".encode(), pika.BasicProperties(delivery_mode=2))
    connection.close()
    for _ in range(3):
        session = backup_session(cli, tid)
    assert observe.queue_depths(vhost, ["pedidos.qq"]) == {"pedidos.qq": 3}
    details = session["tiers"]["rabbitmq"]["details"]
    assert details["queues_not_captured"] == {"pedidos.qq": "quorum queue with a delivery limit"}


# --- finding 35: topic permissions, vhost limits, parameters, metadata, routing keys ---------------

def test_topic_permissions_limits_parameters_and_routing_keys_round_trip(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.02)
    vhost = names_for(settings, tid).vhost
    user = f"app_cliente_{tid}"
    with rabbit_users(user):
        grant(vhost, user)
        api("PUT", f"/topic-permissions/{q(vhost)}/{q(user)}", {"exchange": "kryonix.eventos", "write": "^mobile\\.",
                                                                 "read": ".*"})
        api("PUT", f"/vhost-limits/{q(vhost)}/max-connections", {"value": 40})
        api("PUT", f"/vhost-limits/{q(vhost)}/max-queues", {"value": 90})
        api("PUT", f"/operator-policies/{q(vhost)}/limite-fila", {"pattern": "^mobile", "apply-to": "queues",
                                                                  "definition": {"max-length": 500000}})
        connection, channel = amqp_channel(vhost)
        channel.confirm_delivery()
        channel.basic_publish("kryonix.eventos", "mobile.android.sync", b"via topic",
                              pika.BasicProperties(delivery_mode=2, message_id="roteada"), mandatory=True)
        connection.close()
        before = observe.vhost_state(vhost), observe.vhost_messages(vhost)
        topics, perms = topic_permissions_of(vhost), permissions_of(vhost)
        limits = api("GET", f"/vhost-limits/{q(vhost)}")
        operator = api("GET", f"/operator-policies/{q(vhost)}")
        backup_session(cli, tid)
        api("DELETE", f"/vhosts/{q(vhost)}")
        restore_json(cli, tid, "--services", "rabbitmq")
        assert (observe.vhost_state(vhost), observe.vhost_messages(vhost)) == before
        assert topic_permissions_of(vhost) == topics and permissions_of(vhost) == perms
        assert api("GET", f"/vhost-limits/{q(vhost)}") == limits
        assert [(p["name"], p["pattern"], p["definition"]) for p in api("GET", f"/operator-policies/{q(vhost)}")] == \
            [(p["name"], p["pattern"], p["definition"]) for p in operator]
        connection, channel = amqp_channel(vhost)
        seen = []
        while True:
            method, props, _body = channel.basic_get("mobile.sync", auto_ack=False)
            if method is None:
                break
            seen.append((props.message_id, method.routing_key))
        connection.close()
        assert ("roteada", "mobile.android.sync") in seen
        assert all(key == "mobile.sync" for mid, key in seen if mid != "roteada")


# --- finding 21: compliance restore keeps newer records and copies by column name ---------------

def test_compliance_restore_keeps_newer_records_and_matches_columns_by_name(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.02)
    db = names_for(settings, tid).database
    backup_session(cli, tid)
    table = "lgpd.log_processamento"
    old = observe.psql(db, f"SELECT id, contato_id, operacao, base_legal, processado_em FROM {table} ORDER BY id")
    assert old
    lost_id = observe.psql(db, f"SELECT min(id) FROM {table}")
    observe.psql(db, f"DELETE FROM {table} WHERE id = {lost_id}")
    changed_id = observe.psql(db, f"SELECT max(id) FROM {table}")
    observe.psql(db, f"UPDATE {table} SET base_legal = 'corrigida' WHERE id = {changed_id}")
    expected = observe.psql(db, f"SELECT id, contato_id, operacao, base_legal, processado_em FROM {table} ORDER BY id")
    observe.psql(db, f"ALTER TABLE {table} ADD COLUMN origem text NOT NULL DEFAULT 'app'")
    observe.psql(db, f"INSERT INTO {table} (id, contato_id, operacao, base_legal, processado_em, origem) "
                     "VALUES (900001, 1, 'exportacao', 'consentimento', now(), 'portal')")
    doc = restore_json(cli, tid, "--services", "compliance")
    assert doc["tiers"]["compliance"]["details"]["tables"]["log_processamento"]["appended"] == 1
    assert any("log_processamento" in w and "live rows were kept" in w for w in doc["tiers"]["compliance"]["warnings"])
    now = observe.psql(db, f"SELECT id, contato_id, operacao, base_legal, processado_em FROM {table} "
                           "WHERE id <> 900001 ORDER BY id")
    first_old = old.splitlines()[0]
    assert now.splitlines() == sorted([first_old, *[r for r in expected.splitlines() if not r.startswith("900001|")]],
                                      key=lambda r: int(r.split("|")[0]))  # the lost record is back, nothing else moved
    assert observe.psql(db, f"SELECT base_legal FROM {table} WHERE id = {changed_id}") == "corrigida"  # live wins
    assert observe.psql(db, f"SELECT origem FROM {table} WHERE id = 900001") == "portal"   # newer record kept
    assert observe.psql(db, f"SELECT origem FROM {table} WHERE id = {lost_id}") == "app"  # new column: its default


# --- Redis: verify the whole snapshot before writing; replace semantics ------------------------

def test_full_restore_removes_keys_added_after_the_backup(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.02)
    names = names_for(settings, tid)
    before = observe.redis_state(settings.redis_url, names.redis_prefix)
    backup_session(cli, tid)
    client = redis.Redis.from_url(settings.redis_url)
    client.set(f"{names.redis_prefix}depois:1", b"extra")
    client.hset(f"{names.redis_prefix}depois:2", "campo", "valor")
    restore_json(cli, tid)
    assert observe.redis_state(settings.redis_url, names.redis_prefix) == before


def test_redis_snapshot_with_a_foreign_key_late_in_the_stream_writes_nothing(settings, cli, tenant_factory):
    tid, other = tenant_factory("r"), tenant_factory("o")
    seed_tenant(settings, tid, scale=0.02)
    names = names_for(settings, tid)
    client = redis.Redis.from_url(settings.redis_url)
    mine = [f"{names.redis_prefix}lote:{n:04d}".encode() for n in range(redis_keys.BATCH + 100)]
    client.mset({k: b"antes" for k in mine})
    backup_session(cli, tid)
    client.mset({k: b"agora" for k in mine})
    before = observe.redis_state(settings.redis_url, names.redis_prefix)
    ctx = tier_context(settings, tid, "redis")
    client.set(f"{names.redis_prefix}falsa", b"valor adulterado")
    payload = client.dump(f"{names.redis_prefix}falsa")
    client.delete(f"{names.redis_prefix}falsa")
    records = [struct.pack("<BII", 1, len(k), len(payload)) + k + payload
               for k in [*mine, f"cliente:{other}:roubada".encode()]]
    data = redis_keys.MAGIC + b"".join(records) + redis_keys.TRAILER
    bad = with_stream(ctx, "keys", redis_keys.STREAM_FILE, data)
    with pytest.raises(KryonixError) as failure:
        redis_keys.restore(bad)
    assert_one_line_failure(failure.value, tid, "redis")
    assert observe.redis_state(settings.redis_url, names.redis_prefix) == before
    assert client.exists(f"cliente:{other}:roubada") == 0
    stripped = dataclasses.replace(bad, result=dataclasses.replace(bad.result, checksums={}))
    with pytest.raises(KryonixError):
        redis_keys.restore(stripped)


def test_a_restore_that_redis_refuses_mid_batch_fails_and_the_client_reads_true_replies(settings, tenant_factory):
    """RESTOREs go out as raw pipelined batches: an error reply stops the restore, and the
    replies still owed on that connection never reach the next command (it would read an OK)."""
    names = names_for(settings, tenant_factory())
    client = redis.Redis.from_url(settings.redis_url, max_connections=1)  # every command on the same connection
    good = [f"{names.redis_prefix}ok:{n}".encode() for n in range(3)]
    client.set(good[0], b"valor")
    payload = client.dump(good[0])
    planned = [(f"{names.redis_prefix}ruim".encode(), redis_keys.NO_EXPIRY, b"not a dump payload"),
               *[(k, redis_keys.NO_EXPIRY, payload) for k in good]]
    try:
        with pytest.raises(redis.ResponseError):
            redis_keys.restore_keys(client, planned, 0)
        assert client.get(good[0]) == b"valor" and client.get(f"{names.redis_prefix}nada") is None
    finally:
        client.delete(*good)
