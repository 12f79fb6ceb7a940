"""`erasure_ledger_applied`: per tenant, ERROR when a person of the erasure ledger is found in
the tenant's live data (a restore that bypassed the ledger, a re-import, a write after the
erasure). Metadata are counts only: never a value, never a hash."""
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from ..backup.metadata import RESTORE_POINT_ASSET
from ..engine.errors import KryonixError, one_line
from ..partitions import kryonix_tenants
from ..resources import BackupEngineResource


def ledger_evaluation(engine: BackupEngineResource, tenant_id: str) -> dict:
    try:
        result = engine.erasure_ledger_check(tenant_id)
    except KryonixError as exc:
        return {"passed": False, "severity": AssetCheckSeverity.ERROR,
                "description": f"tenant {tenant_id}: {one_line(str(exc))}", "metadata": {}}
    found = result.found
    where = [f"{table}: {n}" for table, n in sorted(found.database.items())]
    where += [f"redis: {found.redis}"] if found.redis else []
    where += [f"{bucket}: {n}" for bucket, n in sorted(found.objects.items())]
    where += [f"appdata: {found.appdata}"] if found.appdata else []
    return {
        "passed": result.applied,
        "severity": AssetCheckSeverity.ERROR,
        "description": f"tenant {tenant_id}: " + (
            f"the erasure ledger ({result.entries} entr{'y' if result.entries == 1 else 'ies'}) holds in live data"
            if result.applied else
            f"{result.persons_found} erased person(s) found in live data again ({'; '.join(where)}); "
            f"run `kryonix-backup lgpd erase` for them again"),
        "metadata": {
            "ledger_entries": MetadataValue.int(result.entries),
            "persons_found": MetadataValue.int(result.persons_found),
            "items_found": MetadataValue.int(found.total),
            "rows_found": MetadataValue.int(sum(found.database.values())),
            "redis_keys_found": MetadataValue.int(found.redis),
            "objects_found": MetadataValue.int(sum(found.objects.values())),
            "appdata_files_found": MetadataValue.int(found.appdata),
        },
    }


@asset_check(asset=RESTORE_POINT_ASSET, name="erasure_ledger_applied", partitions_def=kryonix_tenants,
             description="LGPD: no person of the tenant's erasure ledger is back in its live data "
                         "(database, Redis, buckets, application data); counts only, never a value.")
def erasure_ledger_applied(context: AssetCheckExecutionContext, engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**ledger_evaluation(engine, context.partition_key))
