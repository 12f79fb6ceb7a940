"""Independent observers of a tenant's data: psql, boto3, redis-py, the RabbitMQ HTTP API
and file hashes. The product's own code is never used to judge the product."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import boto3
import redis
import requests
from botocore.config import Config


def psql(database: str, query: str) -> str:
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", query],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def table_checksums(database: str, schemas: tuple[str, ...] | None = None) -> dict[str, tuple[int, str]]:
    """schema.table → (row count, md5 of all rows in text form, ordered)."""
    where = "table_schema NOT IN ('pg_catalog', 'information_schema')"
    if schemas:
        where += " AND table_schema IN (" + ",".join(f"'{s}'" for s in schemas) + ")"
    tables = psql(database, f"SELECT table_schema || '.' || table_name FROM information_schema.tables "
                            f"WHERE table_type = 'BASE TABLE' AND {where} ORDER BY 1").split()
    if not tables:
        return {}
    union = " UNION ALL ".join(
        f"SELECT '{t}', count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x"
        for t in tables)
    result = {}
    for line in psql(database, union).splitlines():
        name, count, digest = line.split("|")
        result[name] = (int(count), digest)
    return result


def sequences(database: str) -> dict[str, int]:
    out = psql(database, "SELECT schemaname || '.' || sequencename, coalesce(last_value, 0) FROM pg_sequences ORDER BY 1")
    return {name: int(v) for name, v in (line.split("|") for line in out.splitlines())}


def s3(endpoint: str, access_key: str, secret_key: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def bucket_state(client, prefix: str, with_bytes: bool = True) -> dict:
    """bucket → key → (sha256, size, content type, user metadata, tags)."""
    state = {}
    for bucket in sorted(b["Name"] for b in client.list_buckets()["Buckets"]):
        if not bucket.startswith(prefix):
            continue
        objects = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                key = item["Key"]
                got = client.get_object(Bucket=bucket, Key=key)
                body = got["Body"].read()
                tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
                objects[key] = (
                    hashlib.sha256(body).hexdigest() if with_bytes else None,
                    len(body), got["ContentType"], dict(got.get("Metadata", {})),
                    tuple(sorted((t["Key"], t["Value"]) for t in tags)),
                )
        state[bucket] = objects
    return state


def redis_state(url: str, prefix: str) -> dict[bytes, tuple]:
    """key → (type, canonical value, has_ttl)."""
    client = redis.Redis.from_url(url)
    state = {}
    for key in sorted(client.scan_iter(match=prefix + "*", count=1000)):
        kind = client.type(key).decode()
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = tuple(sorted(client.hgetall(key).items()))
        elif kind == "list":
            value = tuple(client.lrange(key, 0, -1))
        elif kind == "set":
            value = tuple(sorted(client.smembers(key)))
        elif kind == "zset":
            value = tuple(client.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            value = tuple((eid, tuple(sorted(fields.items()))) for eid, fields in client.xrange(key))
        else:
            value = kind
        state[key] = (kind, value, client.pttl(key) > 0)
    return state


def rabbit_api(path: str):
    resp = requests.get(f"http://127.0.0.1:15672/api{path}", auth=("guest", "guest"), timeout=30)
    resp.raise_for_status()
    return resp.json()


def vhost_state(vhost: str) -> dict:
    """Definitions (without volatile fields) and queue depths of a vhost, via the HTTP API."""
    from urllib.parse import quote

    v = quote(vhost, safe="")
    defs = rabbit_api(f"/definitions/{v}")
    return {
        "exchanges": sorted((e["name"], e["type"], e["durable"], tuple(sorted(e["arguments"].items())))
                            for e in defs.get("exchanges", [])),
        "queues": sorted((q["name"], q["durable"], tuple(sorted(q["arguments"].items())))
                         for q in defs.get("queues", [])),
        "bindings": sorted((b["source"], b["destination"], b["destination_type"], b["routing_key"],
                            tuple(sorted(b["arguments"].items()))) for b in defs.get("bindings", [])),
        "policies": sorted((p["name"], p["pattern"], p["apply-to"], tuple(sorted(p["definition"].items())))
                           for p in defs.get("policies", [])),
        "depths": queue_depths(vhost, sorted(q["name"] for q in defs.get("queues", []))),
    }


def queue_depths(vhost: str, queues) -> dict[str, int]:
    """Exact queue depths through AMQP passive declares (the HTTP API's counts lag by seconds)."""
    import pika

    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/")
    params.virtual_host = vhost
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        return {q: channel.queue_declare(q, passive=True).method.message_count for q in queues}
    finally:
        connection.close()


def tree_state(root: Path) -> dict[str, str]:
    """relative path → sha256 of every file under root."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def peek_messages(vhost: str, queue: str) -> list[tuple]:
    """Every message of a queue as (body, headers, content_type, message_id, priority, delivery_mode),
    in queue order, read without acknowledgement so the queue keeps them."""
    import pika

    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/")
    params.virtual_host = vhost
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        depth = channel.queue_declare(queue, passive=True).method.message_count
        out = []
        for _ in range(depth):
            method, props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            out.append((body, props.headers, props.content_type, props.message_id, props.priority, props.delivery_mode))
        channel.close()
        return out
    finally:
        connection.close()


def vhost_messages(vhost: str) -> dict[str, list[tuple]]:
    from urllib.parse import quote

    queues = [q["name"] for q in rabbit_api(f"/definitions/{quote(vhost, safe='')}").get("queues", [])]
    return {q: peek_messages(vhost, q) for q in sorted(queues)}


def tenant_state(settings, tenant_id: str, messages: bool = True) -> dict:
    """Everything a tenant owns, in every service, seen through independent clients."""
    from kryonix_dagster.engine.naming import names_for

    names = names_for(settings, tenant_id)
    exists = psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{names.database}'") == "1"
    client = s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    vhost_exists = requests.get(f"http://127.0.0.1:15672/api/vhosts/{names.vhost.replace('/', '%2F')}",
                                auth=("guest", "guest"), timeout=30).status_code == 200
    state = {
        "tables": table_checksums(names.database) if exists else None,
        "objects": bucket_state(client, names.bucket_prefix),
        "redis": redis_state(settings.redis_url, names.redis_prefix),
        "vhost": vhost_state(names.vhost) if vhost_exists else None,
        "files": tree_state(names.app_data_dir),
    }
    if messages and vhost_exists:
        state["messages"] = vhost_messages(names.vhost)
    return state
