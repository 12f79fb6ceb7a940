"""Destroying a tenant's data in every service, as a disaster would."""
import shutil

import redis

from kryonix_dagster.engine import pg
from kryonix_dagster.engine.naming import names_for

from . import observe


def destroy(settings, tenant_id: str, database: bool = True) -> None:
    names = names_for(settings, tenant_id)
    if database:
        pg.drop_database(settings.pg_dsn, names.database)
    client = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    for bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        if names.owns_bucket(bucket):
            for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
                for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    client.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
            client.delete_bucket(Bucket=bucket)
    r = redis.Redis.from_url(settings.redis_url)
    keys = list(r.scan_iter(match=names.redis_match))
    if keys:
        r.delete(*keys)
    import requests
    requests.delete(f"http://127.0.0.1:15672/api/vhosts/{names.vhost.replace('/', '%2F')}", auth=("guest", "guest"),
                    timeout=30)
    shutil.rmtree(names.app_data_dir, ignore_errors=True)
