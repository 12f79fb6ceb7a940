"""Clients for the tenants' services, built from Settings. Health checks live here too."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import pika
import redis
import requests
import boto3
from botocore.config import Config as BotoConfig

from . import pg
from .config import Settings
from .errors import OperationFailed, one_line


def s3_client(settings: Settings):
    """A boto3 S3 client (path-style, for MinIO and S3 alike).

    Not the minio client: minio-py refuses keys with `.`/`..` path segments, and with that
    check bypassed urllib3 normalises the URL and reads a *different* object. S3 allows such
    keys, so the tier must be able to back them up exactly.
    """
    if not settings.s3_endpoint:
        raise OperationFailed("object storage: KRYONIX_S3_ENDPOINT is not set")
    endpoint = settings.s3_endpoint if "://" in settings.s3_endpoint else f"http://{settings.s3_endpoint}"
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key or None, aws_secret_access_key=settings.s3_secret_key or None,
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


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=10)


def amqp_user(settings: Settings) -> str:
    return pika.URLParameters(settings.amqp_url).credentials.username


def amqp_connection(settings: Settings, vhost: str) -> pika.BlockingConnection:
    params = pika.URLParameters(settings.amqp_url)
    params.virtual_host = vhost
    params.heartbeat = 60
    params.blocked_connection_timeout = 60
    return pika.BlockingConnection(params)


class RabbitMQApi:
    """The few verbs of the RabbitMQ management HTTP API we use."""

    def __init__(self, settings: Settings):
        self.base = settings.rabbitmq_api.rstrip("/") + "/api"
        self.session = requests.Session()
        self.session.auth = (settings.rabbitmq_api_user, settings.rabbitmq_api_password)
        self.session.headers["content-type"] = "application/json"

    @staticmethod
    def q(name: str) -> str:
        return quote(name, safe="")

    def request(self, method: str, path: str, json=None, ok=(200, 201, 204)):
        url = f"{self.base}{path}"
        try:
            resp = self.session.request(method, url, json=json, timeout=60)
        except requests.RequestException as exc:
            raise OperationFailed(f"RabbitMQ API {self.base}: {one_line(exc)}") from None
        if resp.status_code not in ok:
            raise OperationFailed(
                f"RabbitMQ API {method} {path}: HTTP {resp.status_code} {one_line(resp.text, 200)}"
            )
        return resp.json() if resp.content and resp.headers.get("content-type", "").startswith("application/json") else None

    def vhost_exists(self, vhost: str) -> bool:
        try:
            resp = self.session.get(f"{self.base}/vhosts/{self.q(vhost)}", timeout=30)
        except requests.RequestException as exc:
            raise OperationFailed(f"RabbitMQ API {self.base}: {one_line(exc)}") from None
        if resp.status_code not in (200, 404):
            raise OperationFailed(f"RabbitMQ API GET /vhosts/{vhost}: HTTP {resp.status_code}")
        return resp.status_code == 200

    def create_vhost(self, vhost: str) -> None:
        self.request("PUT", f"/vhosts/{self.q(vhost)}", json={})

    def delete_vhost(self, vhost: str) -> None:
        self.request("DELETE", f"/vhosts/{self.q(vhost)}", ok=(200, 204, 404))

    def definitions(self, vhost: str) -> dict:
        return self.request("GET", f"/definitions/{self.q(vhost)}")

    def load_definitions(self, vhost: str, definitions: dict) -> None:
        self.request("POST", f"/definitions/{self.q(vhost)}", json=definitions)

    def set_permissions(self, vhost: str, user: str, configure=".*", write=".*", read=".*") -> None:
        self.request(
            "PUT",
            f"/permissions/{self.q(vhost)}/{self.q(user)}",
            json={"configure": configure, "write": write, "read": read},
        )

    def permissions(self, vhost: str) -> list[dict]:
        return self.request("GET", f"/vhosts/{self.q(vhost)}/permissions")

    def queues(self, vhost: str) -> list[dict]:
        return self.request("GET", f"/queues/{self.q(vhost)}")

    def overview(self) -> dict:
        return self.request("GET", "/overview")


@dataclass(frozen=True)
class HealthResult:
    service: str
    ok: bool
    detail: str


def check_health(settings: Settings) -> list[HealthResult]:
    """Ping every service the backup depends on; never raises."""
    results: list[HealthResult] = []

    def probe(service: str, fn) -> None:
        try:
            results.append(HealthResult(service, True, fn() or "ok"))
        except Exception as exc:  # a health check reports, it does not fail the caller
            results.append(HealthResult(service, False, one_line(exc, 200)))

    def postgres() -> str:
        with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return f"PostgreSQL {cur.fetchone()[0]}"

    def redis_ping() -> str:
        client = redis_client(settings)
        client.ping()
        return f"Redis {client.info('server').get('redis_version')}"

    def rabbit() -> str:
        return f"RabbitMQ {RabbitMQApi(settings).overview().get('rabbitmq_version')}"

    def s3() -> str:
        s3_client(settings).list_buckets()
        return "S3 reachable"

    probe("postgresql", postgres)
    probe("redis", redis_ping)
    probe("rabbitmq", rabbit)
    probe("object_storage", s3)
    return results
