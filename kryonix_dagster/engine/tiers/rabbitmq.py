"""RabbitMQ tier: the tenant's vhost `/cliente_{id}`.

Definitions (exchanges, queues with arguments, bindings with arguments, policies, and the
vhost's limits and operator policies, which the broker exports as `parameters`) come from the
management API, with the vhost's metadata, user permissions and topic permissions. Messages of
durable queues are read over AMQP with manual acknowledgement and never acknowledged: when the
channel closes, the broker puts every message back in its original position, so nothing is
lost and queue depths are unchanged (consumers see those messages as redelivered). Queues where
such a read is not free are left out with a warning: quorum queues with a delivery limit (each
read counts as a delivery, so backups would dead-letter or drop messages) and streams.

Restore verifies the snapshot against its manifest checksum and its names against the source
tenant's, then loads its definitions into a scratch vhost (`<vhost>~restore`) so a definition
the broker refuses fails the restore before anything is deleted. Only then is the vhost
re-created and every message re-published, in order, with its body, headers, properties and
routing key. Access: into another tenant, the target keeps exactly its own users' permissions
and none of the source's; into the same tenant, live permissions are kept and the snapshot's
permissions of users that have none now are re-granted, each named in a warning.
"""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterator

import pika
import pika.exceptions

from .. import services
from ..errors import OperationFailed, one_line
from ..manifest import STATUS_EMPTY, STATUS_OK, TierResult, tier_tags
from ..naming import TenantNames, foreign_tenant_ids
from .base import BackupContext, DrillContext, RestoreContext, RestoreOutcome, TierSpec, verified_stream
from ..reporting import Stopwatch

TIER = "rabbitmq"
STREAM_FILE = "vhost.jsonl"
_PROPS = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
          "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id")
_DEFINITION_KEYS = ("exchanges", "queues", "bindings", "policies", "parameters")
# vhost-scoped parameters kept: limits and operator policies. Others (shovels, federation
# upstreams) carry URIs with credentials and may name other vhosts: never captured nor loaded.
_PARAMETER_COMPONENTS = ("vhost-limits", "operator_policy")


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


# --- backup ---------------------------------------------------------------------------------

def uncapturable_reason(queue: dict) -> str | None:
    """Why reading this queue's messages would change it, or None when a read is free."""
    kind = queue.get("type") or queue.get("arguments", {}).get("x-queue-type", "classic")
    if kind == "stream":
        return "stream queue"
    limit = queue.get("arguments", {}).get("x-delivery-limit")
    if limit is None:
        limit = (queue.get("effective_policy_definition") or {}).get("delivery-limit")
    if kind == "quorum" and limit is not None:
        return "quorum queue with a delivery limit"
    return None


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


def capture_messages(settings, vhost: str, queues: list[str]) -> tuple[list[dict], dict]:
    """Messages of the given queues; one channel per queue, closed without acking."""
    connection = services.amqp_connection(settings, vhost)
    messages: list[dict] = []
    depths: dict[str, int] = {}
    try:
        for name in queues:
            channel = connection.channel()
            try:
                got, depth = read_queue(channel, name)
            finally:
                channel.close()  # nothing acked: every message goes back, in order
            messages += got
            depths[name] = depth
    finally:
        connection.close()
    return messages, depths


def vhost_metadata(api: services.RabbitMQApi, vhost: str) -> dict:
    info = api.request("GET", f"/vhosts/{api.q(vhost)}") or {}
    meta = {"description": info.get("description") or "", "tags": sorted(info.get("tags") or [])}
    if info.get("default_queue_type") not in (None, "", "undefined"):
        meta["default_queue_type"] = info["default_queue_type"]
    return meta


def topic_permissions(api: services.RabbitMQApi, vhost: str) -> list[dict]:
    found = api.request("GET", f"/vhosts/{api.q(vhost)}/topic-permissions") or []
    return [{k: p[k] for k in ("user", "exchange", "write", "read")} for p in found]


def vhost_definitions(api: services.RabbitMQApi, vhost: str) -> dict:
    definitions = api.definitions(vhost)
    kept = {k: definitions.get(k, []) for k in _DEFINITION_KEYS}
    kept["parameters"] = [p for p in kept["parameters"] if p.get("component") in _PARAMETER_COMPONENTS]
    return kept


def backup(ctx: BackupContext) -> TierResult:
    watch = Stopwatch()
    names = ctx.names
    api = services.RabbitMQApi(ctx.settings)
    if not api.vhost_exists(names.vhost):
        ctx.captured[TIER] = []
        return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds, details={"vhost": None})
    definitions = vhost_definitions(api, names.vhost)
    permissions = [{k: p[k] for k in ("user", "configure", "write", "read")} for p in api.permissions(names.vhost)]
    live_queues = {q["name"]: q for q in api.queues(names.vhost)}
    busy = sorted(q for q, info in live_queues.items() if info.get("consumers", 0))
    if busy:
        ctx.report.warn(f"queues with consumers attached, their capture may miss messages in flight: {', '.join(busy)}")
    skipped = {name: reason for name, info in sorted(live_queues.items()) if (reason := uncapturable_reason(info))}
    for name, reason in skipped.items():
        ctx.report.warn(f"messages of queue {name} not captured: {reason} (reading them would change the queue)")
    wanted = [q["name"] for q in definitions["queues"] if q.get("durable") and q["name"] not in skipped]
    try:
        messages, depths = capture_messages(ctx.settings, names.vhost, wanted)
    except pika.exceptions.AMQPError as exc:
        raise OperationFailed(f"tenant {names.tenant_id}, tier rabbitmq: reading messages failed: {one_line(repr(exc))}") from None
    ctx.captured[TIER] = [q["name"] for q in definitions["queues"]]
    head = {"vhost": names.vhost, "definitions": definitions, "permissions": permissions,
            "topic_permissions": topic_permissions(api, names.vhost), "metadata": vhost_metadata(api, names.vhost)}
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
                 "policies": len(definitions["policies"]), "parameters": len(definitions["parameters"]),
                 "topic_permissions": len(head["topic_permissions"]), "queues_with_consumers": busy,
                 "queues_not_captured": skipped},
    )


# --- restore: read and check the snapshot before touching anything -------------------------------

@dataclass
class VhostSnapshot:
    vhost: str
    definitions: dict
    permissions: list[dict]
    topic_permissions: list[dict]
    metadata: dict
    records: list[dict]


def _where(ctx: RestoreContext) -> str:
    source = f" (from tenant {ctx.source.tenant_id})" if ctx.into_other else ""
    return f"tenant {ctx.target.tenant_id}, tier rabbitmq{source}"


def foreign_names(names: list[str], owner: TenantNames) -> list[str]:
    """Names that carry another tenant's naming form (`cliente_ID`, `cliente-ID`, `cliente:ID`)."""
    return sorted({n for n in names if foreign_tenant_ids(n, owner)})


def parse_snapshot(ctx: RestoreContext, data: bytes) -> VhostSnapshot:
    """Parse the stream and refuse anything that names another tenant or an undeclared queue."""
    try:
        lines = data.splitlines()
        head = json.loads(lines[0])
        snap = VhostSnapshot(head["vhost"], {k: head["definitions"].get(k, []) for k in _DEFINITION_KEYS},
                             head.get("permissions", []), head.get("topic_permissions", []), head.get("metadata", {}),
                             [json.loads(line) for line in lines[1:]])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise OperationFailed(f"{_where(ctx)}: snapshot is not a vhost stream ({type(exc).__name__})") from None
    vhosts = {snap.vhost, *(i["vhost"] for items in snap.definitions.values() for i in items if "vhost" in i)}
    if vhosts != {ctx.source.vhost}:
        raise OperationFailed(f"{_where(ctx)}: snapshot names vhost(s) {', '.join(sorted(vhosts - {ctx.source.vhost}))}, "
                              f"not {ctx.source.vhost}; nothing was changed")
    users = [p.get("user", "") for p in snap.permissions + snap.topic_permissions]
    foreign = foreign_names(users, ctx.source)
    if foreign:
        raise OperationFailed(f"{_where(ctx)}: snapshot grants users of another tenant ({', '.join(foreign)}); "
                              "nothing was changed")
    declared = {q["name"] for q in snap.definitions["queues"]}
    undeclared = sorted({r.get("queue") for r in snap.records} - declared, key=str)
    if undeclared:
        raise OperationFailed(f"{_where(ctx)}: snapshot holds messages of undeclared queue(s) "
                              f"{', '.join(map(str, undeclared))}; nothing was changed")
    return snap


def restorable_definitions(snap: VhostSnapshot, vhost: str, outcome: RestoreOutcome) -> dict:
    """The snapshot's definitions retargeted to `vhost`, with only the parameters we restore."""
    defs = {k: [{**item, "vhost": vhost} for item in snap.definitions.get(k, [])] for k in _DEFINITION_KEYS}
    dropped = sorted({p.get("component", "?") for p in defs["parameters"]} - set(_PARAMETER_COMPONENTS))
    if dropped:
        outcome.warnings.append(f"vhost parameters of component(s) {', '.join(dropped)} not restored")
    defs["parameters"] = [p for p in defs["parameters"] if p.get("component") in _PARAMETER_COMPONENTS]
    return defs


# --- restore: who may use the vhost afterwards ------------------------------------------------------

@dataclass
class Access:
    """Permissions (user → configure/write/read) and topic permissions ((user, exchange) → write/read)."""

    permissions: dict[str, dict] = field(default_factory=dict)
    topics: dict[tuple[str, str], dict] = field(default_factory=dict)

    @classmethod
    def from_lists(cls, permissions: list[dict], topics: list[dict]) -> "Access":
        return cls({p["user"]: {k: p[k] for k in ("configure", "write", "read")} for p in permissions},
                   {(t["user"], t["exchange"]): {k: t[k] for k in ("write", "read")} for t in topics})

    @classmethod
    def live(cls, api: services.RabbitMQApi, vhost: str) -> "Access":
        if not api.vhost_exists(vhost):
            return cls()
        return cls.from_lists(api.permissions(vhost), topic_permissions(api, vhost))


def planned_access(ctx: RestoreContext, snap: VhostSnapshot, live: Access, outcome: RestoreOutcome) -> Access:
    """Into another tenant: exactly the target's live access. Into the same tenant: the live
    access, plus the snapshot's for users that have none now (re-granted, and said so)."""
    if ctx.into_other:
        return live
    saved = Access.from_lists(snap.permissions, snap.topic_permissions)
    service = {ctx.settings.rabbitmq_api_user, services.amqp_user(ctx.settings)}
    regranted = sorted(({u for u in saved.permissions if u not in live.permissions}
                        | {u for u, e in saved.topics if (u, e) not in live.topics}) - service)
    if regranted:
        outcome.warnings.append(f"re-granted access on {ctx.target.vhost} that the live vhost did not have "
                                f"(revoked since the backup?): users {', '.join(regranted)}; revoke it again if "
                                "that was on purpose")
    return Access({**saved.permissions, **live.permissions}, {**saved.topics, **live.topics})


def apply_access(api: services.RabbitMQApi, vhost: str, access: Access, outcome: RestoreOutcome) -> None:
    for user, perm in sorted(access.permissions.items()):
        try:
            api.set_permissions(vhost, user, perm["configure"], perm["write"], perm["read"])
        except OperationFailed:
            outcome.warnings.append(f"permission of user {user} not restored (no such user?)")
    for (user, exchange), perm in sorted(access.topics.items()):
        try:
            api.request("PUT", f"/topic-permissions/{api.q(vhost)}/{api.q(user)}",
                        json={"exchange": exchange, "write": perm["write"], "read": perm["read"]})
        except OperationFailed:
            outcome.warnings.append(f"topic permission of user {user} on {exchange} not restored (no such user?)")


# --- restore: validate in a scratch vhost, then replace -----------------------------------------------

def create_vhost(api: services.RabbitMQApi, vhost: str, metadata: dict) -> None:
    body = {"description": metadata.get("description", ""), "tags": ",".join(metadata.get("tags", []))}
    if metadata.get("default_queue_type"):
        body["default_queue_type"] = metadata["default_queue_type"]
    api.request("PUT", f"/vhosts/{api.q(vhost)}", json=body)


def grant_service_users(ctx: RestoreContext, api: services.RabbitMQApi, vhost: str) -> None:
    """The API user loads definitions, the AMQP user (KRYONIX_AMQP_URL) publishes."""
    for user in dict.fromkeys([ctx.settings.rabbitmq_api_user, services.amqp_user(ctx.settings)]):
        api.set_permissions(vhost, user)


def check_in_staging(ctx: RestoreContext, api: services.RabbitMQApi, snap: VhostSnapshot) -> None:
    """Load the definitions into `<vhost>~restore`: what the broker refuses fails here, while
    the live vhost is untouched. The scratch vhost is removed whatever happens."""
    staging = ctx.target.staging_vhost
    api.delete_vhost(staging)  # left by a killed restore
    try:
        create_vhost(api, staging, {})
        grant_service_users(ctx, api, staging)
        api.load_definitions(staging, restorable_definitions(snap, staging, RestoreOutcome(TIER)))
    except OperationFailed as exc:
        raise OperationFailed(f"{_where(ctx)}: the broker refuses the snapshot's definitions, nothing was changed: "
                              f"{one_line(str(exc), 300)}") from None
    finally:
        api.delete_vhost(staging)


def _needs_staging_exchange(record: dict) -> bool:
    """The default exchange reproduces a message only if it came through it to this queue and
    carries no CC/BCC header (which the default exchange would route to other queues)."""
    headers = record["properties"].get("headers") or {}
    table = headers.get("$table", headers) if isinstance(headers, dict) else {}
    return record.get("exchange", "") != "" or record.get("routing_key") != record["queue"] or \
        "CC" in table or "BCC" in table


def _publish(settings, vhost: str, records: list[dict], outcome: RestoreOutcome, own_user: str) -> None:
    """Re-publish in order. Messages whose routing key is not their queue's name go through a
    temporary fanout exchange bound to that queue only, so consumers see the original routing key."""
    connection = services.amqp_connection(settings, vhost)
    routes: dict[str, str] = {}
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for record in records:
            props = record_properties(record)
            if props.user_id and props.user_id != own_user:
                props.user_id = None  # the broker refuses a user_id that is not the publisher's
                outcome.warnings.append("user_id dropped from messages published by another user")
            exchange, key = "", record["queue"]
            if _needs_staging_exchange(record):
                exchange, key = _route(channel, routes, record["queue"]), record.get("routing_key") or ""
            channel.basic_publish(exchange=exchange, routing_key=key, body=base64.b64decode(record["body"]),
                                  properties=props, mandatory=True)
            outcome.restored += 1
        for exchange in routes.values():
            channel.exchange_delete(exchange)
    finally:
        connection.close()


def _route(channel, routes: dict[str, str], queue: str) -> str:
    if queue not in routes:
        routes[queue] = f"kryonix.restore-{secrets.token_hex(6)}"
        channel.exchange_declare(routes[queue], "fanout", durable=False, auto_delete=False)
        channel.queue_bind(queue, routes[queue])
    return routes[queue]


def _drop_staging_exchanges(api: services.RabbitMQApi, vhost: str) -> None:
    """Temporary exchanges a failed publish left behind."""
    for exchange in api.request("GET", f"/exchanges/{api.q(vhost)}") or []:
        if exchange["name"].startswith("kryonix.restore-"):
            api.request("DELETE", f"/exchanges/{api.q(vhost)}/{api.q(exchange['name'])}", ok=(200, 204, 404))


def live_depths(settings, api: services.RabbitMQApi, vhost: str) -> dict[str, int]:
    """Each queue's message count as the restore begins, read over AMQP (the management API's
    counts lag by its statistics interval). A queue AMQP cannot inspect (exclusive to another
    connection, or the vhost no longer grants our AMQP user access) takes the API's count.
    No vhost: nothing."""
    if not api.vhost_exists(vhost):
        return {}
    queues = api.queues(vhost) or []
    depths = {queue["name"]: int(queue.get("messages") or 0) for queue in queues}
    try:
        connection = services.amqp_connection(settings, vhost)
    except pika.exceptions.AMQPError:
        return depths
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                depths[queue["name"]] = channel.queue_declare(queue["name"], passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                channel = connection.channel()  # the API's count stays
    finally:
        connection.close()
    return depths


def messages_removed(live: dict[str, int], records: list[dict]) -> int:
    """Messages the restore point does not bring back: per queue, those beyond the number it
    re-publishes (messages have no identity to match them by; a queue the restore point lacks
    loses all of its own)."""
    republished: dict[str, int] = {}
    for record in records:
        republished[record["queue"]] = republished.get(record["queue"], 0) + 1
    return sum(max(0, depth - republished.get(queue, 0)) for queue, depth in live.items())


def replace_vhost(ctx: RestoreContext, api: services.RabbitMQApi, snap: VhostSnapshot, access: Access,
                  outcome: RestoreOutcome) -> None:
    vhost = ctx.target.vhost
    definitions = restorable_definitions(snap, vhost, outcome)
    parameters = definitions.pop("parameters")  # limits last: a max-connections of 0 would stop the publisher
    live = live_depths(ctx.settings, api, vhost)
    api.delete_vhost(vhost)  # replace semantics: the vhost ends as it was at the backup
    outcome.removed = messages_removed(live, snap.records)
    outcome.details["messages_discarded"] = sum(live.values())
    create_vhost(api, vhost, snap.metadata)
    grant_service_users(ctx, api, vhost)
    api.load_definitions(vhost, definitions)
    try:
        _publish(ctx.settings, vhost, snap.records, outcome, services.amqp_user(ctx.settings))
    finally:
        _drop_staging_exchanges(api, vhost)
    if parameters:
        api.load_definitions(vhost, {"parameters": parameters})
    apply_access(api, vhost, access, outcome)


def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    snap = parse_snapshot(ctx, verified_stream(ctx, "vhost", STREAM_FILE, _where(ctx)))
    api = services.RabbitMQApi(ctx.settings)
    try:
        access = planned_access(ctx, snap, Access.live(api, ctx.target.vhost), outcome)
        check_in_staging(ctx, api, snap)
        replace_vhost(ctx, api, snap, access, outcome)
    except pika.exceptions.AMQPError as exc:
        raise OperationFailed(f"{_where(ctx)}: publishing failed: {one_line(repr(exc))}") from None
    except OperationFailed as exc:
        text = str(exc)
        raise OperationFailed(text if text.startswith("tenant ") else f"{_where(ctx)}: {one_line(text)}") from None
    not_captured = ctx.result.details.get("queues_not_captured") or {}
    for queue, reason in sorted(not_captured.items()):
        outcome.warnings.append(f"queue {queue} restored empty: its messages were not in the backup ({reason})")
    outcome.details.update(vhost=ctx.target.vhost, queues=len(snap.definitions["queues"]),
                           permissions=len(access.permissions), topic_permissions=len(access.topics))
    outcome.warnings = sorted(set(outcome.warnings))
    return outcome


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS).


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
