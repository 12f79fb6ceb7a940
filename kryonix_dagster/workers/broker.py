"""The Celery broker: the product's RabbitMQ, on a vhost of its own (naming.DAGSTER_BROKER_VHOST).

No Dagster import: the worker app, the executor and `scripts/workers.sh` all use it.
KRYONIX_CELERY_BROKER overrides the URL (e.g. another RabbitMQ); by default it is
KRYONIX_AMQP_URL with its vhost replaced, credentials kept.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from ..engine.config import api_credentials, load_settings
from ..engine.errors import OperationFailed
from ..engine.naming import DAGSTER_BROKER_VHOST

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# Shared by the workers' app and the executor that submits (see app.py for why)
CELERY_CONFIG = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
    "task_default_queue": "dagster",
    "worker_hijack_root_logger": False,
}


def broker_url(environ: Mapping[str, str] = os.environ) -> str:
    """pyamqp URL of the broker (it holds the AMQP password: never log it, see `redacted`)."""
    if environ.get("KRYONIX_CELERY_BROKER"):
        return environ["KRYONIX_CELERY_BROKER"]
    parts = urlsplit(environ.get("KRYONIX_AMQP_URL") or DEFAULT_AMQP_URL)
    return urlunsplit(("pyamqp", parts.netloc, "/" + quote(DAGSTER_BROKER_VHOST, safe=""), "", ""))


def celery_queue(environ: Mapping[str, str] = os.environ) -> str:
    """The queue workers consume and the executor sends steps to (one per deployment)."""
    return environ.get("KRYONIX_CELERY_QUEUE") or "dagster"


def redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    return urlunsplit((parts.scheme, netloc + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def ensure_vhost(environ: Mapping[str, str] = os.environ, timeout: float = 10) -> str:
    """Create the broker vhost and give the product's AMQP user all rights on it (idempotent,
    through the management API). Returns the vhost."""
    settings = load_settings(dict(environ))
    user, _password = api_credentials(settings.amqp_url)
    auth = (settings.rabbitmq_api_user, settings.rabbitmq_api_password)
    vhost = quote(DAGSTER_BROKER_VHOST, safe="")
    try:
        resp = requests.put(f"{settings.rabbitmq_api}/api/vhosts/{vhost}", auth=auth, timeout=timeout,
                            json={"description": "Dagster Celery executor (kryonix-dagster)"})
        resp.raise_for_status()
        resp = requests.put(f"{settings.rabbitmq_api}/api/permissions/{vhost}/{quote(user, safe='')}", auth=auth,
                            timeout=timeout, json={"configure": ".*", "write": ".*", "read": ".*"})
        resp.raise_for_status()
    except requests.RequestException as exc:
        raise OperationFailed(f"broker vhost {DAGSTER_BROKER_VHOST}: RabbitMQ management API "
                              f"{settings.rabbitmq_api}: {type(exc).__name__}") from exc
    return DAGSTER_BROKER_VHOST


if __name__ == "__main__":  # scripts/workers.sh: `python -m kryonix_dagster.workers.broker`
    print(ensure_vhost())
