"""Restore drills: prove a restore point restores.

The latest session (or a given one) is restored into a scratch tenant (registered
inactive, so no schedule picks it up), each tier is compared with what the session's
manifest recorded, and the scratch tenant is erased whatever happened. The restore itself
already verifies table rows and files against the manifest; the drill adds object, key and
message counts, so a tampered or damaged session fails the drill.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import audit, pg, registry, services
from .config import Settings
from .erasure import erase_tenant_data
from .errors import KryonixError, one_line
from .manifest import find_manifest
from .naming import names_for, validate_tenant_id
from .restore import run_restore
from .tenant_repository import open_repository
from .tiers.base import NullReporter, Reporter, Stopwatch
from .tiers.object_storage import tenant_buckets


@dataclass
class DrillResult:
    tenant_id: str
    scratch_id: str
    session_id: str | None
    passed: bool
    compared: dict[str, str] = field(default_factory=dict)  # tier → "ok" or what differed
    error: str | None = None
    duration_seconds: float = 0.0

    def to_json(self) -> dict:
        return self.__dict__.copy()


def scratch_tenant_id(tenant_id: str) -> str:
    return "drill" + hashlib.sha256(tenant_id.encode()).hexdigest()[:12]


def _compare_objects(settings: Settings, scratch: str, expected: dict) -> str:
    client = services.s3_client(settings)
    names = names_for(settings, scratch)
    got = {}
    for bucket in tenant_buckets(client, names):
        suffix = bucket[len(names.bucket_prefix):]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                got[f"{suffix}/{item['Key']}"] = item["Size"]
    want = {}
    for key, (_etag, size) in expected.items():
        bucket, _, obj = key.partition("/")
        want[f"{bucket.split('-', 2)[2]}/{obj}"] = size
    if got == want:
        return "ok"
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return f"{len(diff)} object(s) differ, e.g. {diff[0]}"


def _compare_keys(settings: Settings, scratch: str, restored: int, expired: int, recorded: int) -> str:
    names = names_for(settings, scratch)
    present = sum(1 for _ in services.redis_client(settings).scan_iter(match=names.redis_match, count=1000))
    if restored + expired != recorded:
        return f"{restored} keys restored and {expired} expired, {recorded} backed up"
    return "ok" if present == restored else f"{present} keys present, {restored} restored"


def _compare_depths(settings: Settings, scratch: str, expected: dict[str, int]) -> str:
    names = names_for(settings, scratch)
    connection = services.amqp_connection(settings, names.vhost)
    try:
        channel = connection.channel()
        got = {q: channel.queue_declare(q, passive=True).method.message_count for q in expected}
    finally:
        connection.close()
    return "ok" if got == expected else f"queue depths {got} != backed up {expected}"


def run_drill(settings: Settings, tenant_id: str, snapshot: str = "latest", report: Reporter | None = None) -> DrillResult:
    validate_tenant_id(tenant_id)
    report = report or NullReporter()
    scratch = scratch_tenant_id(tenant_id)
    started = datetime.now(timezone.utc)
    watch = Stopwatch()
    result = DrillResult(tenant_id, scratch, None, False)
    registry.ensure_tenant(settings, scratch, f"restore drill of {tenant_id}", "basic")
    registry.set_status(settings, scratch, "inativo")
    try:
        erase_tenant_data(settings, scratch)
        repo = open_repository(settings, tenant_id)
        manifest = find_manifest(repo, snapshot) if repo else None
        if manifest is None:
            raise KryonixError(f"tenant {tenant_id}: no restore point to drill")
        result.session_id = manifest.session_id
        restored = run_restore(settings, tenant_id, manifest.session_id, into=scratch, report=report)
        for tier in restored.tiers:
            recorded = manifest.tiers[tier]
            if tier == "object_storage":
                result.compared[tier] = _compare_objects(settings, scratch, recorded.checksums.get("objects", {}))
            elif tier == "redis":
                outcome = restored.tiers[tier]
                result.compared[tier] = _compare_keys(settings, scratch, outcome.restored,
                                                      outcome.details.get("expired_not_restored", 0), recorded.items)
            elif tier == "rabbitmq":
                result.compared[tier] = _compare_depths(settings, scratch, recorded.checksums.get("depths", {}))
            else:  # postgresql rows and appdata files were verified by the restore itself
                result.compared[tier] = "ok"
        result.passed = all(v == "ok" for v in result.compared.values())
        if not result.passed:
            result.error = "; ".join(f"{t}: {v}" for t, v in result.compared.items() if v != "ok")
    except KryonixError as exc:
        result.error = one_line(str(exc))
    finally:
        try:
            erase_tenant_data(settings, scratch)
            with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
                cur.execute("DELETE FROM tenants.backup_leases WHERE cliente_id = %s", (scratch,))
                cur.execute("DELETE FROM tenants.clientes WHERE id = %s", (scratch,))
        except Exception as exc:
            report.warn(f"scratch tenant {scratch} not fully erased: {one_line(str(exc), 200)}")
        result.duration_seconds = watch.seconds
        audit.record(settings, audit.AuditRecord(
            cliente_id=tenant_id, operation="drill", started_at=started, success=result.passed,
            session_id=result.session_id, finished_at=datetime.now(timezone.utc),
            duration_seconds=result.duration_seconds, error=result.error,
            details={"scratch": scratch, "compared": result.compared},
        ))
    return result
