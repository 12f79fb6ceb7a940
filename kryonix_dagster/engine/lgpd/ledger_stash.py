"""The erasure ledger, also kept beside the tenant's repositories (primary and off-site copy),
so it survives the loss of the main database: `keys recover` brings it back with the key
vault, and the next restore still re-erases every erased person.

A stash file holds what the main database holds for the tenant's ledger: the keyed hashes
(never a value) and the ledger key WRAPPED under the master key (useless without it). Like the
key vault's stash (key_stash.py), files are only ever added — `ledger-<id>-<hash of the
content>.json` in the vault folder — so they also go through the copy's append-only endpoint;
where deletion is allowed a rotation removes superseded versions and off-boarding removes all.
Every record is sealed (key_stash.seal); recovery merges every authentic version whose ledger
key the master key opens: the entries come back as a union, and rows that are there stay.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import locations, pg
from ..config import Settings
from ..errors import OperationFailed, one_line
from ..key_stash import add_to_vault, read_vault_files, vault_folder
from ..locations import Location
from ..naming import ledger_stash_file_name, ledger_stash_file_tenant
from . import ledger

log = logging.getLogger(__name__)
FORMAT = 2  # sealed, like every stash record (key_stash.seal)


@dataclass(frozen=True)
class LedgerRecord:
    key: ledger.WrappedLedgerKey
    entries: tuple[dict, ...] = field(repr=False)  # id, kind, keyed hashes, times: never a value
    created: str = ""

    @property
    def tenant_id(self) -> str:
        return self.key.tenant_id

    @property
    def digest(self) -> str:
        body = json.dumps([FORMAT, self.tenant_id, self.key.master_key_id, self.key.nonce.hex(), self.key.wrapped.hex(),
                           list(self.entries)], sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()[:16]

    @property
    def file_name(self) -> str:
        return ledger_stash_file_name(self.tenant_id, self.digest)

    @property
    def completeness(self) -> tuple[int, int, str]:
        """Newer versions have more entries, or more of them rewritten out of old restore points."""
        return len(self.entries), sum(1 for e in self.entries if e["rewritten_at"]), self.created

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "tenant": self.tenant_id, "master_key_id": self.key.master_key_id,
            "nonce": base64.b64encode(self.key.nonce).decode(),
            "wrapped_ledger_key": base64.b64encode(self.key.wrapped).decode(),
            "entries": list(self.entries), "created": self.created,
        }, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "LedgerRecord":
        doc = json.loads(raw)
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown ledger stash format {doc.get('format')!r}")
        key = ledger.WrappedLedgerKey(doc["tenant"], doc["master_key_id"], base64.b64decode(doc["nonce"]),
                                      base64.b64decode(doc["wrapped_ledger_key"]))
        return cls(key, tuple(doc["entries"]), doc.get("created", ""))


def _entry_doc(entry: ledger.Entry) -> dict:
    return {"id": entry.id, "subject_kind": entry.subject_kind, "value_hash": entry.value_hash,
            "key_hashes": list(entry.key_hashes), "erased_at": entry.erased_at.isoformat(),
            "rewritten_at": entry.rewritten_at.isoformat() if entry.rewritten_at else None}


def current_record(settings: Settings, tenant_id: str) -> LedgerRecord | None:
    """The tenant's ledger as the main database has it now; None without a ledger key."""
    key = ledger.wrapped_ledger_key(settings, tenant_id)
    if key is None:
        return None
    entries = tuple(_entry_doc(e) for e in ledger.entries(settings, tenant_id))
    return LedgerRecord(key, entries, datetime.now(timezone.utc).isoformat())


def stash(settings: Settings, tenant_id: str, where: Location) -> LedgerRecord | None:
    """Add the tenant's current ledger at `where` unless that very version is there."""
    record = current_record(settings, tenant_id)
    if record is None:
        return None
    return add_to_vault(settings, where, record)


def ensure_stashed(settings: Settings, tenant_id: str, where: Location) -> None:
    """`stash`, never failing the caller: a missing ledger stash is a warning."""
    try:
        stash(settings, tenant_id, where)
    except OSError as exc:
        log.warning("tenant %s: erasure ledger not stashed beside the %s repository: %s", tenant_id, where.kind, exc)


def stash_everywhere(settings: Settings, tenant_id: str) -> None:
    """After the ledger changed (an erasure, a rewrite): beside the primary and the copy. A
    location that cannot take it is an error (OperationFailed): the erasure stands in the main
    database, but would not survive its loss, and the operator must know."""
    for where in locations.stash_places(settings):
        try:
            stash(settings, tenant_id, where)
        except OSError as exc:
            raise OperationFailed(f"tenant {tenant_id}: the erasure ledger could not be stashed beside the {where.kind} "
                                  f"repository ({one_line(str(exc), 200)}); it is recorded in the main database "
                                  f"only: fix that location and run the command again") from None


def read_ledgers(settings: Settings, where: Location) -> dict[str, list[LedgerRecord]]:
    """Every tenant's stashed ledger versions at `where`, most complete first."""
    found = read_vault_files(settings, where, ledger_stash_file_tenant, LedgerRecord.from_bytes,
                             "erasure ledger stash")
    for records in found.values():
        records.sort(key=lambda r: r.completeness, reverse=True)
    return found


def restore_ledger(settings: Settings, records: list[LedgerRecord]) -> int:
    """Merge every authentic stashed version into the main database: the ledger key when the
    tenant has none, and the union of the entries (matched by kind, hash and time) that are not
    there; nothing that exists is changed. Returns how many entries were added."""
    chosen, versions = None, []
    for record in records:
        try:
            key = ledger.unwrap_key(settings, record.tenant_id, record.key.nonce, record.key.wrapped,
                                    record.key.master_key_id)
        except OperationFailed:
            continue
        chosen = chosen or (record, key)
        if key == chosen[1]:
            versions.append(record)
    if chosen is None:
        return 0
    record, key = chosen
    tenant_id = record.tenant_id
    if not ledger.store_wrapped_key(settings, record.key) and ledger.ledger_key(settings, tenant_id) != key:
        log.warning("tenant %s: the main database holds another ledger key than the stash's; the stashed "
                    "entries (hashed under the stash's key) were not merged", tenant_id)
        return 0
    union: dict[tuple, dict] = {}
    for version in versions:
        for entry in version.entries:
            ident = (entry["subject_kind"], entry["value_hash"], entry["erased_at"])
            kept = union.setdefault(ident, dict(entry))
            if entry["rewritten_at"] and (not kept["rewritten_at"] or entry["rewritten_at"] > kept["rewritten_at"]):
                kept["rewritten_at"] = entry["rewritten_at"]
    added = 0
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        for entry in sorted(union.values(), key=lambda e: e["id"]):
            cur.execute(
                "INSERT INTO tenants.lgpd_ledger (id, cliente_id, subject_kind, value_hash, key_hashes, erased_at, "
                "rewritten_at) SELECT CASE WHEN EXISTS (SELECT 1 FROM tenants.lgpd_ledger WHERE id = %(id)s) "
                "THEN nextval(pg_get_serial_sequence('tenants.lgpd_ledger', 'id')) ELSE %(id)s END, "
                "%(tenant)s, %(kind)s, %(hash)s, %(keys)s, %(at)s, %(rewritten)s "
                "WHERE NOT EXISTS (SELECT 1 FROM tenants.lgpd_ledger WHERE cliente_id = %(tenant)s AND "
                "subject_kind = %(kind)s AND value_hash = %(hash)s AND erased_at = %(at)s::timestamptz)",
                {"id": entry["id"], "tenant": tenant_id, "kind": entry["subject_kind"], "hash": entry["value_hash"],
                 "keys": entry["key_hashes"], "at": entry["erased_at"], "rewritten": entry["rewritten_at"]})
            added += cur.rowcount
        cur.execute("SELECT setval(pg_get_serial_sequence('tenants.lgpd_ledger', 'id'), "
                    "GREATEST((SELECT max(id) FROM tenants.lgpd_ledger), 1))")
    return added


def remove(settings: Settings, tenant_id: str, where: Location, keep: LedgerRecord | None = None) -> int:
    """Remove the tenant's ledger stash files at `where` (all, or all but `keep`); how many."""
    folder = vault_folder(settings, where)
    removed = 0
    for name in folder.names():
        if ledger_stash_file_tenant(name) == tenant_id and (keep is None or name != keep.file_name):
            folder.remove(name)
            removed += 1
    return removed
