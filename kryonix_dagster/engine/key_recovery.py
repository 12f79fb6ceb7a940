"""`keys recover`: rebuild the key vault (`tenants.backup_keys`) and the registry rows of an
EMPTY main database from the stash kept beside the repositories (key_stash.py).

For each tenant found in the stash, the newest record the master key unwraps AND whose
password opens the tenant's repository at that location wins (a record older than a key
rotation unwraps but no longer opens the repository). The registry row comes back with the
stashed name and plan, status ativo; the repository's restore points are counted as proof.
The tenant's erasure ledger (keyed hashes and wrapped ledger key, lgpd/ledger_stash.py) comes
back from the same place, so a restore after the recovery still re-erases erased people.
Existing rows are never overwritten.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import keys, locations, pg
from .config import Settings
from .errors import BadInput, KryonixError, one_line
from .key_stash import StashRecord, read_stash
from .lgpd.ledger_stash import read_ledgers, restore_ledger
from .manifest import restore_points
from .naming import repository_in
from .repository import Restic
from .tenant_repository import ensure_cheap_key, remembered_cheap_key

log = logging.getLogger(__name__)


@dataclass
class RecoveredTenant:
    tenant_id: str
    name: str
    plan: str
    restore_points: int
    ledger_entries: int = 0  # erasure ledger entries brought back (lgpd/ledger_stash.py)

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass
class RecoveryResult:
    source: str
    recovered: list[RecoveredTenant] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # tenant → why

    def to_json(self) -> dict:
        return {"from": self.source, "recovered": [t.to_json() for t in self.recovered], "skipped": self.skipped}


def _main_db_empty(settings: Settings) -> bool:
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM tenants.backup_keys) + (SELECT count(*) FROM tenants.clientes)")
        return cur.fetchone()[0] == 0


def recover_keys(settings: Settings, source: str = locations.PRIMARY) -> RecoveryResult:
    if not _main_db_empty(settings):
        raise BadInput("keys recover rebuilds an EMPTY main database: this one already has tenants or keys")
    where = locations.location(settings, source)
    result = RecoveryResult(source)
    try:
        stash = read_stash(settings, where)
    except OSError as exc:
        raise KryonixError(f"key vault stash beside the {source} repositories unreadable: {one_line(str(exc))}") from None
    ledgers = read_ledgers(settings, where)
    for tenant_id, records in sorted(stash.items()):
        chosen = _first_that_opens(settings, where, records)
        if chosen is None:
            result.skipped[tenant_id] = "no stashed password opens its repository with this master key"
            continue
        record, points = chosen
        keys.store_wrapped(settings, record.wrapped_key, replace_existing=False)
        with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO tenants.clientes (id, nome, plano) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
                        (tenant_id, record.name, record.plan))
        erased = restore_ledger(settings, ledgers.get(tenant_id, []))  # erased people stay erased
        result.recovered.append(RecoveredTenant(tenant_id, record.name, record.plan, points, erased))
    return result


def _first_that_opens(settings: Settings, where: locations.Location,
                      records: list[StashRecord]) -> tuple[StashRecord, int] | None:
    known = keys.known_master_keys(settings)
    for record in records:
        if record.master_key_id not in known:
            continue
        try:
            password = keys.unwrap(settings, record.tenant_id, record.nonce, record.wrapped, record.master_key_id)
        except KryonixError:
            continue
        repo = Restic(repository_in(where.root, record.tenant_id), password, label=f"tenant {record.tenant_id}",
                      cache_dir=settings.state_dir / "restic-cache", access_key=where.access_key,
                      secret_key=where.secret_key)
        repo.is_copy = where.is_copy
        repo.key_hint = remembered_cheap_key(settings, repo.location) or ensure_cheap_key(settings, repo, password)
        try:
            return record, len(restore_points(repo))
        except KryonixError as exc:
            log.info("tenant %s: stashed record %s does not open the repository (%s)", record.tenant_id,
                     record.file_name, one_line(str(exc), 120))
    return None
