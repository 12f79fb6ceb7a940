"""Is the erasure ledger applied to the tenant's LIVE data? Read-only: every ledger entry's
person is looked for, by keyed hash, in the live database, Redis namespace, buckets and
application-data folder (what `erasure_ledger_applied` reports). Found = something that an
erasure would still delete or anonymise (an anonymised row left behind is not a finding)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import pg, services
from ..config import Settings
from ..naming import names_for, validate_tenant_id
from . import ledger
from .locations import Erased, erase_database
from .reapply import erased_object, erased_redis_key, erasure_filter, find_in_database, reapply_folder


@dataclass
class LedgerCheck:
    tenant_id: str
    entries: int = 0
    persons_found: int = 0  # erased persons with something still in live data
    found: Erased = field(default_factory=Erased)

    @property
    def applied(self) -> bool:
        return self.found.total == 0

    def to_json(self) -> dict:
        return {"tenant": self.tenant_id, "entries": self.entries, "applied": self.applied,
                "persons_found": self.persons_found, "found": self.found.to_json()}


def check_ledger_applied(settings: Settings, tenant_id: str) -> LedgerCheck:
    validate_tenant_id(tenant_id)
    names = names_for(settings, tenant_id)
    result = LedgerCheck(tenant_id, entries=len(ledger.entries(settings, tenant_id)))
    filt = erasure_filter(settings, names, names)
    if filt is None:
        return result
    if pg.database_exists(settings.pg_dsn, names.database):
        with pg.connection(settings.pg_dsn, names.database) as conn, conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            find_in_database(filt, cur)
            for key_name, where in filt.rules.person.items():
                for key in sorted(filt.found.get(key_name, ())):
                    probe = Erased()
                    erase_database(cur, where, [key], True, probe)
                    if probe.total:
                        filt.hits.add((key_name, key))
                        for table, count in probe.database.items():
                            result.found.database[table] = result.found.database.get(table, 0) + count
            conn.rollback()
    client = services.redis_client(settings)
    result.found.redis = sum(1 for key in client.scan_iter(match=names.redis_match, count=1000)
                             if erased_redis_key(filt, names, key))
    s3 = services.s3_client(settings)
    wanted = {names.bucket(rule.bucket) for where in filt.rules.person.values() for rule in where.objects}
    for bucket in sorted(wanted):
        if not services.bucket_exists(s3, bucket):
            continue
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                if erased_object(filt, names, bucket, item["Key"]):
                    result.found.objects[bucket] = result.found.objects.get(bucket, 0) + 1
    if names.app_data_dir.is_dir() and not names.app_data_dir.is_symlink():
        reapply_folder(filt, names.app_data_dir, dry_run=True)
        result.found.appdata = filt.erased.appdata
    result.persons_found = len(filt.hits)
    return result
