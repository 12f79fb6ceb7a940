"""Erase a tenant's live data in every service (its names only). Used to clean up the
scratch tenants of restore drills; never exposed as a CLI verb."""
from __future__ import annotations

import shutil

from psycopg2 import sql

from . import pg, services
from .config import Settings
from .naming import names_for


def erase_tenant_data(settings: Settings, tenant_id: str) -> None:
    names = names_for(settings, tenant_id)
    pg.drop_database(settings.pg_dsn, names.database)
    for suffix in ("__restoring", "__previous"):
        pg.drop_database(settings.pg_dsn, names.database + suffix)
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
