"""The cluster's pgBackRest base backups as one non-partitioned asset, with its two checks:
WAL archiving is healthy (lag under 5 minutes), and the recoverable window covers every
plan's PITR promise (plans.py: enterprise 30 days, pro 7, basic none)."""

from datetime import datetime, timezone

from dagster import (AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, Config, Failure,
                     MaterializeResult, MetadataValue, asset, asset_check)

from ..backup.assets import DagsterReporter
from ..engine.errors import KryonixError, one_line
from ..engine.pgbackrest import BaseBackup
from ..engine.pitr.archive import MAX_LAG_SECONDS, PitrStatus
from ..engine.plans import PLANS
from ..resources import BackupEngineResource

PITR_ASSET = "pitr_base_backup"
GROUP = "pitr"


class PitrBackupConfig(Config):
    backup_type: str = "diff"  # full | diff | incr


@asset(name=PITR_ASSET, group_name=GROUP, kinds={"postgres", "pgbackrest"},
       description="A pgBackRest base backup of the tenants' PostgreSQL cluster (full weekly, differential "
                   "daily). With the WAL archive it makes every tenant's database recoverable to any moment of "
                   "the window (`kryonix-backup restore ID --at T`).")
def pitr_base_backup(context: AssetExecutionContext, config: PitrBackupConfig,
                     engine: BackupEngineResource) -> MaterializeResult:
    try:
        backup = engine.pitr_backup(config.backup_type, DagsterReporter(context.log))
        state = engine.pitr_status()
    except KryonixError as exc:
        raise Failure(description=one_line(str(exc))) from None
    return MaterializeResult(metadata=backup_metadata(backup, state))


def backup_metadata(backup: BaseBackup, state: PitrStatus | None) -> dict:
    meta = {"label": backup.label, "backup_type": backup.type,
            "duration_seconds": MetadataValue.float((backup.stopped - backup.started).total_seconds()),
            "size_bytes": MetadataValue.int(int(backup.size_bytes or 0)),
            "repo_bytes": MetadataValue.int(int(backup.repo_bytes or 0))}
    if state is not None:
        meta.update(window_metadata(state))
    return meta


def window_metadata(state: PitrStatus) -> dict:
    window = state.window.to_json()
    return {"window_earliest": window["earliest"] or "-", "window_latest": window["latest"] or "-",
            "window_days": MetadataValue.float(round(state.window.days(), 3)),
            "base_backups": MetadataValue.int(len(state.backups)),
            "wal_lag_seconds": MetadataValue.float(round(state.archiving.lag_seconds, 1))}


def archiving_evaluation(state: PitrStatus | None) -> dict:
    """passed/severity/description/metadata of the `wal_archiving` check."""
    if state is None:
        return {"passed": False, "severity": AssetCheckSeverity.ERROR,
                "description": "PITR is not set up: run `kryonix-backup pitr setup`", "metadata": {}}
    a = state.archiving
    return {
        "passed": a.healthy, "severity": AssetCheckSeverity.ERROR,
        "description": (f"WAL archiving healthy: last {a.last_archived_wal}, lag {a.lag_seconds:.0f}s "
                        f"(limit {MAX_LAG_SECONDS}s)") if a.healthy else f"WAL archiving unhealthy: {a.problem}",
        "metadata": {"lag_seconds": MetadataValue.float(round(a.lag_seconds, 1)),
                     "pending_segments": MetadataValue.int(a.pending_segments),
                     "failed_count": MetadataValue.int(int(a.failed_count)),
                     "last_archived_wal": a.last_archived_wal or "-"},
    }


def window_evaluation(state: PitrStatus | None, now: datetime | None = None) -> dict:
    """passed/severity/description/metadata of the `window_covers_plans` check: the window
    reaches back as far as each plan promises (WARN: a young stanza's window is still growing)."""
    promises = {name: plan.pitr_days for name, plan in PLANS.items() if plan.pitr_days > 0}
    if state is None:
        return {"passed": False, "severity": AssetCheckSeverity.ERROR,
                "description": "PITR is not set up: run `kryonix-backup pitr setup`", "metadata": {}}
    days = state.window.days(now or datetime.now(timezone.utc))
    short = {name: promised for name, promised in promises.items() if days < promised}
    text = (f"window {days:.2f} days covers every plan ({', '.join(f'{n} {d}d' for n, d in promises.items())})"
            if not short else
            f"window {days:.2f} days is shorter than the promise of {', '.join(f'{n} ({d} days)' for n, d in short.items())}")
    return {"passed": not short, "severity": AssetCheckSeverity.WARN, "description": text,
            "metadata": {"window_days": MetadataValue.float(round(days, 3)),
                         "longest_promise_days": MetadataValue.int(max(promises.values(), default=0))}}


@asset_check(asset=PITR_ASSET, name="wal_archiving",
             description="WAL archiving through pgBackRest works: no failure since the last success and the "
                         "oldest segment waiting to be archived is under 5 minutes old.")
def wal_archiving_check(engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**archiving_evaluation(engine.pitr_status()))


@asset_check(asset=PITR_ASSET, name="window_covers_plans",
             description="The recoverable window reaches back as far as each plan's PITR promise "
                         "(enterprise 30 days, pro 7, basic none: engine/plans.py).")
def window_covers_plans_check(engine: BackupEngineResource) -> AssetCheckResult:
    return AssetCheckResult(**window_evaluation(engine.pitr_status()))
