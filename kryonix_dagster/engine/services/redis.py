"""The tenants' Redis."""
from __future__ import annotations

import redis

from ..config import Settings


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=10)
