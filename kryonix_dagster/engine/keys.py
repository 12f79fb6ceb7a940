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
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import pg
from .config import Settings
from .errors import OperationFailed
from .fsutil import fsync_dir

log = logging.getLogger(__name__)


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
    """The tenant's restic password; created (and stored wrapped) when `create` and absent."""
    key = master_key(settings)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT nonce, wrapped_password, master_key_id FROM tenants.backup_keys WHERE cliente_id = %s",
            (tenant_id,),
        )
        row = cur.fetchone()
        if row is None and create:
            password = secrets.token_urlsafe(32)
            nonce = secrets.token_bytes(12)
            wrapped = AESGCM(key).encrypt(nonce, password.encode(), tenant_id.encode())
            cur.execute(
                "INSERT INTO tenants.backup_keys (cliente_id, master_key_id, nonce, wrapped_password) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (cliente_id) DO NOTHING",
                (tenant_id, _fingerprint(key), nonce, wrapped),
            )
            cur.execute(
                "SELECT nonce, wrapped_password, master_key_id FROM tenants.backup_keys WHERE cliente_id = %s",
                (tenant_id,),
            )
            row = cur.fetchone()
    if row is None:
        return None
    nonce, wrapped, wrapped_by = row
    return _unwrap(key, tenant_id, bytes(nonce), bytes(wrapped), wrapped_by)
