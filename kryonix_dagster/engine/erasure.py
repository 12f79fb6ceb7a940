"""Erase a restore drill's scratch tenant in every service (its names only). Never exposed
as a CLI verb, and it refuses any names not built by `naming.scratch_names`: a registered
tenant's data cannot be erased through here."""
from __future__ import annotations

import shutil

from psycopg2 import sql

from . import pg, services
from .config import Settings
from .errors import BadInput
from .naming import TenantNames, is_scratch


def erase_scratch(settings: Settings, scratch: TenantNames) -> None:
    if not is_scratch(scratch):
        raise BadInput(f"tenant {scratch.tenant_id}: not a scratch tenant, refusing to erase its data")
    _erase(settings, scratch)


def _erase(settings: Settings, names: TenantNames) -> None:
    for database in (names.database, names.restoring_database, names.previous_database):
        pg.drop_database(settings.pg_dsn, database)
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (names.role_prefix,))
        for (role,) in cur.fetchall():
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    client = services.s3_client(settings)
    for bucket in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        if names.owns_bucket(bucket):
            for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
                for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    client.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
            client.delete_bucket(Bucket=bucket)
    redis = services.redis_client(settings)
    keys = list(redis.scan_iter(match=names.redis_match, count=1000))
    for start in range(0, len(keys), 1000):
        redis.delete(*keys[start:start + 1000])
    services.RabbitMQApi(settings).delete_vhost(names.vhost)
    shutil.rmtree(names.app_data_dir, ignore_errors=True)
