"""All tiers: seed → back up → destroy → restore → compare through independent clients."""
import json
import time

import pika
import redis

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.naming import names_for

from . import observe
from .helpers_tenant import destroy


def session_of(cli, tid, *extra):
    result = cli("backup", tid, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["sessions"][0]


def without_templates(files: dict) -> dict:
    return {k: v for k, v in files.items() if "/biometric/templates/" not in f"/{k}"}


def test_all_tiers_restore_as_one_restore_point(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.2)
    names = names_for(settings, tid)
    before = observe.tenant_state(settings, tid)
    session = session_of(cli, tid)
    assert {n: t["status"] for n, t in session["tiers"].items()} == {
        "postgresql": "ok", "redis": "ok", "object_storage": "ok", "rabbitmq": "ok", "appdata": "ok", "compliance": "ok"}
    assert session["consistency"]["consistent"] is True and session["consistency"]["score"] == 100.0
    # the backup changed no queue depth and lost no message
    assert observe.vhost_state(names.vhost)["depths"] == before["vhost"]["depths"]
    assert observe.vhost_messages(names.vhost) == before["messages"]

    destroy(settings, tid)
    assert observe.tenant_state(settings, tid)["objects"] == {}
    restored = cli("restore", tid, "--yes", "--snapshot", "latest", "--json")
    assert restored.returncode == 0, restored.stderr
    doc = json.loads(restored.stdout)
    assert doc["session"] == session["session"]
    assert set(doc["tiers"]) == {"postgresql", "redis", "object_storage", "rabbitmq", "appdata"}
    assert "compliance" in doc["skipped"]

    after = observe.tenant_state(settings, tid)
    assert after["tables"] == before["tables"]
    assert after["objects"] == before["objects"]          # bytes, content type, metadata, tags
    assert after["redis"] == before["redis"]              # types, values, TTL presence
    assert after["vhost"] == before["vhost"]              # definitions and depths
    assert after["messages"] == before["messages"]        # bodies, headers, properties, order
    assert after["files"] == without_templates(before["files"])  # templates were never backed up


def test_one_service_at_a_time(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.1)
    names = names_for(settings, tid)
    before = observe.tenant_state(settings, tid)
    session_of(cli, tid)
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(*client.scan_iter(match=names.redis_match))
    observe.psql(names.database, "UPDATE crm.contatos SET nome = 'depois'")
    changed_tables = observe.table_checksums(names.database)
    result = cli("restore", tid, "--yes", "--services", "redis")
    assert result.returncode == 0, result.stderr
    assert f"redis: restored {len(before['redis'])} item(s) into tenant {tid}, removed 0 the restore point lacks" \
        in result.stdout
    after = observe.tenant_state(settings, tid)
    assert after["redis"] == before["redis"]
    assert after["tables"] == changed_tables  # PostgreSQL was not part of this restore

    # a key, an object, a file and a message made after the backup: the restore deletes them and counts them
    new_key = f"{names.redis_prefix}depois:novo".encode()
    client.set(new_key, b"novo")
    s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    bucket = sorted(before["objects"])[0]
    s3.put_object(Bucket=bucket, Key="depois/novo.txt", Body=b"novo")
    new_file = names.app_data_dir / "depois-novo.txt"
    new_file.write_bytes(b"novo")
    publish(settings, names.vhost, "mobile.sync", b"novo")
    assert observe.vhost_state(names.vhost)["depths"]["mobile.sync"] == before["vhost"]["depths"]["mobile.sync"] + 1
    result = cli("restore", tid, "--yes", "--services", "redis,object_storage,rabbitmq,appdata", "--json")
    assert result.returncode == 0, result.stderr
    removed = {name: tier["removed"] for name, tier in json.loads(result.stdout)["tiers"].items()}
    assert removed == {"redis": 1, "object_storage": 1, "rabbitmq": 1, "appdata": 1}
    assert client.exists(new_key) == 0
    assert "depois/novo.txt" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert not new_file.exists()
    after = observe.tenant_state(settings, tid)
    for part in ("redis", "objects", "vhost", "messages", "files"):
        assert after[part] == before[part], part


def publish(settings, vhost: str, queue: str, body: bytes) -> None:
    params = pika.URLParameters(settings.amqp_url)
    params.virtual_host = vhost
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange="", routing_key=queue, body=body, properties=pika.BasicProperties(delivery_mode=2),
                              mandatory=True)
    finally:
        connection.close()


def test_ttls_count_down_and_expired_keys_stay_dead(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    names = names_for(settings, tid)
    client = redis.Redis.from_url(settings.redis_url)
    short, long_ = f"{names.redis_prefix}curto", f"{names.redis_prefix}longo"
    set_at = time.monotonic()
    client.set(short, b"\x00some", px=2500)
    client.set(long_, b"fica", ex=3600)
    set_done = time.monotonic()
    client.xadd(f"{names.redis_prefix}fluxo", {b"\xffbin": b"\x00val"})
    session_of(cli, tid)
    deadline = time.monotonic() + 30  # the short key expires on its own (PTTL -2: gone)
    while client.pttl(short) != -2:
        assert time.monotonic() < deadline, f"{short} did not expire"
        time.sleep(0.1)
    client.delete(long_)
    assert cli("restore", tid, "--yes", "--services", "redis").returncode == 0
    assert client.exists(short) == 0
    # the restored key keeps its absolute expiry (set + 3600 s, to the second): its TTL counted
    # down by the time since it was set, however long the session and the restore took
    since_set = time.monotonic() - set_done
    ttl = client.ttl(long_)
    elapsed = time.monotonic() - set_at
    assert client.get(long_) == b"fica"
    assert 3600 - elapsed - 2 <= ttl <= 3600 - int(since_set) + 1, (ttl, since_set, elapsed)
    assert client.xrange(f"{names.redis_prefix}fluxo")[0][1] == {b"\xffbin": b"\x00val"}


def test_awkward_keys_versions_and_incremental_objects(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    names = names_for(settings, tid)
    s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    bucket = f"cliente-{tid}-versionado"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    awkward = ["a", "a/b", "a b/c  d.txt", "ünïcødé/日本.txt", "x/../y.txt", "..dots..", "deep/" + "/".join("abcdefgh") + "/z",
               "empty.bin"]
    for key in awkward:
        body = b"" if key == "empty.bin" else key.encode() * 3
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/x-kryonix", Metadata={"origem": "teste"},
                      Tagging="nivel=1")
    s3.put_object(Bucket=bucket, Key="a", Body=b"second version")
    # the application's file table knows them (an unreferenced object is an orphan, as in the seed)
    rows = ", ".join(f"('versionado', $k${key}$k$, 'text/x-kryonix', {len(key) * 3})" for key in awkward)
    observe.psql(names.database, f"INSERT INTO portal.arquivos (bucket, object_key, content_type, tamanho) VALUES {rows}")
    latest_version = s3.head_object(Bucket=bucket, Key="a")["VersionId"]
    before = observe.bucket_state(s3, names.bucket_prefix)
    assert set(before[bucket]) == set(awkward)

    first = session_of(cli, tid, "--type", "full")["tiers"]["object_storage"]
    objects = first["items"]
    assert first["details"]["downloaded"] == objects
    assert first["details"]["version_ids"][f"{bucket}/a"] == latest_version
    assert f"cliente-{tid}-versionado" in first["details"]["versioned_buckets"]

    again = session_of(cli, tid)["tiers"]["object_storage"]
    assert again["details"]["downloaded"] == 0 and again["details"]["reused"] == objects
    assert again["bytes_added"] < 0.01 * first["bytes_added"]

    s3.put_object(Bucket=bucket, Key="a b/c  d.txt", Body=b"changed", ContentType="text/plain")
    changed = session_of(cli, tid)["tiers"]["object_storage"]
    assert changed["details"]["downloaded"] == 1
    after_change = observe.bucket_state(s3, names.bucket_prefix)

    destroy(settings, tid, database=False)
    assert cli("restore", tid, "--yes", "--services", "object_storage").returncode == 0
    restored = observe.bucket_state(s3, names.bucket_prefix)
    assert restored == after_change


def test_tenant_1_and_10_stay_apart(settings, cli, tenant_factory):
    one, ten = tenant_factory("1"), tenant_factory("10")
    assert ten.startswith(one)  # the id of one is a prefix of the other's
    seed_tenant(settings, one, scale=0.1)
    seed_tenant(settings, ten, scale=0.15)
    ten_before = observe.tenant_state(settings, ten)
    one_before = observe.tenant_state(settings, one)
    session = session_of(cli, one)
    assert session["tiers"]["object_storage"]["details"]["buckets"] == [f"cliente-{one}-documentos", f"cliente-{one}-media"]
    assert session["tiers"]["redis"]["items"] == len(one_before["redis"])
    destroy(settings, one)
    assert observe.tenant_state(settings, ten) == ten_before
    assert cli("restore", one, "--yes").returncode == 0
    assert observe.tenant_state(settings, ten) == ten_before
    one_after = observe.tenant_state(settings, one)
    assert one_after["tables"] == one_before["tables"] and one_after["objects"] == one_before["objects"]


def test_into_another_tenant_renames_every_name(settings, cli, tenant_factory):
    source, target = tenant_factory("s"), tenant_factory("t")
    seed_tenant(settings, source, scale=0.1)
    assert cli("tenants", "add", target, "--name", "Clone", "--plan", "pro").returncode == 0
    src_before = observe.tenant_state(settings, source)
    session_of(cli, source)
    result = cli("restore", source, "--yes", "--into", target, "--json")
    assert result.returncode == 0, result.stderr
    assert observe.tenant_state(settings, source) == src_before
    dst = observe.tenant_state(settings, target)
    assert dst["tables"] == src_before["tables"]
    rename = lambda name: name.replace(f"cliente-{source}-", f"cliente-{target}-")  # noqa: E731
    assert dst["objects"] == {rename(b): v for b, v in src_before["objects"].items()}
    prefix_s, prefix_t = f"cliente:{source}:".encode(), f"cliente:{target}:".encode()
    assert dst["redis"] == {prefix_t + k[len(prefix_s):]: v for k, v in src_before["redis"].items()}
    assert dst["vhost"] == src_before["vhost"] and dst["messages"] == src_before["messages"]
    assert dst["files"] == without_templates(src_before["files"])


def test_headers_of_every_amqp_type_survive(settings, cli, tenant_factory):
    import datetime
    import decimal

    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    vhost = names_for(settings, tid).vhost
    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/")
    params.virtual_host = vhost
    conn = pika.BlockingConnection(params)
    channel = conn.channel()
    headers = {"bytes": b"\x00\xff", "nested": {"a": 1, "b": [1, "x"]}, "dec": decimal.Decimal("12.34"),
               "when": datetime.datetime(2026, 1, 2, 3, 4, 5), "flag": True, "n": -7, "text": "ção"}
    channel.basic_publish("", "dead.letters", b"\x00corpo\xff", pika.BasicProperties(
        headers=headers, delivery_mode=2, expiration="600000", app_id="teste", reply_to="resposta", type="t"))
    conn.close()
    before = observe.vhost_messages(vhost)
    session_of(cli, tid)
    destroy(settings, tid, database=False)
    assert cli("restore", tid, "--yes", "--services", "rabbitmq").returncode == 0
    assert observe.vhost_messages(vhost) == before
    assert before["dead.letters"][0][1]["dec"] == decimal.Decimal("12.34")


def test_biometric_templates_never_reach_a_snapshot(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    names = names_for(settings, tid)
    templates = list((names.app_data_dir / "mobile" / "biometric" / "templates").iterdir())
    assert templates
    session = session_of(cli, tid)
    snap = session["tiers"]["appdata"]["snapshots"]["files"]
    listing = cli("restic", tid, "--", "ls", "--json", snap)
    assert listing.returncode == 0
    paths = [json.loads(line).get("path", "") for line in listing.stdout.splitlines() if line.strip()]
    assert any(p.endswith("mobile/biometric/settings.json") for p in paths)
    assert not [p for p in paths if "templates" in p]
    # a restore keeps the templates that live on the machine
    assert cli("restore", tid, "--yes", "--services", "appdata").returncode == 0
    assert sorted(p.name for p in (names.app_data_dir / "mobile/biometric/templates").iterdir()) == \
        sorted(p.name for p in templates)
