"""The key vault: per-tenant restic passwords, wrapped with AES-GCM under the master key.

The master key (32 random bytes, base64 in `KRYONIX_MASTER_KEY_FILE`, mode 0600) is created
on first use. Each tenant's password is random, generated once, and stored wrapped in
`tenants.backup_keys`; the tenant id is the AES-GCM associated data, so a wrapped password
moved to another tenant's row does not unwrap.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import pg
from .config import Settings
from .errors import OperationFailed
from .fsutil import fsync_dir

log = logging.getLogger(__name__)

# The vault's lock (a PostgreSQL advisory lock in the main database): every path that writes a
# wrapped secret holds it SHARED for the transaction that wraps and writes it; `keys
# rotate-master` holds it EXCLUSIVE to publish the pending key and for its final pass, so no
# secret can be wrapped by a key that is about to be retired (key_rotation.py). The database
# itself refuses a row wrapped by a retired master key (migration 7's trigger, which also takes
# the lock shared), so a writer that skipped this protocol fails instead of losing a key.
VAULT_LOCK = 0x6B766C74  # "kvlt"


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"kryonix-master-key:" + key).hexdigest()[:16]


def _read_master_key(path: Path) -> bytes:
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except (ValueError, OSError) as exc:
        raise OperationFailed(f"master key file {path}: unreadable ({type(exc).__name__})") from None
    if len(raw) != 32:
        raise OperationFailed(f"master key file {path}: expected 32 bytes of base64, found {len(raw)}")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("master key file %s has mode %o; it should be 0600", path, mode)
    return raw


def _create_master_key(settings: Settings, path: Path) -> None:
    """Create the master key, unless wrapped passwords exist: then the old key was lost and a
    new one would silently orphan every repository.

    Atomic and durable: the key is written to a temporary file in the same folder, fsynced,
    then hard-linked to its name (which fails if another process got there first: then its
    key is the one everybody uses), and the folder is fsynced. A reader never sees a partial
    file, and a crash never leaves an empty key file behind."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), min(master_key_id) FROM tenants.backup_keys")
        count, key_id = cur.fetchone()
    if count:
        raise OperationFailed(
            f"master key file {path} is missing but {count} tenant passwords are wrapped by master key "
            f"{key_id}: restore that file (a new key could not open any repository)"
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return  # another process created it first; use theirs
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    log.info("created master key %s", path)


def master_key(settings: Settings) -> bytes:
    path = Path(settings.master_key_file)
    if not path.exists():
        _create_master_key(settings, path)
    return _read_master_key(path)


def fingerprint(key: bytes) -> str:
    """The public id of a master key (recorded beside every password it wraps)."""
    return _fingerprint(key)


def read_key_file(path: Path) -> bytes:
    return _read_master_key(Path(path))


def pending_key_file(settings: Settings) -> Path:
    """The next master key while `keys rotate-master` re-wraps the passwords (key_rotation.py)."""
    path = Path(settings.master_key_file)
    return path.with_name(path.name + ".next")


def known_master_keys(settings: Settings) -> dict[str, bytes]:
    """Fingerprint → key: the master key, plus the next one while a rotation is under way, so
    a rotation killed mid-way leaves every tenant's password readable."""
    key = master_key(settings)
    found = {_fingerprint(key): key}
    pending = pending_key_file(settings)
    if pending.exists():
        next_key = _read_master_key(pending)
        found[_fingerprint(next_key)] = next_key
    return found


def wrapping_key(settings: Settings) -> bytes:
    """The key new secrets are wrapped with: the pending key while a rotation is under way (it
    is the master key once the rotation ends), else the master key. Call it with the vault's
    lock held shared (`writing`), so the answer cannot change before the row is committed."""
    pending = pending_key_file(settings)
    if pending.exists():
        return _read_master_key(pending)
    return master_key(settings)


@contextmanager
def writing(settings: Settings) -> Iterator[tuple]:
    """(cursor, key to wrap with) inside one transaction of the main database that holds the
    vault's lock shared: what is written there is seen by rotate-master's final pass."""
    master_key(settings)  # created first (outside the lock) when this is the very first secret
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (VAULT_LOCK,))
        yield cur, wrapping_key(settings)


@contextmanager
def exclusive(settings: Settings) -> Iterator:
    """A cursor inside one transaction that holds the vault's lock exclusive (rotate-master):
    it waits for every writer's transaction under way, and holds back new ones."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (VAULT_LOCK,))
        yield cur


def wrap(key: bytes, tenant_id: str, password: str) -> tuple[bytes, bytes]:
    """(nonce, wrapped password) under `key`, bound to the tenant id."""
    nonce = secrets.token_bytes(12)
    return nonce, AESGCM(key).encrypt(nonce, password.encode(), tenant_id.encode())


def unwrap(settings: Settings, tenant_id: str, nonce: bytes, wrapped: bytes, wrapped_by: str) -> str:
    """A wrapped password, with whichever known master key wrapped it."""
    known = known_master_keys(settings)
    return _unwrap(known.get(wrapped_by, master_key(settings)), tenant_id, nonce, wrapped, wrapped_by)


@dataclass(frozen=True)
class WrappedKey:
    tenant_id: str
    master_key_id: str
    nonce: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)


def wrapped_key(settings: Settings, tenant_id: str) -> WrappedKey | None:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT master_key_id, nonce, wrapped_password FROM tenants.backup_keys WHERE cliente_id = %s",
                    (tenant_id,))
        row = cur.fetchone()
    return WrappedKey(tenant_id, row[0], bytes(row[1]), bytes(row[2])) if row else None


def wrapped_keys(settings: Settings) -> list[WrappedKey]:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT cliente_id, master_key_id, nonce, wrapped_password FROM tenants.backup_keys ORDER BY 1")
        return [WrappedKey(r[0], r[1], bytes(r[2]), bytes(r[3])) for r in cur.fetchall()]


def store_wrapped(settings: Settings, record: WrappedKey, replace_existing: bool = True) -> None:
    """Write one tenant's wrapped password (one committed row: a kill leaves the old or the new)."""
    conflict = ("DO UPDATE SET master_key_id = EXCLUDED.master_key_id, nonce = EXCLUDED.nonce, "
                "wrapped_password = EXCLUDED.wrapped_password") if replace_existing else "DO NOTHING"
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO tenants.backup_keys (cliente_id, master_key_id, nonce, wrapped_password) "
                    f"VALUES (%s, %s, %s, %s) ON CONFLICT (cliente_id) {conflict}",
                    (record.tenant_id, record.master_key_id, record.nonce, record.wrapped))


def store_new_password(settings: Settings, tenant_id: str, password: str) -> str:
    """A tenant's new password (keys rotate), wrapped under the vault's lock with the key new
    secrets get; returns the wrapping key's id."""
    with writing(settings) as (cur, key):
        nonce, wrapped = wrap(key, tenant_id, password)
        cur.execute("INSERT INTO tenants.backup_keys (cliente_id, master_key_id, nonce, wrapped_password) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (cliente_id) DO UPDATE SET master_key_id = "
                    "EXCLUDED.master_key_id, nonce = EXCLUDED.nonce, wrapped_password = EXCLUDED.wrapped_password",
                    (tenant_id, _fingerprint(key), nonce, wrapped))
        return _fingerprint(key)


def rewrap_row(settings: Settings, row: WrappedKey, new_key: bytes) -> bool:
    """Re-wrap one row under `new_key` if it is still exactly `row` (compare and swap: a
    concurrent `keys rotate` that wrote a new password wins); True when it was re-wrapped."""
    password = unwrap(settings, row.tenant_id, row.nonce, row.wrapped, row.master_key_id)
    nonce, wrapped = wrap(new_key, row.tenant_id, password)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("UPDATE tenants.backup_keys SET master_key_id = %s, nonce = %s, wrapped_password = %s "
                    "WHERE cliente_id = %s AND master_key_id = %s AND nonce = %s",
                    (_fingerprint(new_key), nonce, wrapped, row.tenant_id, row.master_key_id, row.nonce))
        return cur.rowcount == 1


def _unwrap(key: bytes, tenant_id: str, nonce: bytes, wrapped: bytes, wrapped_by: str) -> str:
    if _fingerprint(key) != wrapped_by:
        raise OperationFailed(
            f"tenant {tenant_id}: its repository password is wrapped by master key {wrapped_by}, "
            f"but KRYONIX_MASTER_KEY_FILE holds {_fingerprint(key)}"
        )
    try:
        return AESGCM(key).decrypt(nonce, wrapped, tenant_id.encode()).decode()
    except InvalidTag:
        raise OperationFailed(f"tenant {tenant_id}: the wrapped repository password failed authentication") from None


def repository_password(settings: Settings, tenant_id: str, create: bool = False) -> str | None:
    """The tenant's restic password; created (and stored wrapped, under the vault's lock, with
    the key new secrets get) when `create` and absent."""
    key = master_key(settings)
    select = "SELECT nonce, wrapped_password, master_key_id FROM tenants.backup_keys WHERE cliente_id = %s"
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(select, (tenant_id,))
        row = cur.fetchone()
    if row is None and create:
        with writing(settings) as (cur, wrapping):
            nonce, wrapped = wrap(wrapping, tenant_id, secrets.token_urlsafe(32))
            cur.execute(
                "INSERT INTO tenants.backup_keys (cliente_id, master_key_id, nonce, wrapped_password) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (cliente_id) DO NOTHING",
                (tenant_id, _fingerprint(wrapping), nonce, wrapped),
            )
            cur.execute(select, (tenant_id,))
            row = cur.fetchone()
    if row is None:
        return None
    nonce, wrapped, wrapped_by = row
    if wrapped_by != _fingerprint(key):  # re-wrapped by a rotation under way (known_master_keys)
        return unwrap(settings, tenant_id, bytes(nonce), bytes(wrapped), wrapped_by)
    return _unwrap(key, tenant_id, bytes(nonce), bytes(wrapped), wrapped_by)
