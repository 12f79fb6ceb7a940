"""The pgBackRest repository's passphrase, also kept beside the tenants' repositories (primary
and off-site copy), so the PITR archive survives the loss of the main database.

Like the key vault's stash (key_stash.py), a record holds what the main database holds
(`tenants.pitr_keys`: the passphrase WRAPPED under the master key, the stanza as associated
data), is sealed with an HMAC under the master key, and is only ever added, as
`pitr-<stanza>-<hash of the content>.json` in the vault folder; `keys recover` brings it back
when the main database has none for that stanza.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import keys, locations, pg
from ..config import Settings
from ..errors import OperationFailed, one_line
from ..key_stash import add_to_vault, read_vault_files, vault_folder
from ..locations import Location
from . import config as pitr_config

log = logging.getLogger(__name__)
FORMAT = 2  # sealed, like every stash record (key_stash.seal)
_NAME = re.compile(r"pitr-([A-Za-z0-9_-]{1,64})-[0-9a-f]{16}\.json")


def file_stanza(name: str) -> str | None:
    match = _NAME.fullmatch(name)
    return match.group(1) if match else None


@dataclass(frozen=True)
class PassphraseRecord:
    key: keys.WrappedKey  # its tenant_id is the stanza (what read_vault_files matches to the file name)
    created: str = ""

    @property
    def stanza(self) -> str:
        return self.key.tenant_id

    tenant_id = stanza

    @property
    def digest(self) -> str:
        body = json.dumps([FORMAT, self.stanza, self.key.master_key_id, self.key.nonce.hex(),
                           self.key.wrapped.hex()]).encode()
        return hashlib.sha256(body).hexdigest()[:16]

    @property
    def file_name(self) -> str:
        return f"pitr-{self.stanza}-{self.digest}.json"

    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, "stanza": self.stanza, "master_key_id": self.key.master_key_id,
                           "nonce": base64.b64encode(self.key.nonce).decode(),
                           "wrapped_passphrase": base64.b64encode(self.key.wrapped).decode(),
                           "created": self.created}, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "PassphraseRecord":
        doc = json.loads(raw)
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown PITR passphrase stash format {doc.get('format')!r}")
        return cls(keys.WrappedKey(doc["stanza"], doc["master_key_id"], base64.b64decode(doc["nonce"]),
                                   base64.b64decode(doc["wrapped_passphrase"])), doc.get("created", ""))


def _rows(settings: Settings, stanza: str | None = None) -> list[PassphraseRecord]:
    now = datetime.now(timezone.utc).isoformat()
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT stanza, master_key_id, nonce, wrapped_password FROM tenants.pitr_keys "
                    "WHERE %(s)s::text IS NULL OR stanza = %(s)s ORDER BY stanza", {"s": stanza})
        return [PassphraseRecord(keys.WrappedKey(r[0], r[1], bytes(r[2]), bytes(r[3])), now) for r in cur.fetchall()]


def stash_all(settings: Settings, stanza: str | None = None) -> list[str]:
    """Every stanza's wrapped passphrase (or `stanza`'s) beside every repository location,
    superseded versions removed where deletion is allowed. A location that cannot take it is
    an error: without it, the archive dies with the main database."""
    done = []
    for record in _rows(settings, stanza):
        for where in locations.stash_places(settings):
            try:
                add_to_vault(settings, where, record)
                if where.kind != locations.SECONDARY:
                    folder = vault_folder(settings, where)
                    for name in folder.names():
                        if file_stanza(name) == record.stanza and name != record.file_name:
                            folder.remove(name)
            except OSError as exc:
                raise OperationFailed(f"PITR stanza {record.stanza}: its wrapped passphrase could not be stashed "
                                      f"beside the {where.kind} repositories ({one_line(str(exc), 200)}); fix that "
                                      f"location and run the command again") from None
        done.append(record.stanza)
    return done


def read_passphrases(settings: Settings, where: Location) -> dict[str, list[PassphraseRecord]]:
    """Every stanza's authentic stashed passphrases at `where`, newest first."""
    return read_vault_files(settings, where, file_stanza, PassphraseRecord.from_bytes, "PITR passphrase stash",
                            newest_first=True)


def recover(settings: Settings, records: list[PassphraseRecord]) -> bool:
    """The newest record the master key opens, into `tenants.pitr_keys` unless the stanza has a
    row already (never overwritten); True when it was filled."""
    for record in records:
        try:
            pitr_config._unwrap(settings, record.stanza, record.key.nonce, record.key.wrapped, record.key.master_key_id)
        except OperationFailed:
            continue
        with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO tenants.pitr_keys (stanza, master_key_id, nonce, wrapped_password) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT (stanza) DO NOTHING",
                        (record.stanza, record.key.master_key_id, record.key.nonce, record.key.wrapped))
            return cur.rowcount == 1
    return False


def stanza_in_repository(settings: Settings, cfg: pitr_config.PitrConfig) -> bool:
    """Whether pgBackRest's repository already holds the stanza (its archive.info, or the copy
    pgBackRest keeps beside it): then only the stashed passphrase can open that archive."""
    names = (f"archive/{cfg.stanza}/archive.info", f"archive/{cfg.stanza}/archive.info.copy")
    if cfg.repo.kind == "posix":
        return any((Path(cfg.repo.path) / name).exists() for name in names)
    import boto3
    client = boto3.client("s3", endpoint_url=cfg.repo.endpoint_url, aws_access_key_id=cfg.access_key,
                          aws_secret_access_key=cfg.secret_key, region_name="us-east-1",
                          verify=cfg.repo.ca_file or True)
    prefix = cfg.repo.path.strip("/")
    for name in names:
        found = client.list_objects_v2(Bucket=cfg.repo.bucket, Prefix=f"{prefix}/{name}".lstrip("/"), MaxKeys=1)
        if found.get("KeyCount"):
            return True
    return False
