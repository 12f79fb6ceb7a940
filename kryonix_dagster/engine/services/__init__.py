"""Clients for the tenants' services, one module per system, built from Settings.

`services.s3_client(...)` and friends are gathered here so callers name the system's verb,
not its module.
"""
from .health import HealthResult, check_health
from .rabbitmq import RabbitMQApi, amqp_connection, amqp_user
from .redis import redis_client
from .s3 import bucket_exists, client_for, create_bucket, s3_client

__all__ = ["HealthResult", "RabbitMQApi", "amqp_connection", "amqp_user", "bucket_exists", "check_health",
           "client_for", "create_bucket", "redis_client", "s3_client"]
