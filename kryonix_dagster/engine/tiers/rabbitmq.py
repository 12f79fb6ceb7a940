"""RabbitMQ tier: the tenant's vhost `/cliente_{id}`.

Definitions (exchanges, queues with arguments, bindings with arguments, policies) come from
the management API, with the vhost's user permissions. Messages of durable queues are read
over AMQP with manual acknowledgement and never acknowledged: when the channel closes, the
broker puts every message back in its original position, so nothing is lost and queue
depths are unchanged (consumers see those messages as redelivered). Restore re-creates the
vhost and re-publishes every message, in order, with its body, headers and properties.
"""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
from typing import Any, Iterator

import pika
import pika.exceptions

from .. import services
from ..errors import OperationFailed, one_line
from ..manifest import STATUS_EMPTY, STATUS_OK, TierResult, tier_tags
from .base import BackupContext, RestoreContext, RestoreOutcome, Stopwatch, verified_stream

TIER = "rabbitmq"
STREAM_FILE = "vhost.jsonl"
_PROPS = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
          "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id")
_DEFINITION_KEYS = ("exchanges", "queues", "bindings", "policies")


# --- header values are AMQP tables: keep their types through JSON -------------------------------

def encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dict):
        return {"$table": {k: encode_value(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return [encode_value(v) for v in value]
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        if "$decimal" in value:
            return decimal.Decimal(value["$decimal"])
        if "$datetime" in value:
            return dt.datetime.fromisoformat(value["$datetime"])
        if "$table" in value:
            return {k: decode_value(v) for k, v in value["$table"].items()}
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    return value


def message_record(queue: str, method, props: pika.BasicProperties, body: bytes) -> dict:
    properties = {name: getattr(props, name) for name in _PROPS if getattr(props, name, None) is not None}
    if props.headers:
        properties["headers"] = encode_value(props.headers)
    return {"queue": queue, "exchange": method.exchange, "routing_key": method.routing_key,
            "properties": properties, "body": base64.b64encode(body).decode()}


def record_properties(record: dict) -> pika.BasicProperties:
    props = dict(record["properties"])
    if "headers" in props:
        props["headers"] = decode_value(props["headers"])
    return pika.BasicProperties(**props)


# --- backup ----------------------------------------------------------------------------------

def read_queue(channel, queue: str) -> tuple[list[dict], int]:
    """All messages of `queue`, unacknowledged (requeued when the channel closes)."""
    depth = channel.queue_declare(queue, passive=True).method.message_count
    messages = []
    while len(messages) < depth:
        method, props, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        messages.append(message_record(queue, method, props, body))
    return messages, depth


def capture_messages(settings, vhost: str, queues: list[dict]) -> tuple[list[dict], dict]:
    """Messages of every durable queue; one channel per queue, closed without acking."""
    connection = services.amqp_connection(settings, vhost)
    messages: list[dict] = []
    depths: dict[str, int] = {}
    try:
        for queue in queues:
            if not queue.get("durable"):
                continue
            channel = connection.channel()
            try:
                got, depth = read_queue(channel, queue["name"])
            finally:
                channel.close()  # nothing acked: every message goes back, in order
            messages += got
            depths[queue["name"]] = depth
    finally:
        connection.close()
    return messages, depths


def backup(ctx: BackupContext) -> TierResult:
    watch = Stopwatch()
    names = ctx.names
    api = services.RabbitMQApi(ctx.settings)
    if not api.vhost_exists(names.vhost):
        ctx.captured[TIER] = []
        return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds, details={"vhost": None})
    definitions = api.definitions(names.vhost)
    definitions = {k: definitions.get(k, []) for k in _DEFINITION_KEYS}
    permissions = [{k: p[k] for k in ("user", "configure", "write", "read")} for p in api.permissions(names.vhost)]
    consumers = {q["name"]: q.get("consumers", 0) for q in api.queues(names.vhost)}
    busy = sorted(q for q, n in consumers.items() if n)
    if busy:
        ctx.report.warn(f"queues with consumers attached, their capture may miss messages in flight: {', '.join(busy)}")
    try:
        messages, depths = capture_messages(ctx.settings, names.vhost, definitions["queues"])
    except pika.exceptions.AMQPError as exc:
        raise OperationFailed(f"tenant {names.tenant_id}, tier rabbitmq: reading messages failed: {one_line(repr(exc))}") from None
    ctx.captured[TIER] = [q["name"] for q in definitions["queues"]]
    head = {"vhost": names.vhost, "definitions": definitions, "permissions": permissions}
    digest = hashlib.sha256()

    def stream() -> Iterator[bytes]:
        for doc in [head, *messages]:
            line = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode() + b"\n"
            digest.update(line)
            yield line

    summary = ctx.repo.backup_stream(stream(), STREAM_FILE, tier_tags(ctx.session_id, TIER, "vhost", ctx.backup_type),
                                     ctx.session_time)
    return TierResult(
        TIER, STATUS_OK, snapshots={"vhost": summary.snapshot_id}, bytes_processed=summary.total_bytes_processed,
        bytes_added=summary.data_added, items=len(messages), duration_seconds=watch.seconds,
        checksums={"stream_sha256": digest.hexdigest(), "depths": depths},
        details={"vhost": names.vhost, "messages": len(messages), "queues": len(definitions["queues"]),
                 "exchanges": len(definitions["exchanges"]), "bindings": len(definitions["bindings"]),
                 "policies": len(definitions["policies"]), "queues_with_consumers": busy},
    )


# --- restore ---------------------------------------------------------------------------------

def _retarget(definitions: dict, vhost: str) -> dict:
    return {k: [{**item, "vhost": vhost} for item in definitions.get(k, [])] for k in _DEFINITION_KEYS}


def _publish(settings, vhost: str, records: list[dict], outcome: RestoreOutcome, own_user: str) -> None:
    connection = services.amqp_connection(settings, vhost)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for record in records:
            props = record_properties(record)
            if props.user_id and props.user_id != own_user:
                props.user_id = None  # the broker refuses a user_id that is not the publisher's
                outcome.warnings.append("user_id dropped from messages published by another user")
            channel.basic_publish(exchange="", routing_key=record["queue"], body=base64.b64decode(record["body"]),
                                  properties=props, mandatory=True)
            outcome.restored += 1
    finally:
        connection.close()


def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    data = verified_stream(ctx, TIER, "vhost", STREAM_FILE)
    lines = data.splitlines()
    head = json.loads(lines[0])
    records = [json.loads(line) for line in lines[1:]]
    vhost = ctx.target.vhost
    api = services.RabbitMQApi(ctx.settings)
    try:
        api.delete_vhost(vhost)  # replace semantics: the vhost ends as it was at the backup
        api.create_vhost(vhost)
        api.set_permissions(vhost, ctx.settings.rabbitmq_api_user)
        for perm in head.get("permissions", []):
            try:
                api.set_permissions(vhost, perm["user"], perm["configure"], perm["write"], perm["read"])
            except OperationFailed:
                outcome.warnings.append(f"permission of user {perm['user']} not restored (no such user?)")
        api.load_definitions(vhost, _retarget(head["definitions"], vhost))
        _publish(ctx.settings, vhost, records, outcome, services.amqp_user(ctx.settings))
    except pika.exceptions.AMQPError as exc:
        raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier rabbitmq: publishing failed: {one_line(repr(exc))}") from None
    outcome.details.update(vhost=vhost, queues=len(head["definitions"].get("queues", [])))
    outcome.warnings = sorted(set(outcome.warnings))
    return outcome


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS). Imported here, not at the top, only so this block stays
# an append to the module.
from .base import TierSpec  # noqa: E402
from .base import DrillContext  # noqa: E402


def drill_compare(check: DrillContext) -> str:
    """Every durable queue of the session holds as many messages in the scratch vhost as were backed up."""
    expected = check.recorded.checksums.get("depths", {})
    connection = services.amqp_connection(check.settings, check.scratch.vhost)
    try:
        channel = connection.channel()
        got = {q: channel.queue_declare(q, passive=True).method.message_count for q in expected}
    finally:
        connection.close()
    return "ok" if got == expected else f"queue depths {got} != backed up {expected}"


SPEC = TierSpec(
    TIER, "messaging", False, "rabbitmq", backup, restore,
    asset_key="rabbitmq_backup", kinds=("rabbitmq", "restic"), pool="rabbitmq", drill=drill_compare,
    description="The tenant's vhost /cliente_{id}: definitions, permissions and the messages of durable queues, "
                "read without loss (depths unchanged).",
)
