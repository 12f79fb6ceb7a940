"""The demo tenant's buckets: `cliente-{id}-media` and `cliente-{id}-documentos`."""
from __future__ import annotations

import io
from urllib.parse import urlencode

from boto3.s3.transfer import TransferConfig

from ..engine.naming import TenantNames
from ..engine.services import bucket_exists, create_bucket
from .plan import BUCKET_SUFFIXES, MULTIPART_THRESHOLD, DemoObject

TRANSFER = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)


def _existing(client, bucket: str) -> dict[str, int]:
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            sizes[item["Key"]] = item["Size"]
    return sizes


def seed_objects(client, names: TenantNames, objects: list[DemoObject], region: str = "us-east-1") -> None:
    for suffix in BUCKET_SUFFIXES:
        bucket = names.bucket(suffix)
        if not bucket_exists(client, bucket):
            create_bucket(client, bucket, region)
        wanted = {o.key: o for o in objects if o.bucket_suffix == suffix}
        existing = _existing(client, bucket)
        for key in existing.keys() - wanted.keys():
            client.delete_object(Bucket=bucket, Key=key)
        for key, obj in wanted.items():
            if existing.get(key) == obj.size:
                continue  # deterministic content: same key and size means same object
            extra = {"ContentType": obj.content_type}
            if obj.metadata:
                extra["Metadata"] = obj.metadata
            if obj.tags:
                extra["Tagging"] = urlencode(obj.tags)
            client.upload_fileobj(io.BytesIO(obj.content(names.tenant_id)), bucket, key, ExtraArgs=extra,
                                  Config=TRANSFER)
