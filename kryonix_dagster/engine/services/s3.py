"""The tenants' S3/MinIO object storage: a boto3 client and the bucket verbs we need."""
from __future__ import annotations

import functools

import boto3
from botocore.config import Config as BotoConfig

from ..config import Settings
from ..errors import OperationFailed


def s3_client(settings: Settings):
    """A boto3 S3 client (path-style, for MinIO and S3 alike).

    Not the minio client: minio-py refuses keys with `.`/`..` path segments, and with that
    check bypassed urllib3 normalises the URL and reads a *different* object. S3 allows such
    keys, so the tier must be able to back them up exactly.
    """
    if not settings.s3_endpoint:
        raise OperationFailed("object storage: KRYONIX_S3_ENDPOINT is not set")
    return client_for(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_region)


@functools.lru_cache(maxsize=16)
def client_for(endpoint: str, access_key: str | None, secret_key: str | None, region: str):
    """A path-style boto3 client with retries and timeouts, for any S3 endpoint we talk to.
    One per endpoint and credentials for the life of the process (boto3 clients are
    thread-safe): building one costs ~80 ms of CPU, and a session used to build two."""
    endpoint = endpoint if "://" in endpoint else f"http://{endpoint}"
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=region,
        aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None,
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5},
                          connect_timeout=10, read_timeout=120),
    )


def create_bucket(client, bucket: str, region: str) -> None:
    if region and region != "us-east-1":
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    else:
        client.create_bucket(Bucket=bucket)


def bucket_exists(client, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise
