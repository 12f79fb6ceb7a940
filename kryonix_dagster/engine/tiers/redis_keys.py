"""Redis tier: the tenant's key namespace `cliente:{id}:*`.

SCAN (never KEYS) with the tenant's MATCH pattern, de-duplicated, then pipelined DUMP and
PTTL: values stay in Redis's own serialization, binary-safe, every type including streams.
The stream holds the keys sorted with their payloads, then a trailer of absolute expiry
times (whole seconds) for the keys that have one; keeping the expiries apart lets an
unchanged namespace deduplicate in restic. Restore uses RESTORE … REPLACE with the time
each key has left; keys that expired since the backup are not resurrected. The whole snapshot
is checked first (manifest checksum, format, every key in the tenant's namespace), so a bad
snapshot changes nothing; then the keys the namespace held when the restore began (listed by
a SCAN that runs while the snapshot is checked) and the snapshot lacks are deleted. The
RESTOREs go out as hand-encoded RESP batches, one batch in flight. The session's own
`backup:in_progress` flag is never captured nor restored.
"""
from __future__ import annotations

import hashlib
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import redis

from .. import services
from ..errors import OperationFailed, one_line
from ..manifest import STATUS_EMPTY, STATUS_OK, TierResult, tier_tags
from ..naming import rename_redis_key
from .base import BackupContext, DrillContext, RestoreContext, RestoreOutcome, TierSpec, verified_stream
from ..reporting import Stopwatch

TIER = "redis"
STREAM_FILE = "keys.bin"
MAGIC = b"KRYONIX-REDIS-2\n"
TRAILER = b"\nKRYONIX-EXPIRIES\n"
BATCH = 500
PIPELINE_BYTES = 1 << 20  # a restore sends its RESTOREs in batches of about this size
PIPELINE_COMMANDS = 2000  # … and at most this many commands
SCAN_COUNT = 2000  # keyspace slots one SCAN call of a restore walks
NO_EXPIRY = -1
_RECORD = struct.Struct("<BII")  # record marker 1, key length, payload length
_EXPIRY = struct.Struct("<Iq")  # index of the key in the stream, absolute expiry in ms


def scan_keys(client: redis.Redis, match: str, exclude: bytes) -> list[bytes]:
    """Every key of the namespace once, sorted (SCAN may return a key more than once)."""
    return sorted({k for k in client.scan_iter(match=match, count=1000) if k != exclude})


def _records(client: redis.Redis, keys: list[bytes], stats: dict) -> Iterator[bytes]:
    yield MAGIC
    expiries: list[bytes] = []
    index = 0
    for start in range(0, len(keys), BATCH):
        batch = keys[start:start + BATCH]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.dump(key)
            pipe.pttl(key)
        replies = pipe.execute()
        now_ms = int(time.time() * 1000)
        for i, key in enumerate(batch):
            payload, pttl = replies[2 * i], replies[2 * i + 1]
            if payload is None or pttl == -2:
                stats["vanished"] += 1  # deleted or expired between SCAN and DUMP
                continue
            if pttl >= 0:
                expiries.append(_EXPIRY.pack(index, round((now_ms + pttl) / 1000) * 1000))
            index += 1
            yield _RECORD.pack(1, len(key), len(payload)) + key + payload
    stats["keys"] = index
    stats["with_ttl"] = len(expiries)
    yield TRAILER + b"".join(expiries)


def parse_records(data: bytes) -> list[tuple[bytes, int, bytes]]:
    """(key, absolute expiry in ms or NO_EXPIRY, DUMP payload) in stream order."""
    if not data.startswith(MAGIC):
        raise OperationFailed("redis snapshot: unknown format")
    pos, end, keys, payloads = len(MAGIC), len(data), [], []
    unpack, head, key_append, payload_append = _RECORD.unpack_from, _RECORD.size, keys.append, payloads.append
    while pos < end and data[pos] == 1:
        _marker, key_len, payload_len = unpack(data, pos)
        pos += head
        key_append(data[pos:pos + key_len])
        pos += key_len
        payload_append(data[pos:pos + payload_len])
        pos += payload_len
    if data[pos:pos + len(TRAILER)] != TRAILER:
        raise OperationFailed("redis snapshot: truncated (no expiry trailer)")
    expiries = [NO_EXPIRY] * len(keys)
    for index, at in _EXPIRY.iter_unpack(data[pos + len(TRAILER):]):
        if index < len(expiries):
            expiries[index] = at
    return list(zip(keys, expiries, payloads))


def backup(ctx: BackupContext) -> TierResult:
    watch = Stopwatch()
    names = ctx.names
    client = services.redis_client(ctx.settings)
    try:
        keys = scan_keys(client, names.redis_match, names.backup_flag_key.encode())
        version = client.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        raise OperationFailed(f"tenant {names.tenant_id}, tier redis: SCAN failed: {one_line(exc)}") from None
    ctx.captured[TIER] = [k[len(names.redis_prefix):].decode(errors="replace") for k in keys]
    if not keys:
        return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds, details={"redis_version": version})
    stats = {"keys": 0, "with_ttl": 0, "vanished": 0}
    digest = hashlib.sha256()

    def stream() -> Iterator[bytes]:
        try:
            for record in _records(client, keys, stats):
                digest.update(record)
                yield record
        except redis.RedisError as exc:
            raise OperationFailed(f"tenant {names.tenant_id}, tier redis: DUMP failed: {one_line(exc)}") from None

    summary = ctx.repo.backup_stream(stream(), STREAM_FILE, tier_tags(ctx.session_id, TIER, "keys", ctx.backup_type),
                                     ctx.session_time, ctx.restic_progress("redis keys"))
    return TierResult(
        TIER, STATUS_OK, snapshots={"keys": summary.snapshot_id}, bytes_processed=summary.total_bytes_processed,
        bytes_added=summary.data_added, items=stats["keys"], duration_seconds=watch.seconds,
        checksums={"stream_sha256": digest.hexdigest(), "keys": stats["keys"]},
        details={"keys": stats["keys"], "keys_with_ttl": stats["with_ttl"], "vanished_during_backup": stats["vanished"],
                 "redis_version": version},
    )


def planned_keys(ctx: RestoreContext, data: bytes, where: str) -> list[tuple[bytes, int, bytes]]:
    """Every record renamed to the target, all checked before Redis is touched."""
    target, flag = ctx.target, ctx.target.backup_flag_key.encode()
    prefix = target.redis_prefix.encode()
    try:
        planned = parse_records(data)
        if ctx.into_other:
            planned = [(rename_redis_key(key, ctx.source, target), expiry, payload) for key, expiry, payload in planned]
        for key, _expiry, _payload in planned:
            if not key.startswith(prefix) or key == flag:
                raise ValueError("key outside the tenant's namespace")
    except (ValueError, struct.error, OperationFailed) as exc:
        raise OperationFailed(f"{where}: snapshot refused, nothing was changed: {one_line(str(exc), 200)}") from None
    return planned


def _restore_command(key: bytes, expiry: int, payload: bytes) -> bytes:
    """RESTORE key ttl payload REPLACE [ABSTTL], encoded in RESP by hand: packing and parsing
    through redis-py's generic command path costs more than Redis takes to run the command."""
    if expiry == NO_EXPIRY:
        return b"*5\r\n$7\r\nRESTORE\r\n$%d\r\n%b\r\n$1\r\n0\r\n$%d\r\n%b\r\n$7\r\nREPLACE\r\n" % (
            len(key), key, len(payload), payload)
    ttl = b"%d" % expiry
    return b"*6\r\n$7\r\nRESTORE\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$7\r\nREPLACE\r\n$6\r\nABSTTL\r\n" % (
        len(key), key, len(ttl), ttl, len(payload), payload)


@dataclass
class Restored:
    keys: set[bytes] = field(default_factory=set)  # every key sent to RESTORE
    expired: int = 0  # planned keys whose expiry had passed: not resurrected


def _batches(planned: list[tuple[bytes, int, bytes]], now_ms: int, done: Restored) -> Iterator[tuple[bytes, int]]:
    """(RESP bytes, number of commands) of about PIPELINE_BYTES each, skipping keys whose
    expiry has passed; `done` records what each batch holds."""
    parts: list[bytes] = []
    size = 0
    for key, expiry, payload in planned:
        if expiry != NO_EXPIRY and expiry <= now_ms + 1:
            done.expired += 1
            continue
        done.keys.add(key)
        command = _restore_command(key, expiry, payload)
        parts.append(command)
        size += len(command)
        if size >= PIPELINE_BYTES or len(parts) >= PIPELINE_COMMANDS:
            yield b"".join(parts), len(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts), len(parts)


def _read_replies(conn, count: int) -> None:
    for _ in range(count):
        conn.read_response()  # raises redis.ResponseError on an error reply


def restore_keys(client: redis.Redis, planned: list[tuple[bytes, int, bytes]], now_ms: int) -> Restored:
    """RESTORE … REPLACE every planned key that has not expired, pipelined on one connection
    with one batch in flight while the next is packed."""
    done = Restored()
    pool = client.connection_pool
    conn = pool.get_connection()
    owed = 0
    try:
        for blob, count in _batches(planned, now_ms, done):
            conn.send_packed_command([blob], check_health=False)
            _read_replies(conn, owed)
            owed = count
        _read_replies(conn, owed)
    except BaseException:
        conn.disconnect()  # replies may be left unread: never hand this connection back as it is
        raise
    finally:
        pool.release(conn)
    return done


def present_keys(client: redis.Redis, target) -> set[bytes]:
    """The target namespace's keys as the restore begins, but the backup flag."""
    present: set[bytes] = set()
    cursor = 0
    while True:  # SCAN's own loop, not scan_iter: a page at a time into the set, no per-key Python
        cursor, page = client.scan(cursor, match=target.redis_match, count=SCAN_COUNT)
        present.update(page)
        if not int(cursor):
            break
    present.discard(target.backup_flag_key.encode())
    return present


def delete_keys(client: redis.Redis, keys: set[bytes]) -> int:
    """How many of `keys` were deleted (one that expired meanwhile is not counted)."""
    ordered = sorted(keys)
    return sum(client.delete(*ordered[start:start + BATCH]) for start in range(0, len(ordered), BATCH))


def restore(ctx: RestoreContext) -> RestoreOutcome:
    """Verify and plan every key while a SCAN in a second thread lists the namespace's current
    keys (Redis walks its keyspace while this process checks the snapshot); then RESTORE every
    key and delete the listed keys the snapshot lacks (replace semantics: keys created after
    the backup go, the backup flag stays). Nothing is written before both have finished."""
    outcome = RestoreOutcome(tier=TIER)
    target = ctx.target
    where = f"tenant {target.tenant_id}, tier redis" + (f" (from tenant {ctx.source.tenant_id})" if ctx.into_other else "")
    client = services.redis_client(ctx.settings)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-scan") as pool:
        listing = pool.submit(present_keys, client, target)
        planned = planned_keys(ctx, verified_stream(ctx, "keys", STREAM_FILE, where), where)
        outcome.details.update(ctx.reapply(TIER, planned))  # drops the erased persons' keys (the erasure ledger)
        try:
            present = listing.result()
        except redis.RedisError as exc:
            raise OperationFailed(f"{where}: SCAN failed, nothing was changed: {one_line(exc)}") from None
    try:
        done = restore_keys(client, planned, int(time.time() * 1000))
        stale = present - done.keys
        outcome.removed = delete_keys(client, stale)
    except redis.RedisError as exc:
        raise OperationFailed(f"{where}: RESTORE failed: {one_line(exc)}") from None
    outcome.restored = len(done.keys)
    outcome.details.update(expired_not_restored=done.expired)
    return outcome


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS).


def drill_compare(check: DrillContext) -> str:
    """Restored + expired keys = keys backed up, and the scratch namespace holds exactly the restored ones."""
    restored = check.outcome.restored
    expired = check.outcome.details.get("expired_not_restored", 0)
    expired += check.outcome.details.get("lgpd_reerased", 0)  # erased persons' keys, not restored on purpose
    if restored + expired != check.recorded.items:
        return f"{restored} keys restored and {expired} expired, {check.recorded.items} backed up"
    client = services.redis_client(check.settings)
    present = sum(1 for _ in client.scan_iter(match=check.scratch.redis_match, count=1000))
    return "ok" if present == restored else f"{present} keys present, {restored} restored"


SPEC = TierSpec(
    TIER, "foundation", True, "redis", backup, restore,
    asset_key="redis_backup", kinds=("redis", "restic"), pool="redis", drill=drill_compare,
    description="The tenant's Redis namespace cliente:{id}:*: SCAN + pipelined DUMP/PTTL, every type, TTLs kept.",
)
