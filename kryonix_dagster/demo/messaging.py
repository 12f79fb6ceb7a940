"""The demo tenant's RabbitMQ vhost `/cliente_{id}`: exchanges, durable queues, bindings,
a policy and persistent messages waiting."""
from __future__ import annotations

import pika

from ..engine.config import Settings
from ..engine.naming import TenantNames
from ..engine.services import RabbitMQApi, amqp_connection
from .plan import DemoCounts


def vhost_definitions(names: TenantNames) -> dict:
    v = names.vhost
    return {
        "exchanges": [
            {"name": "kryonix.eventos", "vhost": v, "type": "topic", "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}},
            {"name": "kryonix.dlx", "vhost": v, "type": "fanout", "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}},
            {"name": "kryonix.headers", "vhost": v, "type": "headers", "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}},
        ],
        "queues": [
            {"name": "mobile.sync", "vhost": v, "durable": True, "auto_delete": False,
             "arguments": {"x-dead-letter-exchange": "kryonix.dlx", "x-max-length": 100000}},
            {"name": "whatsapp.outbound", "vhost": v, "durable": True, "auto_delete": False,
             "arguments": {"x-max-priority": 5}},
            {"name": "notificacoes", "vhost": v, "durable": True, "auto_delete": False, "arguments": {}},
            {"name": "dead.letters", "vhost": v, "durable": True, "auto_delete": False, "arguments": {}},
        ],
        "bindings": [
            {"source": "kryonix.eventos", "vhost": v, "destination": "mobile.sync",
             "destination_type": "queue", "routing_key": "mobile.#", "arguments": {}},
            {"source": "kryonix.eventos", "vhost": v, "destination": "whatsapp.outbound",
             "destination_type": "queue", "routing_key": "whatsapp.saida", "arguments": {}},
            {"source": "kryonix.dlx", "vhost": v, "destination": "dead.letters",
             "destination_type": "queue", "routing_key": "", "arguments": {}},
            {"source": "kryonix.headers", "vhost": v, "destination": "notificacoes",
             "destination_type": "queue", "routing_key": "",
             "arguments": {"x-match": "all", "canal": "push"}},
        ],
        "policies": [
            {"vhost": v, "name": "notificacoes-ttl", "pattern": "^notificacoes$", "apply-to": "queues",
             "priority": 1, "definition": {"message-ttl": 604800000}},
        ],
    }


def demo_messages(counts: DemoCounts) -> list[tuple[str, bytes, pika.BasicProperties]]:
    """(queue, body, properties) in publishing order."""
    messages = []
    for n in range(1, counts.sync_messages + 1):
        messages.append(("mobile.sync", f'{{"op":"upsert","contato":{n}}}'.encode(), pika.BasicProperties(
            delivery_mode=2, content_type="application/json", message_id=f"sync-{n}",
            headers={"dispositivo": f"android-{n % 4}", "tentativa": n % 3}, timestamp=1_700_000_000 + n)))
    for n in range(1, counts.whatsapp_messages + 1):
        messages.append(("whatsapp.outbound", f"Olá contato {n}, sua fatura vence amanhã.".encode(),
                         pika.BasicProperties(delivery_mode=2, content_type="text/plain; charset=utf-8",
                                              priority=n % 5, correlation_id=f"wa-{n}")))
    for n in range(1, counts.notification_messages + 1):
        messages.append(("notificacoes", bytes([n % 256]) + b"\x00push\xff",
                         pika.BasicProperties(delivery_mode=2, content_type="application/octet-stream",
                                              headers={"canal": "push"}, type="notificacao")))
    return messages


def seed_messaging(settings: Settings, names: TenantNames, counts: DemoCounts) -> None:
    api = RabbitMQApi(settings)
    # Recreating the vhost makes its definitions and queue contents exactly the demo's.
    api.delete_vhost(names.vhost)
    api.create_vhost(names.vhost)
    api.set_permissions(names.vhost, settings.rabbitmq_api_user)
    api.load_definitions(names.vhost, vhost_definitions(names))
    connection = amqp_connection(settings, names.vhost)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for queue, body, props in demo_messages(counts):
            channel.basic_publish(exchange="", routing_key=queue, body=body, properties=props, mandatory=True)
    finally:
        connection.close()
