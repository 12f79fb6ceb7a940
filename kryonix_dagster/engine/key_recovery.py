"""`keys recover`: fill what is missing in the main database — registry rows, key rows
(`tenants.backup_keys`), erasure ledgers, the PITR repository's passphrase — from the sealed
stashes kept beside the repositories (key_stash.py, lgpd/ledger_stash.py,
pitr/passphrase_stash.py). The main database may be empty (it was lost) or not (one row was
deleted); a row that exists is never overwritten.

A stash record counts only when its seal verifies under the master key (forged or altered ones
are ignored with a warning). For a missing key row, the newest record the master key unwraps AND
whose password opens the tenant's repository at that location wins (a record older than a key
rotation unwraps but no longer opens the repository); its restore points are counted as proof.
A missing registry row comes back with the stashed name and plan, status ativo. Every authentic
version of a tenant's erasure ledger is merged (a union of entries), so a restore after the
recovery still re-erases every erased person.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import keys, locations, pg
from .config import Settings
from .errors import KryonixError, one_line
from .key_stash import StashRecord, read_stash
from .lgpd import ledger
from .lgpd.ledger_stash import read_ledgers, restore_ledger
from .manifest import restore_points
from .naming import repository_in
from .pitr import passphrase_stash
from .repository import Restic
from .tenant_repository import ensure_cheap_key, remembered_cheap_key

log = logging.getLogger(__name__)


@dataclass
class RecoveredTenant:
    tenant_id: str
    name: str
    plan: str
    restore_points: int  # counted when the key row was filled (proof that it opens), else 0
    ledger_entries: int = 0  # erasure ledger entries brought back (lgpd/ledger_stash.py)
    filled: list[str] = field(default_factory=list)  # key, registry, ledger

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass
class RecoveryResult:
    source: str
    recovered: list[RecoveredTenant] = field(default_factory=list)  # tenants with something filled
    skipped: dict[str, str] = field(default_factory=dict)  # tenant → why
    pitr_passphrases: list[str] = field(default_factory=list)  # stanzas whose passphrase was filled

    def to_json(self) -> dict:
        return {"from": self.source, "recovered": [t.to_json() for t in self.recovered], "skipped": self.skipped,
                "pitr_passphrases": self.pitr_passphrases}


def _present(settings: Settings, table: str, column: str) -> set[str]:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {column} FROM {table}")
        return {row[0] for row in cur.fetchall()}


def recover_keys(settings: Settings, source: str = locations.PRIMARY) -> RecoveryResult:
    where = locations.location(settings, source)
    result = RecoveryResult(source)
    try:
        stash = read_stash(settings, where)
        ledgers = read_ledgers(settings, where)
        passphrases = passphrase_stash.read_passphrases(settings, where)
    except OSError as exc:
        raise KryonixError(f"key vault stash beside the {source} repositories unreadable: {one_line(str(exc))}") from None
    with_key = _present(settings, "tenants.backup_keys", "cliente_id")
    registered = _present(settings, "tenants.clientes", "id")
    for tenant_id in sorted(set(stash) | set(ledgers)):
        records = stash.get(tenant_id, [])
        recovered = RecoveredTenant(tenant_id, records[0].name if records else tenant_id,
                                    records[0].plan if records else "basic", 0)
        if records and tenant_id not in with_key:
            chosen = first_that_opens(settings, where, records)
            if chosen is None:
                result.skipped[tenant_id] = "no stashed password opens its repository with this master key"
                continue
            record, recovered.restore_points = chosen
            recovered.name, recovered.plan = record.name, record.plan
            keys.store_wrapped(settings, record.wrapped_key, replace_existing=False)
            recovered.filled.append("key")
        if records and tenant_id not in registered:
            with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
                cur.execute("INSERT INTO tenants.clientes (id, nome, plano) VALUES (%s, %s, %s) "
                            "ON CONFLICT (id) DO NOTHING", (tenant_id, recovered.name, recovered.plan))
                if cur.rowcount:
                    recovered.filled.append("registry")
        had_ledger_key = ledger.wrapped_ledger_key(settings, tenant_id) is not None
        recovered.ledger_entries = restore_ledger(settings, ledgers.get(tenant_id, []))  # erased people stay erased
        if recovered.ledger_entries or (not had_ledger_key and ledger.wrapped_ledger_key(settings, tenant_id)):
            recovered.filled.append("ledger")
        if recovered.filled:
            result.recovered.append(recovered)
    for stanza, records in sorted(passphrases.items()):
        if passphrase_stash.recover(settings, records):
            result.pitr_passphrases.append(stanza)
    return result


def restore_points_with(settings: Settings, where: locations.Location, tenant_id: str, password: str) -> int:
    """How many restore points the tenant's repository at `where` shows when opened with
    `password` (KryonixError: it does not open)."""
    repo = Restic(repository_in(where.root, tenant_id), password, label=f"tenant {tenant_id}",
                  cache_dir=settings.state_dir / "restic-cache", access_key=where.access_key,
                  secret_key=where.secret_key)
    repo.is_copy = where.is_copy
    repo.key_hint = remembered_cheap_key(settings, repo.location) or ensure_cheap_key(settings, repo, password)
    return len(restore_points(repo))


def first_that_opens(settings: Settings, where: locations.Location,
                      records: list[StashRecord]) -> tuple[StashRecord, int] | None:
    known = keys.known_master_keys(settings)
    for record in records:
        if record.master_key_id not in known:
            continue
        try:
            password = keys.unwrap(settings, record.tenant_id, record.nonce, record.wrapped, record.master_key_id)
        except KryonixError:
            continue
        try:
            return record, restore_points_with(settings, where, record.tenant_id, password)
        except KryonixError as exc:
            log.info("tenant %s: stashed record %s does not open the repository (%s)", record.tenant_id,
                     record.file_name, one_line(str(exc), 120))
    return None
