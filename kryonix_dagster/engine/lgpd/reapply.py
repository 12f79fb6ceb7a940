"""Every restore re-applies the erasure ledger before the restored data goes live.

`erasure_filter(settings, source, target)` is built ONCE per restore, in `restore.restore_tiers`
(the path every restore takes: full, `--schema`, `--into`, drills, and whatever restore path
goes through `restore_tiers`), from the SOURCE tenant's ledger (the restore point is the
source's data, its erased persons are the ones in it) plus, for `--into`, the TARGET's own
ledger (a person erased from the target must not arrive through another tenant's data either).
It travels to each tier in `RestoreContext.erasure`; each tier calls `reapply_staged(ctx, …)`
at the point where its data is staged but not yet live:

- postgresql (full): in the staging database after the manifest checksums are verified and
  before the swap; (`--schema`): inside the schema's single-transaction script, after its
  checksums, for the persons recognisable in the live database (`schema_erasure_sql`), then
  right after the commit for anyone only recognisable in the restored rows (the one window);
- redis: the verified snapshot's key list, before any RESTORE;
- object_storage: the verified staged index, before any upload (the replace semantics then
  also delete the person's live objects);
- appdata: the verified staging folder, before the swap;
- compliance (restored alone: rows merged into the live `lgpd` tables): inside the merge's
  own transaction, so nothing of an erased person is ever committed.

The person is found in staged data by the keyed hash: over each subject kind's resolve column
(`crm.contatos.email`), and over the person-key column of every table the rules name, Redis key
names, object keys and paths (`contato_id` hashed as the ledger stored it at erasure time).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Settings
from ..naming import TenantNames
from . import ledger
from .locations import (
    Erased, _inside, distinct_values, erase_database, existing_tables, key_in, pairs, remove_nofollow,
)
from .rules import LgpdRules, fill, load_rules


@dataclass
class ErasureFilter:
    rules: LgpdRules
    matchers: list[ledger.Matcher]
    found: dict[str, set[str]] = field(default_factory=dict)  # key name -> person keys recognised in staged data
    hits: set[tuple[str, str]] = field(default_factory=set)  # (key name, key) that had something erased
    erased: Erased = field(default_factory=Erased)

    def erased_key(self, key_name: str, value: str) -> bool:
        if value in self.found.get(key_name, ()):
            return True
        if any(m.key_erased(key_name, value) for m in self.matchers):
            self.found.setdefault(key_name, set()).add(value)
            return True
        return False

    def hit(self, key_name: str, value: str) -> bool:
        """`erased_key`, remembering that this person had something in the restored data."""
        if self.erased_key(key_name, value):
            self.hits.add((key_name, value))
            return True
        return False

    @property
    def subjects(self) -> int:
        """Distinct persons re-erased from the restored data (found AND something of theirs removed)."""
        return len(self.hits)

    def to_json(self) -> dict:
        return {"subjects_reerased": self.subjects, "items": self.erased.to_json()}


def erasure_filter(settings: Settings, source: TenantNames, target: TenantNames) -> ErasureFilter | None:
    """The ledgers that apply to a restore of `source`'s data into `target`; None: nobody erased."""
    tenants = [source.tenant_id]
    if target.tenant_id != source.tenant_id and not target.scratch:
        tenants.append(target.tenant_id)
    matchers = [m for t in tenants if (m := ledger.matcher(settings, t)) is not None]
    return ErasureFilter(load_rules(), matchers) if matchers else None


# --- the database -------------------------------------------------------------------------------

def find_in_database(filt: ErasureFilter, cur) -> None:
    """Person keys of erased subjects present in the database `cur` is connected to."""
    tables = existing_tables(cur)
    for kind, subject in filt.rules.subjects.items():
        resolve = subject.resolve
        if resolve.table not in tables or not any(m.value_hashes.get(kind) for m in filt.matchers):
            continue
        for key, value in pairs(cur, resolve.table, resolve.key, resolve.column):
            if any(m.value_erased(kind, value) for m in filt.matchers):
                filt.found.setdefault(resolve.as_, set()).add(key)
    for key_name, where in filt.rules.person.items():
        for loc in where.database:
            if loc.action != "keep" and loc.table in tables:
                for value in distinct_values(cur, loc.table, loc.match):
                    filt.erased_key(key_name, value)


def reapply_database(filt: ErasureFilter, cur) -> None:
    """Find and erase, inside the caller's transaction."""
    find_in_database(filt, cur)
    for key_name, where in filt.rules.person.items():
        keys = sorted(filt.found.get(key_name, ()))
        for key in keys:  # who still has something here (an anonymised row left alone is not a hit)
            probe = Erased()
            erase_database(cur, where, [key], True, probe)
            if probe.total:
                filt.hits.add((key_name, key))
        erase_database(cur, where, keys, False, filt.erased)


# --- Redis, objects, application data -------------------------------------------------------------

def erased_redis_key(filt: ErasureFilter, names: TenantNames, key: bytes) -> bool:
    """Is this restored key (in `names`' namespace) one of an erased person?"""
    text = key.decode(errors="replace")
    if not text.startswith(names.redis_prefix):
        return False
    relative = text[len(names.redis_prefix):]
    for key_name, where in filt.rules.person.items():
        for pattern in where.redis:
            value = key_in(relative, pattern, key_name, whole=True)
            if value is not None and filt.hit(key_name, value):
                return True
    return False


def erased_object(filt: ErasureFilter, names: TenantNames, bucket: str, key: str) -> bool:
    """Is this restored object (bucket of `names`) one of an erased person?"""
    if not names.owns_bucket(bucket):
        return False
    suffix = bucket[len(names.bucket_prefix):]
    for key_name, where in filt.rules.person.items():
        for rule in where.objects:
            if rule.bucket == suffix:
                value = key_in(key, rule.prefix, key_name, whole=False)
                if value is not None and filt.hit(key_name, value):
                    return True
    return False


def reapply_folder(filt: ErasureFilter, root: Path, dry_run: bool = False) -> None:
    """Remove the erased persons' paths from a staged application-data folder (no link followed);
    `dry_run` only counts (the live check)."""
    for key_name, where in filt.rules.person.items():
        placeholder = "{" + key_name + "}"
        for pattern in where.appdata:
            head, _, tail = pattern.partition(placeholder)
            folder, _, prefix = head.rpartition("/")
            component = prefix + placeholder + tail.split("/", 1)[0]
            listed = _inside(root, f"{folder}/x") if folder else root / "x"
            if listed is None or listed.parent.is_symlink() or not listed.parent.is_dir():
                continue
            for entry in sorted(listed.parent.iterdir()):
                value = key_in(entry.name, component, key_name, whole=True)
                if value is None or not filt.erased_key(key_name, value):
                    continue
                target = _inside(root, fill(pattern, key_name, value))
                if target is not None and (removed := remove_nofollow(target, dry_run=dry_run)):
                    filt.erased.appdata += removed
                    filt.hits.add((key_name, value))


# --- `restore --schema`: the erasure inside the schema's own transaction ----------------------------

def _location_sql(cur, loc, keys: list[str]) -> str:
    """One person location erased for `keys`, as a guarded statement for the restore's script
    that reports `table rows persons-json` on a `kryonix-lgpd:` WARNING line (parsed, never shown)."""
    from psycopg2 import sql

    schema, table = loc.table.split(".", 1)
    target, match = sql.Identifier(schema, table), sql.Identifier(loc.match)
    if loc.action == "delete":
        change = sql.SQL("DELETE FROM {} WHERE {}::text = ANY(%s) RETURNING {}::text AS k").format(target, match, match)
        params: list = [keys]
    else:
        columns = list(loc.set.items())
        change = sql.SQL("UPDATE {} SET {} WHERE {}::text = ANY(%s) AND ({}) RETURNING {}::text AS k").format(
            target, sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c, _ in columns), match,
            sql.SQL(" OR ").join(sql.SQL("{} IS DISTINCT FROM %s").format(sql.Identifier(c)) for c, _ in columns),
            match)
        params = [*[v for _, v in columns], keys, *[v for _, v in columns]]
    statement = cur.mogrify(sql.SQL("WITH d AS ({}) SELECT count(*), coalesce(json_agg(DISTINCT d.k), '[]')::text "
                                    "FROM d").format(change), params).decode()
    return cur.mogrify(
        "DO $kryonix_lgpd$ DECLARE n bigint; k text; BEGIN IF to_regclass(%s) IS NOT NULL THEN "
        "EXECUTE %s INTO n, k; IF n > 0 THEN RAISE WARNING 'kryonix-lgpd: %% %% %%', %s, n, k; END IF; END IF; "
        "END $kryonix_lgpd$;\n", (loc.table, statement, loc.table)).decode()


def schema_erasure_sql(filt: ErasureFilter, settings, database: str, schema: str) -> str:
    """SQL for the end of a `--schema` restore's single transaction: the persons recognisable in
    the live database (an anonymised row keeps its key) erased from the restored schema before it
    is committed. Whoever is only recognisable in the restored rows is erased right after the
    commit by the ordinary re-application (the one remaining window)."""
    from .. import pg

    if not pg.database_exists(settings.pg_dsn, database):
        return ""
    parts = []
    with pg.connection(settings.pg_dsn, database) as conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        find_in_database(filt, cur)
        for key_name, where in filt.rules.person.items():
            keys = sorted(k for k in filt.found.get(key_name, ()) if "$" not in k)
            for loc in where.database:
                if keys and loc.action != "keep" and loc.table.split(".", 1)[0] == schema:
                    parts.append(_location_sql(cur, loc, keys))
        conn.rollback()
    return "".join(parts)


def _count_schema_erasure(filt: ErasureFilter, lines: list[str]) -> None:
    """The `kryonix-lgpd:` lines of the script: `table rows ["key", …]`."""
    import json

    for line in lines:
        table, rows, persons = line.split(" ", 2)
        filt.erased.database[table] = filt.erased.database.get(table, 0) + int(rows)
        key_name = next((k for k, w in filt.rules.person.items() if any(l.table == table for l in w.database)), None)
        if key_name:
            filt.hits.update((key_name, str(p)) for p in json.loads(persons))


# --- the one entry point the tiers call at their staging point ------------------------------------

def reapply_staged(ctx, tier: str, staged) -> dict:
    """Re-apply `ctx.erasure` to one tier's staged data, in place; what it removed (for the
    tier's outcome details). `staged`: the staging database's name (postgresql), the planned
    (key, expiry, payload) list (redis), the merge transaction's cursor (compliance), the verified index (object_storage), the staging folder
    (appdata)."""
    from .. import pg

    filt: ErasureFilter = ctx.erasure
    before = filt.erased.total
    details: dict = {}
    if tier == "postgresql" and isinstance(staged, tuple) and staged[0] == "schema-sql":
        return {"sql": schema_erasure_sql(filt, ctx.settings, staged[1], staged[2])}
    if tier == "postgresql" and isinstance(staged, tuple):  # "schema-done": the counts, then what is left
        _count_schema_erasure(filt, staged[2])
        staged = staged[1]
    if tier == "postgresql":
        with pg.connection(ctx.settings.pg_dsn, staged) as conn, conn.cursor() as cur:
            reapply_database(filt, cur)
    elif tier == "compliance":  # the merge's own cursor: same transaction
        reapply_database(filt, staged)
    elif tier == "redis":
        kept = [item for item in staged if not erased_redis_key(filt, ctx.target, item[0])]
        details["lgpd_reerased"] = len(staged) - len(kept)
        filt.erased.redis += len(staged) - len(kept)
        staged[:] = kept
    elif tier == "object_storage":
        dropped = []
        for bucket, entry in staged["buckets"].items():
            for key in [k for k in entry["objects"] if erased_object(filt, ctx.source, bucket, k)]:
                del entry["objects"][key]
                dropped.append(f"{bucket}/{key}")
                filt.erased.objects[bucket] = filt.erased.objects.get(bucket, 0) + 1
        details["lgpd_reerased_keys"] = dropped
    elif tier == "appdata":
        reapply_folder(filt, Path(staged))
    else:
        raise ValueError(f"no ledger re-application for tier {tier}")
    details["lgpd_reerased_items"] = filt.erased.total - before
    if details["lgpd_reerased_items"]:
        ctx.report.info(f"tenant {ctx.target.tenant_id}, tier {tier}: the erasure ledger removed "
                        f"{details['lgpd_reerased_items']} item(s) of erased persons before the data went live")
    return details
