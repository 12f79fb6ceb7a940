"""Other tiers benchmark (issue 4): ~100 MB of objects, ~200k Redis keys, ~20k messages.

Side by side, in one run:
  our full session            vs  by hand: boto3 download + restic, a SCAN/DUMP script + restic,
                                  rabbitmqadmin export (definitions only) + restic
  our unchanged incremental   vs  the by-hand steps again (they have no incremental mode)
  per tier: objects/s and keys/s for backup and restore, ours vs by hand
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import time
from pathlib import Path

import pika
import redis as redis_lib
import requests

from kryonix_dagster.engine import pg, registry, services
from kryonix_dagster.engine.config import load_settings
from kryonix_dagster.engine.migrations import migrate
from kryonix_dagster.engine.naming import names_for
from tests.helpers import purge_tenant

from .harness import Comparison, Measurement, Report, World, cli, sh, timed, timed_count

TENANT = "benchtiers"


def seed(settings, objects: int, object_size: int, keys: int, messages: int) -> None:
    names = names_for(settings, TENANT)
    registry.ensure_tenant(settings, TENANT, "Bench tiers", "pro")
    pg.create_database(settings.pg_dsn, names.database)  # an empty database: the critical tier has little to do
    s3 = services.s3_client(settings)
    bucket = names.bucket("media")
    services.create_bucket(s3, bucket, settings.s3_region)
    blob = os.urandom(object_size + 4096)
    for n in range(objects):
        s3.put_object(Bucket=bucket, Key=f"fotos/{n // 100}/foto {n:05d}.jpg", Body=blob[n % 4096:][:object_size],
                      ContentType="image/jpeg", Metadata={"n": str(n)})
    client = redis_lib.Redis.from_url(settings.redis_url)
    pipe = client.pipeline(transaction=False)
    for n in range(keys):
        if n % 10 == 0:
            pipe.hset(f"{names.redis_prefix}contato:{n}", mapping={"id": n, "nome": f"Contato {n}"})
        else:
            pipe.set(f"{names.redis_prefix}cache:{n}", f"valor-{n}-" + "x" * 40, ex=86400 if n % 3 == 0 else None)
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()
    api = services.RabbitMQApi(settings)
    api.create_vhost(names.vhost)
    api.set_permissions(names.vhost, settings.rabbitmq_api_user)
    connection = services.amqp_connection(settings, names.vhost)
    channel = connection.channel()
    channel.queue_declare("mobile.sync", durable=True)
    for n in range(messages):
        channel.basic_publish("", "mobile.sync", json.dumps({"op": "upsert", "n": n}).encode(),
                              pika.BasicProperties(delivery_mode=2, headers={"n": n}))
    while channel.queue_declare("mobile.sync", passive=True).method.message_count < messages:
        time.sleep(0.2)
    connection.close()


def by_hand_backup(settings, work: Path, restic_env: dict) -> dict[str, Measurement]:
    """What an operator would script without the product."""
    names = names_for(settings, TENANT)
    out: dict[str, Measurement] = {}
    target = work / "objects"
    shutil.rmtree(target, ignore_errors=True)

    def download() -> int:
        s3 = services.s3_client(settings)
        count = 0
        for bucket in [b["Name"] for b in s3.list_buckets()["Buckets"] if names.owns_bucket(b["Name"])]:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    path = target / bucket / item["Key"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file(bucket, item["Key"], str(path))
                    count += 1
        sh(f"restic backup -q {target}", restic_env)
        return count

    out["objects"] = timed_count("boto3 download + restic backup", download)

    def dump_keys() -> int:
        client = redis_lib.Redis.from_url(settings.redis_url)
        path = work / "redis.dump"
        count = 0
        with path.open("wb") as handle:
            for key in client.scan_iter(match=names.redis_match, count=1000):
                payload, ttl = client.dump(key), client.pttl(key)
                handle.write(struct.pack("<IqI", len(key), ttl, len(payload)) + key + payload)
                count += 1
        sh(f"restic backup -q {path}", restic_env)
        return count

    out["redis"] = timed_count("SCAN/DUMP script + restic backup", dump_keys)

    def export_definitions() -> None:
        path = work / "definitions.json"
        if shutil.which("rabbitmqadmin"):
            sh(f"rabbitmqadmin -V {names.vhost} export {path}")
        else:
            path.write_text(requests.get(f"{settings.rabbitmq_api}/api/definitions/{names.vhost.replace('/', '%2F')}",
                                         auth=("guest", "guest"), timeout=60).text)
        sh(f"restic backup -q {path}", restic_env)

    out["rabbitmq"], _ = timed("rabbitmqadmin export + restic backup (no messages)", export_definitions)
    return out


def by_hand_restore(settings, work: Path) -> dict[str, Measurement]:
    out: dict[str, Measurement] = {}
    s3 = services.s3_client(settings)
    root = work / "objects"

    def upload() -> int:
        count = 0
        for path in root.rglob("*"):
            if path.is_file():
                bucket, key = path.relative_to(root).parts[0], "/".join(path.relative_to(root).parts[1:])
                s3.upload_file(str(path), bucket, key)
                count += 1
        return count

    out["objects"] = timed_count("boto3 upload of the downloaded files", upload)
    client = redis_lib.Redis.from_url(settings.redis_url)

    def restore_keys() -> int:
        data = (work / "redis.dump").read_bytes()
        pos, count = 0, 0
        pipe = client.pipeline(transaction=False)
        while pos < len(data):
            klen, ttl, plen = struct.unpack_from("<IqI", data, pos)
            pos += 16
            key, payload = data[pos:pos + klen], data[pos + klen:pos + klen + plen]
            pos += klen + plen
            pipe.restore(key, max(ttl, 0), payload, replace=True)
            count += 1
            if len(pipe) >= 1000:
                pipe.execute()
        pipe.execute()
        return count

    out["redis"] = timed_count("RESTORE script from the dump file", restore_keys)
    return out


def tier(session: dict, name: str) -> dict:
    return session["tiers"][name]


def run(objects: int, object_size: int, keys: int, messages: int) -> Path:
    world = World("tiers")
    report = Report("tiers")
    settings = load_settings()
    try:
        migrate(settings)
        purge_tenant(settings, TENANT)
        print(f"seeding {objects} objects of {object_size} bytes, {keys} keys, {messages} messages", flush=True)
        seed(settings, objects, object_size, keys, messages)
        report.facts.update(objects=objects, object_bytes=objects * object_size, redis_keys=keys, messages=messages)
        work = world.base / "work"
        work.mkdir()
        restic_env = {"RESTIC_REPOSITORY": str(world.base / "manual-repo"), "RESTIC_PASSWORD": secrets.token_hex(16),
                      "RESTIC_CACHE_DIR": str(world.base / "cache")}
        sh("restic init -q", restic_env)

        full, out = timed("kryonix-backup backup --type full", lambda: cli("backup", TENANT, "--type", "full", "--json"))
        session = json.loads(out)["sessions"][0]
        hand = by_hand_backup(settings, work, restic_env)
        hand_total = Measurement("by hand: objects + redis + definitions", sum(m.seconds for m in hand.values()))
        report.add(Comparison("full session vs by hand", full, hand_total,
                              "ours also captures the 20k messages, app data, compliance and the database"))
        incr, out = timed("kryonix-backup backup (unchanged, incremental)", lambda: cli("backup", TENANT, "--json"))
        again = json.loads(out)["sessions"][0]
        hand_again = by_hand_backup(settings, work, restic_env)
        report.add(Comparison("unchanged incremental session vs by hand again", incr,
                              Measurement("by hand again", sum(m.seconds for m in hand_again.values()))))
        report.add(Comparison("unchanged incremental vs our full session", incr, full))
        report.facts["incremental_objects_downloaded"] = tier(again, "object_storage")["details"]["downloaded"]
        report.facts["incremental_bytes_added"] = again["bytes_added"]

        for name, label in (("object_storage", "objects"), ("redis", "redis")):
            t = tier(session, name)
            ours = Measurement(f"{name} tier (full session)", t["duration_seconds"], count=t["items"])
            report.add(Comparison(f"{label} backup rate", ours, hand[label]))
        t = tier(session, "rabbitmq")
        report.facts["rabbitmq_backup_messages_per_second"] = round(t["items"] / t["duration_seconds"], 1)

        restores = {}
        for name in ("object_storage", "redis", "rabbitmq"):
            m, out = timed(f"kryonix-backup restore --services {name}",
                           lambda n=name: cli("restore", TENANT, "--yes", "--services", n, "--json"))
            m.count = json.loads(out)["tiers"][name]["restored"]
            restores[name] = m
        hand_restore = by_hand_restore(settings, work)
        report.add(Comparison("objects restore rate", restores["object_storage"], hand_restore["objects"]))
        report.add(Comparison("redis restore rate", restores["redis"], hand_restore["redis"]))
        report.facts["rabbitmq_restore_messages_per_second"] = round(
            restores["rabbitmq"].count / restores["rabbitmq"].seconds, 1)
    finally:
        purge_tenant(settings, TENANT)
        world.close()
    return report.write()
