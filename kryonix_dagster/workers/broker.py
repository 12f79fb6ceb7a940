"""The Celery broker: the product's RabbitMQ, on a vhost of its own (naming.DAGSTER_BROKER_VHOST),
with a RabbitMQ user of its own that has rights on that vhost only (never the product's AMQP
user, which reaches every tenant's vhost).

No Dagster import: the worker app, the executor and `scripts/workers.sh` all use it.
KRYONIX_CELERY_BROKER overrides the URL (e.g. another RabbitMQ; its user is the operator's).
By default it is KRYONIX_AMQP_URL's host with the vhost replaced and the broker's user:
KRYONIX_CELERY_BROKER_USER (default kryonix-broker) and KRYONIX_CELERY_BROKER_PASSWORD, or,
unset, a password derived from the master key (HMAC), so every worker host and the daemon
agree without one more secret to hand out. After `keys rotate-master`, run
`python -m kryonix_dagster.workers.broker` again (the workers' setup does) to set the new one.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from ..engine import keys
from ..engine.config import load_settings
from ..engine.errors import OperationFailed
from ..engine.naming import DAGSTER_BROKER_VHOST

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_BROKER_USER = "kryonix-broker"
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
    """pyamqp URL of the broker (it holds the broker's password: never log it, see `redacted`)."""
    if environ.get("KRYONIX_CELERY_BROKER"):
        return environ["KRYONIX_CELERY_BROKER"]
    parts = urlsplit(environ.get("KRYONIX_AMQP_URL") or DEFAULT_AMQP_URL)
    user, password = broker_credentials(environ)
    host = f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}"
    return urlunsplit(("pyamqp", f"{quote(user, safe='')}:{quote(password, safe='')}@{host}",
                       "/" + quote(DAGSTER_BROKER_VHOST, safe=""), "", ""))


def broker_credentials(environ: Mapping[str, str] = os.environ, create_key: bool = False) -> tuple[str, str]:
    """The broker's own RabbitMQ user and password (see the module's docstring)."""
    user = environ.get("KRYONIX_CELERY_BROKER_USER") or DEFAULT_BROKER_USER
    if environ.get("KRYONIX_CELERY_BROKER_PASSWORD"):
        return user, environ["KRYONIX_CELERY_BROKER_PASSWORD"]
    settings = load_settings(dict(environ))
    path = Path(settings.master_key_file)
    if create_key:
        key = keys.master_key(settings)  # the very first setup creates it, as a first backup would
    elif path.exists():
        key = keys.read_key_file(path)
    else:
        raise OperationFailed(f"the broker's password derives from the master key, and {path} does not exist: "
                              "run `python -m kryonix_dagster.workers.broker` (scripts/workers.sh does) or set "
                              "KRYONIX_CELERY_BROKER_PASSWORD")
    return user, hmac.new(key, b"kryonix celery broker:" + user.encode(), hashlib.sha256).hexdigest()


def celery_queue(environ: Mapping[str, str] = os.environ) -> str:
    """The queue workers consume and the executor sends steps to (one per deployment)."""
    return environ.get("KRYONIX_CELERY_QUEUE") or "dagster"


def redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    return urlunsplit((parts.scheme, netloc + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def ensure_vhost(environ: Mapping[str, str] = os.environ, timeout: float = 10) -> str:
    """Create the broker vhost and the broker's user with all rights on that vhost and none
    elsewhere (idempotent, through the management API, as KRYONIX_RABBITMQ_API_USER). With
    KRYONIX_CELERY_BROKER set, only the vhost: that URL's user is the operator's. Returns the vhost."""
    settings = load_settings(dict(environ))
    auth = (settings.rabbitmq_api_user, settings.rabbitmq_api_password)
    vhost = quote(DAGSTER_BROKER_VHOST, safe="")
    api = settings.rabbitmq_api
    try:
        resp = requests.put(f"{api}/api/vhosts/{vhost}", auth=auth, timeout=timeout,
                            json={"description": "Dagster Celery executor (kryonix-dagster)"})
        resp.raise_for_status()
        if not environ.get("KRYONIX_CELERY_BROKER"):
            user, password = broker_credentials(environ, create_key=True)
            resp = requests.put(f"{api}/api/users/{quote(user, safe='')}", auth=auth, timeout=timeout,
                                json={"password": password, "tags": ""})  # no management access
            resp.raise_for_status()
            resp = requests.put(f"{api}/api/permissions/{vhost}/{quote(user, safe='')}", auth=auth,
                                timeout=timeout, json={"configure": ".*", "write": ".*", "read": ".*"})
            resp.raise_for_status()
    except requests.RequestException as exc:
        raise OperationFailed(f"broker vhost {DAGSTER_BROKER_VHOST}: RabbitMQ management API "
                              f"{api}: {type(exc).__name__}") from exc
    return DAGSTER_BROKER_VHOST


if __name__ == "__main__":  # scripts/workers.sh: `python -m kryonix_dagster.workers.broker`
    print(ensure_vhost())
