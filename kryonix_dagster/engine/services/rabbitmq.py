"""The tenants' RabbitMQ: AMQP connections (pika) and the management HTTP API."""
from __future__ import annotations

from urllib.parse import quote

import pika
import requests

from ..config import Settings
from ..errors import OperationFailed, one_line


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
