"""The integrity check: restic check with a rotating read-data subset, and every restore
point's snapshots present."""
from datetime import datetime, timezone

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, Config, MetadataValue,
                     asset_check)

from ..engine.errors import KryonixError, one_line
from ..engine.verify import VerifyResult, rotating_subset
from ..backup.metadata import RESTORE_POINT_ASSET
from ..partitions import kryonix_tenants
from ..resources import BackupEngineResource


class IntegrityConfig(Config):
    read_data_subset: str = ""  # e.g. "3/7" or "1/1"; empty: the day of the week's seventh


def integrity_evaluation(tenant_id: str, subset: str, result: VerifyResult) -> dict:
    return {
        "passed": result.ok,
        "severity": AssetCheckSeverity.ERROR,
        "description": f"tenant {tenant_id}: " + ("repository intact" if result.ok else "; ".join(result.problems)),
        "metadata": {
            "read_data_subset": subset, "restore_points": MetadataValue.int(result.restore_points),
            "problems": MetadataValue.json(result.problems),
            "unfinished_sessions": MetadataValue.int(len(result.unfinished_sessions)),
            "duration_seconds": MetadataValue.float(float(result.duration_seconds)),
        },
    }


def evaluate_integrity(engine: BackupEngineResource, tenant_id: str, subset: str | None = None) -> dict:
    subset = subset or rotating_subset(datetime.now(timezone.utc))
    try:
        result = engine.verify(tenant_id, subset=subset)
    except KryonixError as exc:
        return {"passed": False, "severity": AssetCheckSeverity.ERROR,
                "description": f"tenant {tenant_id}: {one_line(str(exc))}", "metadata": {"read_data_subset": subset}}
    return integrity_evaluation(tenant_id, subset, result)


@asset_check(asset=RESTORE_POINT_ASSET, name="integrity", partitions_def=kryonix_tenants, pool="kryonix_repository",
             description="restic check with a rotating read-data subset (the whole repository is read every week), "
                         "and every restore point's snapshots present.")
def integrity_check(context: AssetCheckExecutionContext, config: IntegrityConfig,
                    engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**evaluate_integrity(engine, context.partition_key, config.read_data_subset or None))
