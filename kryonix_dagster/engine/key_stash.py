"""The key vault's stash: each tenant's WRAPPED repository password, also kept beside its
repositories (primary and off-site copy), outside restic's own layout, so `keys recover` can
rebuild `tenants.backup_keys` after the main database is lost.

A stash file is useless without the master key: it holds what `tenants.backup_keys` holds
(AES-GCM under the master key, bound to the tenant id), plus the registry's name and plan.
Every stash record (this one, the erasure ledger's, the PITR passphrase's) is sealed: an
HMAC-SHA256 over the whole record under a key derived from the master key (`seal`), checked
when the stash is read; a record that fails (forged, altered, or written before records were
sealed) is ignored with a warning.
Files are only ever added, named `<id>-<hash of the content>.json` under
`<repository root>/kryonix-vault/keys/`, so they also go through an append-only endpoint;
where deletion is allowed (the primary, the copy's admin path) a key rotation removes the
versions it superseded.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from . import keys, registry
from .config import Settings
from .locations import Location
from .naming import VAULT_FOLDER, vault_file_name, vault_file_tenant
from .tenant_repository import KeyFolder, LocalKeyFolder, key_folder

log = logging.getLogger(__name__)
FORMAT = 2  # 2: sealed (mac, mac_key_id); 1 was unauthenticated and is no longer read


class Unauthentic(ValueError):
    """A stash record whose seal does not verify under a master key known here."""


def _mac_key(master: bytes) -> bytes:
    return hmac.new(master, b"kryonix-stash-seal-v1", hashlib.sha256).digest()


def _canonical(doc: dict) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "mac"}, sort_keys=True, separators=(",", ":")).encode()


def seal(settings: Settings, body: bytes) -> bytes:
    """`body` (a JSON object) with its seal: the id of the master key it is sealed under (the
    pending one while a rotation is under way) and an HMAC over every other field."""
    key = keys.wrapping_key(settings)
    doc = json.loads(body)
    doc.pop("mac", None)
    doc["mac_key_id"] = keys.fingerprint(key)
    doc["mac"] = hmac.new(_mac_key(key), _canonical(doc), hashlib.sha256).hexdigest()
    return json.dumps(doc, indent=1).encode()


def verify(known: dict[str, bytes], raw: bytes) -> None:
    """Raise Unauthentic unless `raw` carries a valid seal under one of the `known` master keys."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise Unauthentic("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("mac"), str):
        raise Unauthentic("not sealed (forged, or written before stash records were sealed)")
    key = known.get(doc.get("mac_key_id"))
    if key is None:
        raise Unauthentic(f"sealed by master key {doc.get('mac_key_id')!r}, not one known here")
    expected = hmac.new(_mac_key(key), _canonical(doc), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, doc["mac"]):
        raise Unauthentic("its seal does not verify: forged or altered")


@dataclass(frozen=True)
class StashRecord:
    tenant_id: str
    name: str
    plan: str
    master_key_id: str
    nonce: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)
    created: str = ""

    @property
    def digest(self) -> str:
        body = json.dumps([FORMAT, self.tenant_id, self.name, self.plan, self.master_key_id,
                           self.nonce.hex(), self.wrapped.hex()]).encode()
        return hashlib.sha256(body).hexdigest()[:16]

    @property
    def file_name(self) -> str:
        return vault_file_name(self.tenant_id, self.digest)

    @property
    def wrapped_key(self) -> keys.WrappedKey:
        return keys.WrappedKey(self.tenant_id, self.master_key_id, self.nonce, self.wrapped)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "tenant": self.tenant_id, "name": self.name, "plan": self.plan,
            "master_key_id": self.master_key_id, "nonce": base64.b64encode(self.nonce).decode(),
            "wrapped_password": base64.b64encode(self.wrapped).decode(), "created": self.created,
        }, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "StashRecord":
        doc = json.loads(raw)
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown stash format {doc.get('format')!r}")
        return cls(doc["tenant"], doc["name"], doc["plan"], doc["master_key_id"],
                   base64.b64decode(doc["nonce"]), base64.b64decode(doc["wrapped_password"]), doc.get("created", ""))


def vault_folder(settings: Settings, where: Location) -> KeyFolder:
    folder = key_folder(settings, f"{where.root}/{VAULT_FOLDER}", where.access_key, where.secret_key)
    if folder is None:
        raise OSError(f"the {where.kind} repository location cannot hold the key vault's stash")
    if isinstance(folder, LocalKeyFolder):
        folder.make_folder()
    return folder


def current_record(settings: Settings, tenant_id: str) -> StashRecord | None:
    """What the main database says now, as a stash record."""
    wrapped = keys.wrapped_key(settings, tenant_id)
    if wrapped is None:
        return None
    tenant = registry.get_tenant(settings, tenant_id)
    return StashRecord(tenant_id, tenant.nome if tenant else tenant_id, tenant.plano if tenant else "basic",
                       wrapped.master_key_id, wrapped.nonce, wrapped.wrapped,
                       datetime.now(timezone.utc).isoformat())



def add_to_vault(settings: Settings, where: Location, record):
    """Write a record (anything with file_name and to_bytes) into the vault folder at `where`
    unless that very version is there: files are only ever added (the append-only endpoint)."""
    folder = vault_folder(settings, where)
    if not _has(folder, record.file_name):
        folder.write(record.file_name, seal(settings, record.to_bytes()))
    return record

def stash(settings: Settings, tenant_id: str, where: Location) -> StashRecord | None:
    """Add the tenant's current record at `where` unless that very version is there."""
    record = current_record(settings, tenant_id)
    if record is None:
        return None
    return add_to_vault(settings, where, record)


def _has(folder: KeyFolder, name: str) -> bool:
    """One request for one file (a listing would grow with the fleet); a backend that does not
    say "not found" precisely falls back to the listing."""
    try:
        folder.read(name)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return name in folder.names()


def ensure_stashed(settings: Settings, tenant_id: str, where: Location) -> None:
    """`stash`, never failing the caller (a session, a copy): a missing stash is a warning.
    The tenant's erasure ledger goes with it (lgpd/ledger_stash.py)."""
    from .lgpd import ledger_stash
    try:
        stash(settings, tenant_id, where)
    except OSError as exc:
        log.warning("tenant %s: wrapped password not stashed beside the %s repository: %s",
                    tenant_id, where.kind, exc)
    ledger_stash.ensure_stashed(settings, tenant_id, where)


def read_vault_files(settings: Settings, where: Location, tenant_of: Callable[[str], str | None],
                     parse: Callable[[bytes], Any], what: str, newest_first: bool = False) -> dict[str, list]:
    """Every tenant's records of one kind in the vault folder at `where` (a record counts only
    when its seal verifies and it names the tenant and the file it is in); unreadable, forged
    or altered files are skipped with a warning."""
    folder = vault_folder(settings, where)
    known = keys.known_master_keys(settings)
    found: dict[str, list] = {}
    for name in folder.names():
        tenant_id = tenant_of(name)
        if tenant_id is None:
            continue
        try:
            raw = folder.read(name)
            verify(known, raw)
            record = parse(raw)
        except Unauthentic as exc:
            log.warning("%s %s at the %s location ignored: %s", what, name, where.kind, exc)
            continue
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s %s unreadable: %s", what, name, type(exc).__name__)
            continue
        if record.tenant_id == tenant_id and record.file_name == name:
            found.setdefault(tenant_id, []).append(record)
        else:
            log.warning("%s %s at the %s location ignored: its content belongs to another file", what, name,
                        where.kind)
    if newest_first:
        for records in found.values():
            records.sort(key=lambda r: r.created, reverse=True)
    return found


def read_stash(settings: Settings, where: Location) -> dict[str, list[StashRecord]]:
    """Every tenant's stashed records at `where`, newest first; unreadable files are skipped."""
    return read_vault_files(settings, where, vault_file_tenant, StashRecord.from_bytes, "key vault stash",
                            newest_first=True)


def prune(settings: Settings, tenant_id: str, where: Location, keep: StashRecord | None) -> int:
    """Remove the tenant's superseded stash files (after a rotation; all of them when `keep` is
    None: off-boarding); returns how many."""
    folder = vault_folder(settings, where)
    removed = 0
    for name in folder.names():
        if vault_file_tenant(name) == tenant_id and (keep is None or name != keep.file_name):
            folder.remove(name)
            removed += 1
    return removed
