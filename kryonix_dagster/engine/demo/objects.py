"""The demo tenant's buckets: `cliente-{id}-media` and `cliente-{id}-documentos`."""
from __future__ import annotations

import io

from minio import Minio
from minio.commonconfig import Tags

from ..naming import TenantNames
from .plan import BUCKET_SUFFIXES, DemoObject


def _tags(values: dict[str, str]) -> Tags | None:
    if not values:
        return None
    tags = Tags.new_object_tags()
    tags.update(values)
    return tags


def seed_objects(client: Minio, names: TenantNames, objects: list[DemoObject]) -> None:
    for suffix in BUCKET_SUFFIXES:
        bucket = names.bucket(suffix)
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        wanted = {o.key: o for o in objects if o.bucket_suffix == suffix}
        existing = {o.object_name: o for o in client.list_objects(bucket, recursive=True)}
        for key in existing.keys() - wanted.keys():
            client.remove_object(bucket, key)
        for key, obj in wanted.items():
            if key in existing and existing[key].size == obj.size:
                continue  # deterministic content: same key and size means same object
            data = obj.content(names.tenant_id)
            client.put_object(
                bucket, key, io.BytesIO(data), length=len(data), content_type=obj.content_type,
                metadata=obj.metadata or None, tags=_tags(obj.tags),
            )
