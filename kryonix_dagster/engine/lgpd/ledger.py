"""The erasure ledger: which data subjects were erased from a tenant, as keyed hashes only.

`tenants.lgpd_ledger` (main database, outside every backup's retention) holds, per erasure,
the subject kind, HMAC-SHA256 of the value under the tenant's ledger key, and the keyed hashes
of the person keys it resolved to (`contato_id=42` hashed the same way), so a restore can find
the person in old data by the identifying column (`email`) or by the key column of any table
that names the person (`contato_id`). Never the value, never the key.

The ledger key is 32 random bytes per tenant, wrapped with AES-GCM under the master key like
the repository passwords (engine/keys.py; associated data `lgpd-ledger:{tenant}`), in
`tenants.lgpd_ledger_keys`. Destroying it (off-boarding) makes every hash unlinkable.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import keys, pg
from ..config import Settings
from ..errors import OperationFailed


def _associated(tenant_id: str) -> bytes:
    return f"lgpd-ledger:{tenant_id}".encode()


def ledger_key(settings: Settings, tenant_id: str, create: bool = False) -> bytes | None:
    """The tenant's ledger key; created (stored wrapped) when `create` and absent."""
    select = "SELECT nonce, wrapped_key, master_key_id FROM tenants.lgpd_ledger_keys WHERE cliente_id = %s"
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(select, (tenant_id,))
        row = cur.fetchone()
    if row is None and create:
        # written under the vault's lock, wrapped by the key a rotate-master under way will keep
        with keys.writing(settings) as (cur, master):
            nonce = secrets.token_bytes(12)
            wrapped = AESGCM(master).encrypt(nonce, secrets.token_bytes(32), _associated(tenant_id))
            cur.execute(
                "INSERT INTO tenants.lgpd_ledger_keys (cliente_id, master_key_id, nonce, wrapped_key) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (cliente_id) DO NOTHING",
                (tenant_id, keys.fingerprint(master), nonce, wrapped))
            cur.execute(select, (tenant_id,))
            row = cur.fetchone()
    if row is None:
        return None
    nonce, wrapped, wrapped_by = row
    return unwrap_key(settings, tenant_id, bytes(nonce), bytes(wrapped), wrapped_by)


def unwrap_key(settings: Settings, tenant_id: str, nonce: bytes, wrapped: bytes, wrapped_by: str) -> bytes:
    """With whichever known master key wrapped it (the pending one too, mid-rotation)."""
    master = keys.known_master_keys(settings).get(wrapped_by)
    if master is None:
        raise OperationFailed(f"tenant {tenant_id}: its ledger key is wrapped by master key {wrapped_by}, "
                              "not by the one in KRYONIX_MASTER_KEY_FILE")
    try:
        return AESGCM(master).decrypt(nonce, wrapped, _associated(tenant_id))
    except InvalidTag:
        raise OperationFailed(f"tenant {tenant_id}: the wrapped ledger key failed authentication") from None


WrappedLedgerKey = keys.WrappedKey  # the same shape: a secret wrapped by the master key for one tenant


def wrapped_ledger_key(settings: Settings, tenant_id: str) -> WrappedLedgerKey | None:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT master_key_id, nonce, wrapped_key FROM tenants.lgpd_ledger_keys WHERE cliente_id = %s",
                    (tenant_id,))
        row = cur.fetchone()
    return WrappedLedgerKey(tenant_id, row[0], bytes(row[1]), bytes(row[2])) if row else None


def store_wrapped_key(settings: Settings, record: WrappedLedgerKey) -> bool:
    """Insert a (recovered) wrapped ledger key unless the tenant has one; True when inserted."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO tenants.lgpd_ledger_keys (cliente_id, master_key_id, nonce, wrapped_key) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (cliente_id) DO NOTHING",
                    (record.tenant_id, record.master_key_id, record.nonce, record.wrapped))
        return cur.rowcount > 0


def rewrap_keys(settings: Settings, new_key: bytes,
                after_each: Callable[[str], None] = lambda tenant_id: None) -> list[str]:
    """Every tenant's ledger key re-wrapped under `new_key` (keys rotate-master), each row in its
    own transaction; rows already wrapped by it are left alone, so a resumed rotation finishes."""
    new_id = keys.fingerprint(new_key)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT cliente_id, nonce, wrapped_key, master_key_id FROM tenants.lgpd_ledger_keys "
                    "WHERE master_key_id <> %s ORDER BY cliente_id", (new_id,))
        rows = cur.fetchall()
    done = []
    for tenant_id, nonce, wrapped, wrapped_by in rows:
        key = unwrap_key(settings, tenant_id, bytes(nonce), bytes(wrapped), wrapped_by)
        fresh = secrets.token_bytes(12)
        sealed = AESGCM(new_key).encrypt(fresh, key, _associated(tenant_id))
        with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
            cur.execute("UPDATE tenants.lgpd_ledger_keys SET master_key_id = %s, nonce = %s, wrapped_key = %s "
                        "WHERE cliente_id = %s AND master_key_id = %s", (new_id, fresh, sealed, tenant_id, wrapped_by))
        done.append(tenant_id)
        after_each(tenant_id)
    return done


def keyed_hash(key: bytes, kind: str, value: object) -> str:
    """HMAC-SHA256 of `kind` and the value as text: the only form a subject is ever stored in."""
    return hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Entry:
    id: int
    tenant_id: str
    subject_kind: str
    value_hash: str
    key_hashes: tuple[str, ...]
    erased_at: datetime
    rewritten_at: datetime | None

    @property
    def reference(self) -> str:
        """A short, value-free reference for certificates and reports."""
        return f"{self.id}:{self.value_hash[:12]}"

    def to_json(self) -> dict:
        return {"id": self.id, "reference": self.reference, "subject_kind": self.subject_kind,
                "erased_at": self.erased_at.isoformat(),
                "rewritten_at": self.rewritten_at.isoformat() if self.rewritten_at else None}


_COLUMNS = "id, cliente_id, subject_kind, value_hash, key_hashes, erased_at, rewritten_at"


def _entry(row) -> Entry:
    return Entry(row[0], row[1], row[2], row[3], tuple(row[4] or ()), row[5], row[6])


def append(settings: Settings, tenant_id: str, kind: str, value_hash: str, key_hashes: list[str],
           details: dict) -> Entry:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO tenants.lgpd_ledger (cliente_id, subject_kind, value_hash, key_hashes, details) "
            f"VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (tenant_id, kind, value_hash, sorted(set(key_hashes)), json.dumps(details)))
        return _entry(cur.fetchone())


def entries(settings: Settings, tenant_id: str) -> list[Entry]:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM tenants.lgpd_ledger WHERE cliente_id = %s ORDER BY id", (tenant_id,))
        return [_entry(row) for row in cur.fetchall()]


def mark_rewritten(settings: Settings, entry_ids: list[int]) -> None:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("UPDATE tenants.lgpd_ledger SET rewritten_at = now() WHERE id = ANY(%s)", (entry_ids,))


def destroy_key(settings: Settings, tenant_id: str) -> bool:
    """Crypto-shred the tenant's ledger: its hashes can no longer be linked to anybody."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM tenants.lgpd_ledger_keys WHERE cliente_id = %s", (tenant_id,))
        return cur.rowcount > 0


@dataclass
class Matcher:
    """One tenant's ledger, ready to recognise its erased subjects in any data."""

    key: bytes
    value_hashes: dict[str, set[str]] = field(default_factory=dict)  # kind -> hashes
    key_hashes: set[str] = field(default_factory=set)
    entry_ids: list[int] = field(default_factory=list)  # the ledger entries it was built from

    def value_erased(self, kind: str, value: object) -> bool:
        hashes = self.value_hashes.get(kind)
        return bool(hashes) and value is not None and keyed_hash(self.key, kind, value) in hashes

    def key_erased(self, key_name: str, value: object) -> bool:
        return value is not None and keyed_hash(self.key, key_name, value) in self.key_hashes


def matcher(settings: Settings, tenant_id: str, found: list[Entry] | None = None) -> Matcher | None:
    """The tenant's ledger as a Matcher; None when nobody was ever erased from it.

    Fails closed: entries without a readable key (the key row lost, a wrong master key) raise
    OperationFailed, never "nobody to re-erase", since the restored data would bring back every
    person of those entries. (An off-boarded tenant, whose key was destroyed on purpose, is
    refused before any restore reaches here.)"""
    found = entries(settings, tenant_id) if found is None else found
    if not found:
        return None
    key = ledger_key(settings, tenant_id)  # raises when the wrapped key cannot be unwrapped
    if key is None:
        raise OperationFailed(f"tenant {tenant_id}: the erasure ledger has {len(found)} entr"
                              f"{'y' if len(found) == 1 else 'ies'} but no ledger key to recognise them "
                              "(`kryonix-backup keys recover` restores it from the stash): it cannot be applied, "
                              "so nothing was done")
    result = Matcher(key)
    for entry in found:
        result.value_hashes.setdefault(entry.subject_kind, set()).add(entry.value_hash)
        result.key_hashes.update(entry.key_hashes)
        result.entry_ids.append(entry.id)
    return result
