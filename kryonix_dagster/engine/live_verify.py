"""`verify ID --live`: does the tenant's live data match a restore point?

After a restore the runbook's check step must judge the tenant, not only the repository. Each
tier is compared with what the restore point recorded, read from the services themselves:
PostgreSQL tables' row counts and row hashes against the manifest's per-table hashes (in the
same fixed rendering), Redis keys and values against the keys snapshot (read back from the
repository and checked against its recorded sha256), objects' size and sha256 against the
session's index, RabbitMQ queue depths, application files' size and sha256 against the
inventory. The restore point is the one the tenant's newest successful restore came from when
no backup was taken since, else the newest; `--snapshot` names another. Reads only (a Redis
value whose encoding differs is compared through a throw-away key outside every tenant's
namespace), under the tenant's lease.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field

import redis

from . import locations, pg, services
from .config import Settings
from .errors import BadInput, KryonixError, OperationFailed, one_line
from .manifest import STATUS_OK, SessionManifest, find_manifest
from .naming import TenantNames, names_for, validate_tenant_id
from .operation import tenant_operation
from .tenant_repository import open_repository
from .tiers.base import DrillContext, RestoreOutcome

MAX_NAMED = 10  # differences named per tier; the rest are counted


@dataclass
class LiveVerifyResult:
    tenant_id: str
    session_id: str
    tiers: dict[str, list[str]] = field(default_factory=dict)  # tier → differences ([]: ok)

    @property
    def ok(self) -> bool:
        return not any(self.tiers.values())

    def to_json(self) -> dict:
        return {"tenant": self.tenant_id, "session": self.session_id, "ok": self.ok,
                "tiers": {t: ("ok" if not d else d) for t, d in self.tiers.items()}}


def restored_from(settings: Settings, tenant_id: str) -> str:
    """The session of the tenant's newest successful restore when no backup succeeded after it,
    else "latest" (the live data then follows the newest restore point)."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT operation, session_id FROM tenants.backup_audit WHERE cliente_id = %s AND success "
                    "AND operation IN ('backup', 'restore') ORDER BY backup_date DESC LIMIT 1", (tenant_id,))
        row = cur.fetchone()
    return row[1] if row and row[0] == "restore" and row[1] else "latest"


def run_live_verify(settings: Settings, tenant_id: str, snapshot: str | None = None,
                    repository: str = locations.PRIMARY, wait_seconds: float = 0) -> LiveVerifyResult:
    """Under the tenant's lease (a session or a restore running meanwhile would read as a
    difference), in the frame of `operation.py`: an audit row `verify-live` with the verdict."""
    validate_tenant_id(tenant_id)
    repo = open_repository(settings, tenant_id, repository=repository)
    if repo is None:
        raise BadInput(f"tenant {tenant_id} has never been backed up")
    with tenant_operation(settings, tenant_id, "verify-live", wait_seconds=wait_seconds) as op:
        wanted = snapshot or restored_from(settings, tenant_id)
        manifest = find_manifest(repo, wanted)
        if manifest is None:
            raise BadInput(f"tenant {tenant_id}: no restore point {wanted!r}")
        names = names_for(settings, tenant_id)
        result = LiveVerifyResult(tenant_id, manifest.session_id)
        for tier, compare in _COMPARISONS.items():
            recorded = manifest.tiers.get(tier)
            if recorded is None or recorded.status != STATUS_OK:
                continue  # the restore point holds nothing of this tier to compare with
            try:
                result.tiers[tier] = compare(settings, names, manifest, repo)
            except (KryonixError, OSError, redis.RedisError) as exc:
                result.tiers[tier] = [f"not compared: {one_line(str(exc), 200)}"]
        differing = {t: d for t, d in result.tiers.items() if d}
        op.success = result.ok
        op.error = "; ".join(f"{t}: {d[0]}" for t, d in differing.items()) or None
        op.audit = {"session_id": result.session_id, "details": {"differences": differing}}
    return result


def _named(differences: list[str]) -> list[str]:
    if len(differences) <= MAX_NAMED:
        return differences
    return differences[:MAX_NAMED] + [f"and {len(differences) - MAX_NAMED} more"]


def _compare_postgres(settings: Settings, names: TenantNames, manifest: SessionManifest, _repo) -> list[str]:
    from .pg_script import HASH_RENDERING
    from .tiers.postgres import table_checksums

    recorded = manifest.tiers["postgresql"].checksums
    if recorded.get("rendering") != HASH_RENDERING:
        return ["not compared: the restore point's row hashes predate the fixed rendering"]
    expected = recorded.get("tables") or {}
    with pg.connection(settings.pg_dsn, names.database) as conn:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            live = table_checksums(cur)
    differences = [f"table {t}: missing" for t in sorted(set(expected) - set(live))]
    differences += [f"table {t}: not in the restore point" for t in sorted(set(live) - set(expected))]
    for table in sorted(set(expected) & set(live)):
        (want_rows, want_hash), (rows, digest) = expected[table], live[table]
        if want_rows != rows:
            differences.append(f"table {table}: {rows} rows, the restore point has {want_rows}")
        elif want_hash != digest:
            differences.append(f"table {table}: rows differ (same count, {rows})")
    return _named(differences)


def _redis_value(client: redis.Redis, key: bytes):
    kind = client.type(key)
    if kind == b"string":
        return kind, client.get(key)
    if kind == b"hash":
        return kind, client.hgetall(key)
    if kind == b"set":
        return kind, client.smembers(key)
    if kind == b"list":
        return kind, client.lrange(key, 0, -1)
    if kind == b"zset":
        return kind, client.zrange(key, 0, -1, withscores=True)
    if kind == b"stream":
        return kind, client.xrange(key)
    return kind, client.dump(key)


def _same_value(client: redis.Redis, key: bytes, payload: bytes) -> bool:
    """DUMP payloads equal, or (an encoding may differ after RESTORE) the same value once the
    recorded payload is restored under a throw-away key outside every tenant's namespace."""
    if client.dump(key) == payload:
        return True
    probe = f"kryonix:verify-live:{secrets.token_hex(8)}".encode()
    try:
        client.restore(probe, 0, payload)
        return _redis_value(client, probe) == _redis_value(client, key)
    finally:
        client.delete(probe)


def _compare_redis(settings: Settings, names: TenantNames, manifest: SessionManifest, repo) -> list[str]:
    from .tiers.redis_keys import NO_EXPIRY, STREAM_FILE, parse_records, scan_keys

    recorded = manifest.tiers["redis"]
    data = repo.dump_bytes(recorded.snapshots["keys"], f"/{STREAM_FILE}")
    if hashlib.sha256(data).hexdigest() != recorded.checksums.get("stream_sha256"):
        raise OperationFailed("the keys snapshot does not match its manifest checksum")
    now_ms = int(time.time() * 1000)  # keys whose recorded expiry has passed are gone by design
    expected = {key: payload for key, expiry, payload in parse_records(data) if expiry == NO_EXPIRY or expiry > now_ms}
    client = services.redis_client(settings)
    live = set(scan_keys(client, names.redis_match, names.backup_flag_key.encode()))
    show = lambda key: key.decode(errors="replace")  # noqa: E731
    differences = [f"key {show(k)}: missing" for k in sorted(set(expected) - live)]
    differences += [f"key {show(k)}: not in the restore point" for k in sorted(live - set(expected))]
    differences += [f"key {show(k)}: value differs" for k in sorted(set(expected) & live)
                    if not _same_value(client, k, expected[k])]
    return _named(differences)


def _compare_objects(settings: Settings, names: TenantNames, manifest: SessionManifest, _repo) -> list[str]:
    from .tiers.object_storage import tenant_buckets

    expected = {k: (etag, size, rest[0] if rest else None)
                for k, (etag, size, *rest) in manifest.tiers["object_storage"].checksums.get("objects", {}).items()}
    client = services.s3_client(settings)
    live = {}
    for bucket in tenant_buckets(client, names):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                live[f"{bucket}/{item['Key']}"] = (item["ETag"].strip('"'), item["Size"])
    differences = [f"object {k}: missing" for k in sorted(set(expected) - set(live))]
    differences += [f"object {k}: not in the restore point" for k in sorted(set(live) - set(expected))]
    for name in sorted(set(expected) & set(live)):
        etag, size, sha256 = expected[name]
        if live[name][1] != size:
            differences.append(f"object {name}: {live[name][1]} bytes, the restore point has {size}")
            continue
        bucket, _, key = name.partition("/")
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        digest = hashlib.sha256()
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
        if sha256 and digest.hexdigest() != sha256:
            differences.append(f"object {name}: content differs (sha256)")
    return _named(differences)


def _definition_id(kind: str, item: dict) -> str:
    if kind == "bindings":
        return (f"binding {item.get('source')} -> {item.get('destination_type')} {item.get('destination')} "
                f"({item.get('routing_key')!r})")
    if kind == "parameters":
        return f"parameter {item.get('component')}/{item.get('name')}"
    return f"{kind.rstrip('s')} {item.get('name')}"


def _compare_rabbitmq(settings: Settings, names: TenantNames, manifest: SessionManifest, repo) -> list[str]:
    """The vhost's definitions (queues, exchanges, bindings, policies, parameters) against the
    snapshot's, and each durable queue's depth against the recorded one."""
    from .tiers.rabbitmq import STREAM_FILE, drill_compare, vhost_definitions

    recorded = manifest.tiers["rabbitmq"]
    data = repo.dump_bytes(recorded.snapshots["vhost"], f"/{STREAM_FILE}")
    if hashlib.sha256(data).hexdigest() != recorded.checksums.get("stream_sha256"):
        raise OperationFailed("the vhost snapshot does not match its manifest checksum")
    expected = json.loads(data.splitlines()[0])["definitions"]
    api = services.RabbitMQApi(settings)
    if not api.vhost_exists(names.vhost):
        return [f"vhost {names.vhost}: missing"]
    live = vhost_definitions(api, names.vhost)
    differences = []
    for kind in sorted(set(expected) | set(live)):
        want = {_definition_id(kind, i): json.dumps(i, sort_keys=True) for i in expected.get(kind, [])}
        got = {_definition_id(kind, i): json.dumps(i, sort_keys=True) for i in live.get(kind, [])}
        differences += [f"{n}: missing" for n in sorted(set(want) - set(got))]
        differences += [f"{n}: not in the restore point" for n in sorted(set(got) - set(want))]
        differences += [f"{n}: definition differs" for n in sorted(set(want) & set(got)) if want[n] != got[n]]
    present = {q.get("name") for q in live.get("queues", [])}
    depths = {q: d for q, d in recorded.checksums.get("depths", {}).items() if q in present}
    if depths:
        checked = dataclasses.replace(recorded, checksums={**recorded.checksums, "depths": depths})
        verdict = drill_compare(DrillContext(settings, names, names, checked, RestoreOutcome("rabbitmq")))
        if verdict != "ok":
            differences.append(verdict)
    return _named(differences)


def _compare_appdata(settings: Settings, names: TenantNames, manifest: SessionManifest, _repo) -> list[str]:
    from .tiers.appdata import inventory

    expected = manifest.tiers["appdata"].checksums.get("files", {})
    root = names.app_data_dir
    live = inventory(root) if root.is_dir() else {}
    differences = [f"file {f}: missing" for f in sorted(set(expected) - set(live))]
    differences += [f"file {f}: not in the restore point" for f in sorted(set(live) - set(expected))]
    differences += [f"file {f}: content differs" for f in sorted(set(expected) & set(live))
                    if list(live[f]) != list(expected[f])]
    return _named(differences)


_COMPARISONS = {
    "postgresql": _compare_postgres,
    "redis": _compare_redis,
    "object_storage": _compare_objects,
    "rabbitmq": _compare_rabbitmq,
    "appdata": _compare_appdata,
}
