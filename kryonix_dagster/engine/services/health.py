"""Health checks of every service a session depends on."""
from __future__ import annotations

from dataclasses import dataclass

from .. import pg
from ..config import Settings
from ..errors import one_line
from . import rabbitmq, redis, s3


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
        client = redis.redis_client(settings)
        client.ping()
        return f"Redis {client.info('server').get('redis_version')}"

    def rabbit() -> str:
        return f"RabbitMQ {rabbitmq.RabbitMQApi(settings).overview().get('rabbitmq_version')}"

    def objects() -> str:
        s3.s3_client(settings).list_buckets()
        return "S3 reachable"

    probe("postgresql", postgres)
    probe("redis", redis_ping)
    probe("rabbitmq", rabbit)
    probe("object_storage", objects)
    return results
