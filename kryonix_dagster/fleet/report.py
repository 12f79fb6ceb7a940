"""The fleet report: one row per tenant, totals of the last 24 hours (the seed's monitor)."""
import pandas as pd
from dagster import (AssetExecutionContext, AssetSelection, MaterializeResult, MetadataValue, ScheduleDefinition,
                     asset, define_asset_job)

from ..resources import BackupEngineResource
from ..scheduling import TIMEZONE, default_schedule_status

COLUMNS = ["id", "plano", "status", "last_session", "age_hours", "rpo_hours", "stale", "restore_points", "repo_bytes",
           "repository", "last_check_ok", "last_drill_ok", "last_attempt_ok", "offsite_lag_hours", "offsite_copy"]


def fleet_frame(status: dict) -> pd.DataFrame:
    rows = [{**t, "offsite_lag_hours": (t.get("offsite") or {}).get("lag_hours"),
             "offsite_copy": (t.get("offsite") or {}).get("copy")} for t in status["tenants"]]
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "nome", "last_error", "last_check_at", "last_drill_at",
                                        "last_session_at"])
    return frame[COLUMNS] if not frame.empty else pd.DataFrame(columns=COLUMNS)


@asset(group_name="fleet", kinds={"pandas", "csv"},
       description="Every tenant's plan, last session, age, staleness, restore points, repository size and last "
                   "check results, with the last 24 hours' totals. Markdown here, CSV on disk.")
def fleet_backup_report(context: AssetExecutionContext, engine: BackupEngineResource) -> MaterializeResult:
    status = engine.fleet_status()
    frame = fleet_frame(status)
    path = engine.reports_dir() / "fleet_backup_report.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    totals = status["last_24h"]
    context.log.info(f"{len(frame)} tenants, {len(status['stale'])} stale; report at {path}")
    return MaterializeResult(metadata={
        "tenants": MetadataValue.int(len(frame)),
        "stale_tenants": MetadataValue.int(len(status["stale"])),
        "offsite_lagging_tenants": MetadataValue.int(len(status.get("offsite_lagging", []))),
        "missing_repositories": MetadataValue.int(len(status.get("missing_repositories", []))),
        "storage_bytes": MetadataValue.int(status["storage_bytes"]),
        "bytes_last_24h": MetadataValue.int(totals["bytes"]),
        "tenants_backed_up_last_24h": MetadataValue.int(totals["tenants"]),
        "average_session_bytes_last_24h": MetadataValue.float(totals["average_bytes"]),
        "sessions_last_24h": MetadataValue.int(totals["sessions"]),
        "report": MetadataValue.md(frame.to_markdown(index=False) if not frame.empty else "(no tenants)"),
        "csv": MetadataValue.path(str(path)),
    })


fleet_report_job = define_asset_job("fleet_report_job", selection=AssetSelection.assets(fleet_backup_report))
fleet_report_schedule = ScheduleDefinition(name="fleet_report_schedule", job=fleet_report_job, cron_schedule="30 * * * *",
                                           execution_timezone=TIMEZONE, default_status=default_schedule_status(),
                                           description="The fleet report, hourly")
