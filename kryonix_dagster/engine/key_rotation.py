"""Key rotation: a new master key for the vault, and new repository passwords per tenant.

`rotate_master` re-wraps every tenant's password (and the PITR repository's passphrase, and the
LGPD erasure ledgers' keys) under a new master key. The new key is first
put beside the old one (`<master key file>.next`); each row is re-wrapped in its own
transaction and records which key wrapped it, and both keys are known to the vault until the
last row is done, so a rotation killed mid-way leaves every tenant readable, and running it
again with the same key file finishes it. Writers (first backups, `keys rotate`, `lgpd erase`,
`pitr setup`) may run meanwhile: the pending key is published under the vault's lock held
exclusive, writers hold it shared and wrap with the pending key while it exists (keys.writing),
and a final pass under the exclusive lock re-wraps whatever is still under another key and
retires the old key in the database (whose trigger then refuses it). Every stash is updated
before that; a stash that cannot be written stops the rotation. Only then does the new key
replace the master key file, atomically.

`rotate_tenant` gives a tenant's repositories (primary, and the off-site copy through its
admin path) a new random password, in this order: a new key file (cheap scrypt, restic's
format, restic_key.py) is added to every repository and restic is shown to open each with
it; the vault's row is updated; only then are the old key files removed. A kill at any point
leaves the vault's password able to open every repository; running it again finishes it.
"""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import key_stash, keys, locations, restic_key
from .config import Settings
from .errors import BadInput, OperationFailed, one_line
from .fsutil import fsync_dir
from .naming import repository_in, validate_tenant_id
from .operation import tenant_operation
from .lgpd import ledger, ledger_stash
from .pitr import config as pitr_config, passphrase_stash
from .repository import Restic, restic_location
from .tenant_repository import KeyFolder, _read_key_files, _remember, key_folder

log = logging.getLogger(__name__)


@dataclass
class MasterRotation:
    old_key_id: str
    new_key_id: str
    rewrapped: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    pitr_stanzas: list[str] = field(default_factory=list)  # pgBackRest repository passphrases re-wrapped
    ledger_keys: list[str] = field(default_factory=list)  # tenants whose LGPD ledger key was re-wrapped

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _write_private(path: Path, key: bytes) -> None:
    import base64
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(key).decode() + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _restash(settings: Settings, tenant_id: str) -> None:
    """The tenant's new records (wrapped password, erasure ledger) beside every repository;
    superseded ones removed where allowed. A location that cannot take them stops the caller
    (OperationFailed) before it retires anything the stash still needs: the old keys of a
    repository, or the old master key file."""
    for where in locations.stash_places(settings):
        try:
            record = key_stash.stash(settings, tenant_id, where)
            if record is not None and where.kind != locations.SECONDARY:
                key_stash.prune(settings, tenant_id, where, record)
            kept = ledger_stash.stash(settings, tenant_id, where)
            if kept is not None and where.kind != locations.SECONDARY:
                ledger_stash.remove(settings, tenant_id, where, keep=kept)
        except OSError as exc:
            raise OperationFailed(f"tenant {tenant_id}: the key vault's stash beside the {where.kind} repository could "
                                  f"not be updated ({one_line(str(exc), 200)}); nothing old was retired: fix that "
                                  f"location and run the command again") from None


# The tables that hold secrets wrapped by the master key: (table, id column, secret column,
# associated data of a row's AES-GCM). rotate-master's final pass re-wraps whatever is left.
def _vault_tables() -> tuple:
    return (("tenants.backup_keys", "cliente_id", "wrapped_password", lambda tid: tid.encode()),
            ("tenants.lgpd_ledger_keys", "cliente_id", "wrapped_key", ledger._associated),
            ("tenants.pitr_keys", "stanza", "wrapped_password", pitr_config._aad))


def _final_pass(settings: Settings, new: bytes, old_id: str) -> list[str]:
    """Under the vault's lock held exclusive (no writer under way, none can start): re-wrap every
    row still wrapped by another key than `new`, check that none is left, and retire the old key
    in the database (its trigger then refuses a row wrapped by it). Returns the tenants re-wrapped
    here (written during the rotation by a writer that wrapped with the old key)."""
    new_id = keys.fingerprint(new)
    known = keys.known_master_keys(settings)
    late: list[str] = []
    with keys.exclusive(settings) as cur:
        for table, id_column, secret, aad in _vault_tables():
            cur.execute(f"SELECT {id_column}, master_key_id, nonce, {secret} FROM {table} "
                        f"WHERE master_key_id <> %s ORDER BY 1", (new_id,))
            for row_id, wrapped_by, nonce, wrapped in cur.fetchall():
                if wrapped_by not in known:
                    raise OperationFailed(f"{table} {row_id}: wrapped by master key {wrapped_by}, which is neither "
                                          f"the old nor the new one; the master key file was not replaced")
                try:
                    plain = AESGCM(known[wrapped_by]).decrypt(bytes(nonce), bytes(wrapped), aad(row_id))
                except InvalidTag:
                    raise OperationFailed(f"{table} {row_id}: the wrapped secret failed authentication; the master "
                                          f"key file was not replaced") from None
                fresh = secrets.token_bytes(12)
                cur.execute(f"UPDATE {table} SET master_key_id = %s, nonce = %s, {secret} = %s "
                            f"WHERE {id_column} = %s", (new_id, fresh, AESGCM(new).encrypt(fresh, plain, aad(row_id)),
                                                        row_id))
                if table != "tenants.pitr_keys":
                    late.append(row_id)
        for table, _id_column, _secret, _aad in _vault_tables():
            cur.execute(f"SELECT count(*) FROM {table} WHERE master_key_id <> %s", (new_id,))
            left = cur.fetchone()[0]
            if left:  # cannot happen under the lock; never replace the key file if it did
                raise OperationFailed(f"{left} row(s) of {table} are wrapped by another key than {new_id}: "
                                      f"the master key file was not replaced")
        if old_id != new_id:
            cur.execute("INSERT INTO tenants.retired_master_keys (master_key_id) VALUES (%s) ON CONFLICT DO NOTHING",
                        (old_id,))
        cur.execute("DELETE FROM tenants.retired_master_keys WHERE master_key_id = %s", (new_id,))
    return list(dict.fromkeys(late))


def rotate_master(settings: Settings, new_key_file: Path,
                  after_each: Callable[[str], None] = lambda step: None) -> MasterRotation:
    """Rotate the master key to the one in `new_key_file` (resumable: run it again with the same file).

    Steps, each reported to `after_each` (tests kill the process there): `pending` once the new
    key sits beside the old one (published under the vault's lock held exclusive: from then on
    every writer wraps with it); each tenant's id after its password was re-wrapped, and
    `ledger:<id>` after its ledger key; `stashed` once every tenant's stash holds its new
    records; `final` once the final pass (under the exclusive lock) left no row wrapped by
    another key. Only then is the key file replaced."""
    try:
        new = keys.read_key_file(Path(new_key_file))
    except OperationFailed as exc:
        raise BadInput(str(exc)) from None
    old = keys.master_key(settings)
    new_id, old_id = keys.fingerprint(new), keys.fingerprint(old)
    result = MasterRotation(old_id, new_id)
    pending = keys.pending_key_file(settings)
    if new_id == old_id and not pending.exists():
        result.already = [w.tenant_id for w in keys.wrapped_keys(settings)]
        return result
    if pending.exists() and keys.fingerprint(keys.read_key_file(pending)) != new_id:
        raise BadInput(f"a rotation to another master key ({keys.fingerprint(keys.read_key_file(pending))}) is under "
                       f"way: finish it with that key file first")
    if not pending.exists():
        with keys.exclusive(settings):  # writers that wrapped with the old key have committed
            _write_private(pending, new)
    after_each("pending")
    for row in keys.wrapped_keys(settings):
        if row.master_key_id == new_id:
            result.already.append(row.tenant_id)
            continue
        if keys.rewrap_row(settings, row, new):
            result.rewrapped.append(row.tenant_id)
        else:  # a writer replaced it meanwhile (with the pending key): nothing to do
            result.already.append(row.tenant_id)
        after_each(row.tenant_id)
    result.ledger_keys = ledger.rewrap_keys(settings, new, lambda tid: after_each(f"ledger:{tid}"))  # LGPD ledger keys
    result.pitr_stanzas = pitr_config.rewrap_passphrases(settings, new)  # pgBackRest's passphrase too
    # every tenant: one re-wrapped by a run killed before this point is `already` now, and its
    # stash must not keep only the old key's version
    stashed = list(dict.fromkeys(result.rewrapped + result.already + result.ledger_keys))
    for tenant_id in stashed:
        _restash(settings, tenant_id)
    passphrase_stash.stash_all(settings)
    after_each("stashed")
    late = _final_pass(settings, new, old_id)
    for tenant_id in late:
        if tenant_id not in result.rewrapped:
            result.rewrapped.append(tenant_id)
        _restash(settings, tenant_id)
    passphrase_stash.stash_all(settings)
    after_each("final")
    os.replace(pending, settings.master_key_file)  # the new key is the master key, atomically
    fsync_dir(Path(settings.master_key_file).parent)
    return result


# -- repository passwords ------------------------------------------------------------------------

@dataclass
class TenantRotation:
    tenant_id: str
    repositories: list[str] = field(default_factory=list)  # primary, secondary-admin
    removed_keys: int = 0

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class _Place:
    kind: str
    location: str  # as restic sees it
    access_key: str | None
    secret_key: str | None
    folder: KeyFolder


def _places(settings: Settings, tenant_id: str) -> list[_Place]:
    if settings.repo_secondary and not settings.repo_secondary_admin:
        raise BadInput("rotating a repository password needs the off-site copy's admin path too "
                       "(KRYONIX_REPO_SECONDARY_ADMIN): its old key must be removed there")
    kinds = [locations.PRIMARY] + ([locations.SECONDARY_ADMIN] if settings.repo_secondary_admin else [])
    places = []
    for kind in kinds:
        where = locations.location(settings, kind)
        location = restic_location(repository_in(where.root, tenant_id))
        folder = key_folder(settings, location, where.access_key, where.secret_key)
        if folder is None:
            raise BadInput(f"the {kind} repository location cannot have its keys rotated here")
        if folder.names():  # a copy never made yet has no keys: nothing to rotate there
            places.append(_Place(kind, location, where.access_key, where.secret_key, folder))
    return places


def _master_of(place: _Place, password: str, tenant_id: str) -> bytes:
    for key_file in _read_key_files(place.folder):
        try:
            return restic_key.open_master_key(key_file, password)
        except (restic_key.WrongPassword, restic_key.KeyFileError):
            continue
    raise OperationFailed(f"tenant {tenant_id}: no key of the {place.kind} repository opens with the vault's password")


def rotate_tenant(settings: Settings, tenant_id: str, wait_seconds: float = 0) -> TenantRotation:
    validate_tenant_id(tenant_id)
    old_password = keys.repository_password(settings, tenant_id)
    if old_password is None:
        raise BadInput(f"tenant {tenant_id} has never been backed up")
    result = TenantRotation(tenant_id)
    with tenant_operation(settings, tenant_id, "rotate-key", wait_seconds=wait_seconds) as op:
        places = _places(settings, tenant_id)
        new_password = secrets.token_urlsafe(32)
        added = {}
        for place in places:  # 1. a new key everywhere, proven by restic itself
            key_file = restic_key.new_key_file(_master_of(place, old_password, tenant_id), new_password)
            place.folder.write(key_file.name, key_file.raw)
            probe = Restic(place.location, new_password, label=f"tenant {tenant_id} ({place.kind})",
                           cache_dir=settings.state_dir / "restic-cache", access_key=place.access_key,
                           secret_key=place.secret_key, key_hint=key_file.name)
            if not key_file.name.startswith(probe.current_key_id() or "-"):
                raise OperationFailed(f"tenant {tenant_id}: restic did not open the {place.kind} repository with the "
                                      f"new key; the old password stays in use")
            added[place.kind] = key_file.name
        op.ensure_lease()
        keys.store_new_password(settings, tenant_id, new_password)  # 2. the vault, under its lock
        _restash(settings, tenant_id)  # a stash that cannot be updated stops here: old keys stay
        for place in places:  # 3. only now the old keys go
            for key_file in _read_key_files(place.folder):
                if key_file.name != added[place.kind]:
                    place.folder.remove(key_file.name)
                    result.removed_keys += 1
            _remember(settings, place.location, added[place.kind])
            result.repositories.append(place.kind)
        if settings.repo_secondary:  # the workers' path to the copy opens with the new key first
            secondary = restic_location(repository_in(settings.repo_secondary, tenant_id))
            if locations.SECONDARY_ADMIN in added:
                _remember(settings, secondary, added[locations.SECONDARY_ADMIN])
        op.audit = {"details": {"repositories": result.repositories, "removed_keys": result.removed_keys}}
    return result
