"""Key rotation: a new master key for the vault, and new repository passwords per tenant.

`rotate_master` re-wraps every tenant's password (and the PITR repository's passphrase, and the
LGPD erasure ledgers' keys) under a new master key. The new key is first
put beside the old one (`<master key file>.next`); each row is re-wrapped in its own
transaction and records which key wrapped it, and both keys are known to the vault until the
last row is done, so a rotation killed mid-way leaves every tenant readable, and running it
again with the same key file finishes it. Then the new key replaces the master key file
atomically.

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

from . import key_stash, keys, locations, restic_key
from .config import Settings
from .errors import BadInput, OperationFailed
from .fsutil import fsync_dir
from .naming import repository_in, validate_tenant_id
from .operation import tenant_operation
from .lgpd import ledger, ledger_stash
from .pitr import config as pitr_config
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
    superseded ones removed where allowed."""
    for where in locations.stash_places(settings):
        try:
            record = key_stash.stash(settings, tenant_id, where)
            if record is not None and where.kind != locations.SECONDARY:
                key_stash.prune(settings, tenant_id, where, record)
            kept = ledger_stash.stash(settings, tenant_id, where)
            if kept is not None and where.kind != locations.SECONDARY:
                ledger_stash.remove(settings, tenant_id, where, keep=kept)
        except OSError as exc:
            log.warning("tenant %s: key vault stash at the %s location not updated: %s", tenant_id, where.kind, exc)


def rotate_master(settings: Settings, new_key_file: Path,
                  after_each: Callable[[str], None] = lambda tenant_id: None) -> MasterRotation:
    """`after_each` (tests) is called after each tenant's password with its id, and after each
    ledger key with `ledger:<id>`."""
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
        _write_private(pending, new)
    for row in keys.wrapped_keys(settings):
        if row.master_key_id == new_id:
            result.already.append(row.tenant_id)
            continue
        password = keys.unwrap(settings, row.tenant_id, row.nonce, row.wrapped, row.master_key_id)
        nonce, wrapped = keys.wrap(new, row.tenant_id, password)
        keys.store_wrapped(settings, keys.WrappedKey(row.tenant_id, new_id, nonce, wrapped))
        result.rewrapped.append(row.tenant_id)
        after_each(row.tenant_id)
    result.ledger_keys = ledger.rewrap_keys(settings, new, lambda tid: after_each(f"ledger:{tid}"))  # LGPD ledger keys
    result.pitr_stanzas = pitr_config.rewrap_passphrases(settings, new)  # pgBackRest's passphrase too
    # every tenant: one re-wrapped by a run killed before this point is `already` now, and its
    # stash must not keep only the old key's version
    for tenant_id in dict.fromkeys(result.rewrapped + result.already + result.ledger_keys):
        _restash(settings, tenant_id)
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
        nonce, wrapped = keys.wrap(keys.master_key(settings), tenant_id, new_password)  # 2. the vault
        keys.store_wrapped(settings, keys.WrappedKey(tenant_id, keys.fingerprint(keys.master_key(settings)),
                                                     nonce, wrapped))
        _restash(settings, tenant_id)
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
