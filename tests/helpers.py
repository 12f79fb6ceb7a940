"""Test helpers: remove every trace of a tenant, fingerprint a tenant's services."""
from __future__ import annotations

import shutil
from pathlib import Path

from psycopg2 import sql

from kryonix_dagster.engine import pg, services
from kryonix_dagster.engine.naming import names_for


def purge_tenant(settings, tenant_id: str) -> None:
    names = names_for(settings, tenant_id)
    pg.drop_database(settings.pg_dsn, names.database)
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                    (names.database.replace("_", r"\_") + r"\_\_%",))
        for (db,) in cur.fetchall():
            pg.drop_database(settings.pg_dsn, db)
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
    if keys:
        redis.delete(*keys)
    services.RabbitMQApi(settings).delete_vhost(names.vhost)
    shutil.rmtree(names.app_data_dir, ignore_errors=True)
    if names.repository.startswith("file://"):
        shutil.rmtree(Path(names.repository[len("file://"):]), ignore_errors=True)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.columns "
                    "WHERE table_schema = 'tenants' AND column_name = 'cliente_id'")
        for (table,) in cur.fetchall():
            cur.execute(sql.SQL("DELETE FROM tenants.{} WHERE cliente_id = %s").format(sql.Identifier(table)),
                        (tenant_id,))
        cur.execute("DELETE FROM tenants.clientes WHERE id = %s", (tenant_id,))
