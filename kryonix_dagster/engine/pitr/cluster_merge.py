"""After `pitr restore-cluster`: what the main database lost by going back in time, put back.

The cluster holds the main database, so a restore to T rolls back the key vault and the erasure
ledgers with the tenants' data: a person erased after T is live again, its ledger entry gone; a
tenant whose repository password was rotated after T has a key row the repository no longer
opens. The stashes beside the repositories (key_stash.py, lgpd/ledger_stash.py,
passphrase_stash.py) are not in the cluster and kept their newest versions. Once the restored
cluster is up:

1. `keys recover`'s fill-gaps merge (key_recovery.py): missing key rows, registry rows and PITR
   passphrases come back; every authentic ledger version is merged (a union of entries). Nothing
   that exists is overwritten.
2. A key row that exists but is not the tenant's newest stashed record is tried on the tenant's
   repository; only when it no longer opens it (its key file was removed by a rotation after T)
   is it replaced by the newest stashed record that does open it. A row that opens the
   repository is never touched.
3. Every registered tenant's ledger is re-applied to its live database, each in one
   transaction (lgpd/reapply.py, as every restore does before data goes live). Redis, objects
   and application data are not in the cluster and were not rolled back.

What could not be done is listed in `problems`; the caller fails the command (exit 1) after its
audit row, naming them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import keys, locations, pg, registry
from ..config import Settings
from ..errors import KryonixError, one_line
from ..key_recovery import first_that_opens, recover_keys, restore_points_with
from ..key_stash import StashRecord, read_stash
from ..lgpd.reapply import erasure_filter, reapply_database
from ..naming import names_for
from ..reporting import Reporter


@dataclass
class ClusterMerge:
    keys_filled: list[str] = field(default_factory=list)  # tenants whose missing key row came back
    keys_replaced: list[str] = field(default_factory=list)  # rows that no longer opened the repository
    registry_filled: list[str] = field(default_factory=list)
    ledger_entries: dict[str, int] = field(default_factory=dict)  # tenant -> entries merged back
    pitr_passphrases: list[str] = field(default_factory=list)
    reerased: dict[str, dict] = field(default_factory=dict)  # tenant -> what the ledger removed from live data
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.keys_filled or self.keys_replaced or self.registry_filled or self.ledger_entries
                    or self.pitr_passphrases or self.reerased)

    def to_json(self) -> dict:
        return {"keys_filled": self.keys_filled, "keys_replaced": self.keys_replaced,
                "registry_filled": self.registry_filled, "ledger_entries": self.ledger_entries,
                "pitr_passphrases": self.pitr_passphrases, "reerased": self.reerased, "problems": self.problems}

    def describe(self) -> str:
        people = sum(r["subjects_reerased"] for r in self.reerased.values())
        return (f"{len(self.keys_filled) + len(self.keys_replaced)} key row(s) put back "
                f"({len(self.keys_replaced)} replaced: rotated after the target), "
                f"{sum(self.ledger_entries.values())} erasure ledger entr(y/ies) merged back, "
                f"{people} erased person(s) erased again from live data in {len(self.reerased)} tenant(s)"
                + (f"; {len(self.problems)} PROBLEM(S): {'; '.join(self.problems)}" if self.problems else ""))


def _stale_keys(settings: Settings, where: locations.Location, stash: dict[str, list[StashRecord]],
                result: ClusterMerge, report: Reporter) -> None:
    """Step 2 of the module docstring."""
    for tenant_id, records in sorted(stash.items()):
        row = keys.wrapped_key(settings, tenant_id)
        if row is None or not records or (records[0].nonce, records[0].wrapped) == (row.nonce, row.wrapped):
            continue  # missing (step 1 decided) or already the newest stashed version
        try:
            password = keys.unwrap(settings, tenant_id, row.nonce, row.wrapped, row.master_key_id)
            restore_points_with(settings, where, tenant_id, password)
            continue  # it opens the repository: never overwritten
        except KryonixError as exc:
            why = one_line(str(exc), 160)
        chosen = first_that_opens(settings, where, records)
        if chosen is None:
            result.problems.append(f"tenant {tenant_id}: its key row does not open its repository ({why}) and no "
                                   "stashed record does")
            continue
        keys.store_wrapped(settings, chosen[0].wrapped_key, replace_existing=True)
        result.keys_replaced.append(tenant_id)
        report.warn(f"tenant {tenant_id}: the restored key row no longer opened its repository (rotated after the "
                    "target); the newest stashed key that opens it was put back")


def _reapply_ledgers(settings: Settings, result: ClusterMerge, report: Reporter) -> None:
    """Step 3 of the module docstring."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT cliente_id FROM tenants.lgpd_ledger")  # one query for the fleet
        erased_in = {row[0] for row in cur.fetchall()}
    for tenant_id in (t for t in registry.list_tenant_ids(settings) if t in erased_in):
        names = names_for(settings, tenant_id)
        try:
            filt = erasure_filter(settings, names, names)
            if filt is None or not pg.database_exists(settings.pg_dsn, names.database):
                continue
            with pg.connection(settings.pg_dsn, names.database) as conn, conn.cursor() as cur:
                reapply_database(filt, cur)
        except KryonixError as exc:
            result.problems.append(f"tenant {tenant_id}: erasure ledger not re-applied: {one_line(str(exc), 200)}")
            continue
        if filt.erased.total:
            result.reerased[tenant_id] = filt.to_json()
            report.warn(f"tenant {tenant_id}: the erasure ledger removed {filt.erased.total} item(s) of "
                        f"{filt.subjects} erased person(s) the cluster restore had brought back")


def merge_after_cluster_restore(settings: Settings, report: Reporter) -> ClusterMerge:
    result = ClusterMerge()
    where = locations.location(settings, locations.PRIMARY)
    stash: dict[str, list[StashRecord]] = {}
    try:
        stash = read_stash(settings, where)
        recovered = recover_keys(settings)
    except (KryonixError, OSError) as exc:
        result.problems.append(f"stashes not merged: {one_line(str(exc), 200)}")
    else:
        for tenant in recovered.recovered:
            if "key" in tenant.filled:
                result.keys_filled.append(tenant.tenant_id)
            if "registry" in tenant.filled:
                result.registry_filled.append(tenant.tenant_id)
            if tenant.ledger_entries:
                result.ledger_entries[tenant.tenant_id] = tenant.ledger_entries
        result.pitr_passphrases = list(recovered.pitr_passphrases)
        result.problems += [f"tenant {tid}: key not recovered: {why}" for tid, why in sorted(recovered.skipped.items())]
    _stale_keys(settings, where, stash, result, report)
    _reapply_ledgers(settings, result, report)
    return result
