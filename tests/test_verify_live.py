"""`verify ID --live` (issue 21 item 11): after a restore the live tenant is compared with the
restore point it came from, tier by tier; a changed row, a deleted key, object or file is named
and the command exits 1. The damage is done through the services themselves (psql, redis-py,
boto3, the RabbitMQ API, the file system), never through the product."""
from __future__ import annotations

import json

from urllib.parse import quote

import boto3
import redis
import requests

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.naming import names_for

from . import observe


def test_verify_live_after_a_restore_names_what_differs(settings, cli, tenant_factory, test_env):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    names = names_for(settings, tid)
    assert cli("backup", tid).returncode == 0
    # the tenant moves on and is backed up again; the restore brings back the first session
    observe.psql(names.database, "UPDATE crm.contatos SET nome = nome || ' (editado)'")
    assert cli("backup", tid).returncode == 0
    newest, first = [p["session"] for p in json.loads(cli("snapshots", tid, "--json").stdout)]
    restored = cli("restore", tid, "--snapshot", first, "--yes")
    assert restored.returncode == 0, restored.stderr

    same = cli("verify", tid, "--live", "--json")
    assert same.returncode == 0, same.stdout + same.stderr
    report = json.loads(same.stdout)
    assert report["ok"] and report["session"] == first  # the restore point it came from, not the newest
    assert cli("verify", tid, "--live", "--snapshot", newest).returncode == 1  # the edit is undone: it differs
    unknown = cli("verify", tid, "--live", "--snapshot", "20200101T000000Z-abcdef")
    assert unknown.returncode == 2 and "no restore point" in unknown.stderr, unknown.stderr
    assert {"postgresql", "redis", "object_storage", "rabbitmq", "appdata"} == set(report["tiers"])
    assert all(verdict == "ok" for verdict in report["tiers"].values()), report

    client = redis.Redis.from_url(test_env["KRYONIX_REDIS_URL"])
    keys = sorted(client.scan_iter(match=names.redis_match, count=1000))
    victim = next(k for k in keys if k != names.backup_flag_key.encode())
    assert client.delete(victim) == 1
    changed = next(k for k in keys if k != victim and client.type(k) == b"hash")
    client.hset(changed, "nome", "mudou")
    observe.psql(names.database, "UPDATE crm.contatos SET email = 'mudou@example.com' "
                                 "WHERE id = (SELECT min(id) FROM crm.contatos)")
    s3 = boto3.client("s3", endpoint_url=test_env["KRYONIX_S3_ENDPOINT"], region_name="us-east-1",
                      aws_access_key_id=test_env["KRYONIX_S3_ACCESS_KEY"],
                      aws_secret_access_key=test_env["KRYONIX_S3_SECRET_KEY"])
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if names.owns_bucket(b["Name"])
                  and s3.list_objects_v2(Bucket=b["Name"]).get("KeyCount", 0))
    key = s3.list_objects_v2(Bucket=bucket)["Contents"][0]["Key"]
    s3.delete_object(Bucket=bucket, Key=key)
    vhost = quote(names.vhost, safe="")
    api, auth = test_env["KRYONIX_RABBITMQ_API"] + "/api", ("guest", "guest")
    queue = requests.get(f"{api}/queues/{vhost}", auth=auth, timeout=30).json()[0]["name"]
    assert requests.delete(f"{api}/queues/{vhost}/{quote(queue, safe='')}", auth=auth, timeout=30).status_code == 204
    victim_file = sorted(p for p in names.app_data_dir.rglob("*") if p.is_file())[0]
    victim_file.unlink()

    differs = cli("verify", tid, "--live")
    assert differs.returncode == 1, differs.stdout + differs.stderr
    out = differs.stdout
    assert f"key {victim.decode()}: missing" in out and f"key {changed.decode()}: value differs" in out
    assert "table crm.contatos: rows differ" in out
    assert f"object {bucket}/{key}: missing" in out
    assert f"queue {queue}: missing" in out
    assert f"file {victim_file.relative_to(names.app_data_dir)}: missing" in out
    assert "live data differs" in differs.stderr and "postgresql" in differs.stderr


def test_verify_live_refuses_bad_input_with_exit_2(cli_in_process, tenant_factory):
    never = tenant_factory()  # no repository, no key row: nothing to compare with
    for args, said in ((("verify", never, "--snapshot", "latest"), "--snapshot goes with --live"),
                       (("verify", never, "--live", "--read-data"), "one at a time"),
                       (("verify", never, "--live", "--snapshot", "not a session"), "invalid --snapshot"),
                       (("verify", never, "--live"), "has never been backed up")):
        result = cli_in_process(*args)
        assert result.returncode == 2 and said in result.stderr, (args, result.stderr)
        assert result.stdout == "", args
