"""The fleet report: one row per tenant, totals of the last 24 hours (the seed's monitor), and
the compliance officer's view: the newest verified restore point and its age, the last
integrity check and restore drill with their dates, the off-site lag and LGPD compliance."""
import json

import pandas as pd
from dagster import (AssetExecutionContext, AssetKey, AssetSelection, DagsterInstance, MaterializeResult, MetadataValue,
                     ScheduleDefinition, asset, define_asset_job)

from ..resources import BackupEngineResource
from ..scheduling import TIMEZONE, default_schedule_status

COLUMNS = ["id", "plano", "status", "last_session", "age_hours", "rpo_hours", "stale", "restore_points", "repo_bytes",
           "repository", "verified_session", "verified_at", "verified_age_hours", "last_check_ok", "last_check_at",
           "last_drill_ok", "last_drill_at", "last_attempt_ok", "offsite_lag_hours", "offsite_copy", "lgpd_compliant"]


def fleet_frame(status: dict, verified: dict | None = None, lgpd: dict | None = None) -> pd.DataFrame:
    """`verified`: {tenant: VerifiedPoint}; `lgpd`: {tenant: compliant}. Missing columns stay empty."""
    verified, lgpd = verified or {}, lgpd or {}
    rows = []
    for t in status["tenants"]:
        point = verified.get(t["id"])
        rows.append({**t, "offsite_lag_hours": (t.get("offsite") or {}).get("lag_hours"),
                     "offsite_copy": (t.get("offsite") or {}).get("copy"),
                     "verified_session": point.session_id if point else None,
                     "verified_at": point.taken_at.isoformat() if point else None,
                     "verified_age_hours": point.age_hours if point else None,
                     "lgpd_compliant": lgpd.get(t["id"])})
    return pd.DataFrame(rows, columns=COLUMNS)


LGPD_REPORT = "lgpd_compliance_report"


def lgpd_by_tenant(instance: DagsterInstance) -> tuple[dict[str, bool], str | None]:
    """Each tenant's LGPD compliance as the latest lgpd_compliance_report found it (read from
    the instance: the hourly fleet report never re-reads every tenant's database and
    repository), and when that report was made; ({}, None) before the first report."""
    event = instance.get_latest_materialization_event(AssetKey(LGPD_REPORT))
    doc = event.asset_materialization.metadata.get("json") if event else None
    if doc is None:
        return {}, None
    return {t["tenant"]: t["compliant"] for t in doc.value["tenants"]}, doc.value["generated_at"]


def _when(ok, at) -> str:
    if ok is None or pd.isna(ok):
        return "never"
    return f"{'ok' if ok else 'FAILED'} {str(at)[:16].replace('T', ' ')}"


def _value(value, empty: str = "—") -> str:
    return empty if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def compliance_markdown(frame: pd.DataFrame, lgpd_at: str | None = None) -> str:
    """The compliance officer's table: short cells, one line per tenant, nothing clipped."""
    if frame.empty:
        return "(no tenants)"
    lgpd_column = f"LGPD (report {lgpd_at[:16].replace('T', ' ')})" if lgpd_at else "LGPD (no report yet)"
    view = pd.DataFrame({
        "tenant": frame["id"],
        "newest verified restore point": [_value(s, "none") for s in frame["verified_session"]],
        "verified age (h)": [_value(a) for a in frame["verified_age_hours"]],
        "integrity": [_when(ok, at) for ok, at in zip(frame["last_check_ok"], frame["last_check_at"])],
        "restore drill": [_when(ok, at) for ok, at in zip(frame["last_drill_ok"], frame["last_drill_at"])],
        "off-site lag (h)": [_value(lag, "no copy") for lag in frame["offsite_lag_hours"]],
        lgpd_column: ["not evaluated" if c is None or pd.isna(c) else ("compliant" if c else "NOT compliant")
                 for c in frame["lgpd_compliant"]],
        "stale": ["STALE" if s else "" for s in frame["stale"]],
    })
    return view.to_markdown(index=False)


@asset(group_name="fleet", kinds={"pandas", "csv"}, deps=[LGPD_REPORT],
       description="Every tenant's plan, last session, age, staleness, restore points, repository size; for the "
                   "compliance officer the newest verified (drilled) restore point and its age, the last integrity "
                   "check and restore drill with dates, the off-site lag and LGPD compliance (as the latest "
                   "lgpd_compliance_report found it); the last 24 hours' totals. The `compliance` table here; "
                   "every column downloadable as the `json` metadata.")
def fleet_backup_report(context: AssetExecutionContext, engine: BackupEngineResource) -> MaterializeResult:
    status = engine.fleet_status()
    lgpd, lgpd_at = lgpd_by_tenant(context.instance)
    frame = fleet_frame(status, engine.verified_points(), lgpd)
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
        "lgpd_non_compliant_tenants": MetadataValue.int(sum(1 for ok in lgpd.values() if ok is False)),
        "unverified_tenants": MetadataValue.int(int(frame["verified_session"].isna().sum())),
        "storage_bytes": MetadataValue.int(status["storage_bytes"]),
        "bytes_last_24h": MetadataValue.int(totals["bytes"]),
        "tenants_backed_up_last_24h": MetadataValue.int(totals["tenants"]),
        "average_session_bytes_last_24h": MetadataValue.float(totals["average_bytes"]),
        "sessions_last_24h": MetadataValue.int(totals["sessions"]),
        "compliance": MetadataValue.md(compliance_markdown(frame, lgpd_at)),
        "report": MetadataValue.md(frame.to_markdown(index=False) if not frame.empty else "(no tenants)"),
        "json": MetadataValue.json({"generated_at": status["generated_at"], "lgpd_report_at": lgpd_at, "columns": COLUMNS,
                                    "rows": json.loads(frame.to_json(orient="records"))}),
        "csv": MetadataValue.path(str(path)),
    })


fleet_report_job = define_asset_job("fleet_report_job", selection=AssetSelection.assets(fleet_backup_report))
fleet_report_schedule = ScheduleDefinition(name="fleet_report_schedule", job=fleet_report_job, cron_schedule="30 * * * *",
                                           execution_timezone=TIMEZONE, default_status=default_schedule_status(),
                                           description="The fleet report, hourly")
