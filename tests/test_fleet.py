"""`status` and the fleet report: per tenant age, staleness, restore points, repository size."""
import csv
import json
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from kryonix_dagster.fleet import fleet_backup_report
from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.resources import resources_from_env

from . import observe
from .conftest import MAIN_DB


def repo_size(settings, tid):
    root = Path(settings.repo.removeprefix("file://")) / f"cliente_{tid}"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_status_reports_each_tenant_and_the_last_24_hours(settings, cli, tenant_factory):
    fresh, never = tenant_factory("f"), tenant_factory("n")
    seed_tenant(settings, fresh, scale=0.05, plan="enterprise")
    assert cli("tenants", "add", never, "--name", "Nunca", "--plan", "basic").returncode == 0
    assert cli("backup", fresh).returncode == 0
    assert cli("backup", fresh).returncode == 0
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {t["id"]: t for t in report["tenants"]}
    mine = rows[fresh]
    assert mine["plano"] == "enterprise" and mine["rpo_hours"] == 4 and not mine["stale"]
    assert mine["restore_points"] == 2 and mine["repo_bytes"] == repo_size(settings, fresh)
    assert 0 <= mine["age_hours"] < 0.5 and mine["last_attempt_ok"] is True
    assert rows[never]["stale"] and rows[never]["last_session"] is None and never in report["stale"]
    audit_bytes = int(observe.psql(MAIN_DB, "SELECT coalesce(sum(backup_size_bytes), 0) FROM tenants.backup_audit "
                                                        "WHERE operation = 'backup' AND backup_date > now() - interval '24 hours'"))
    assert report["last_24h"]["bytes"] == audit_bytes
    table = cli("status").stdout
    assert fresh in table and "STALE" in table


def test_fleet_report_asset_writes_markdown_and_csv(settings, cli, tenant_factory):
    """Also the compliance officer's view (issue 23 item 6): the newest restore point a drill
    passed on (not the newest session, taken after the drill) and its age, the last integrity
    check and drill with dates, off-site lag, as Markdown and as JSON metadata (LGPD compliance
    comes from the LGPD report: test_compliance_ui)."""
    from kryonix_dagster.engine.drill import run_drill

    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    assert cli("backup", tid).returncode == 0
    assert cli("verify", tid).returncode == 0
    assert run_drill(settings, tid).passed
    assert cli("backup", tid).returncode == 0
    sessions = observe.psql(MAIN_DB, f"SELECT session_id, to_char(backup_date AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') "
                                     f"FROM tenants.backup_audit WHERE cliente_id = '{tid}' AND success "
                                     f"AND operation IN ('backup', 'check', 'drill') ORDER BY backup_date").splitlines()
    (verified, _), (_, checked_at), (_, drilled_at), (newest, _) = (line.split("|") for line in sessions)
    assert verified != newest
    with DagsterInstance.ephemeral() as instance:
        assert materialize([fleet_backup_report], instance=instance, resources=resources_from_env()).success
        meta = instance.get_latest_materialization_event(AssetKey("fleet_backup_report")).asset_materialization.metadata
    assert tid in meta["report"].value and meta["tenants"].value >= 1
    with open(meta["csv"].value, newline="") as handle:
        rows = {r["id"]: r for r in csv.DictReader(handle)}
    assert rows[tid]["restore_points"] == "2" and rows[tid]["stale"] == "False" and rows[tid]["repository"] == "present"
    assert int(rows[tid]["repo_bytes"]) == repo_size(settings, tid)
    [mine] = [r for r in meta["json"].value["rows"] if r["id"] == tid]
    assert mine["verified_session"] == verified and mine["last_session"] == newest
    assert 0 <= mine["verified_age_hours"] < 0.5 and mine["lgpd_compliant"] is None  # no LGPD report here yet
    assert mine["last_check_ok"] is True and mine["last_drill_ok"] is True and mine["offsite_lag_hours"] is None
    [line] = [row for row in meta["compliance"].value.splitlines() if f" {tid} " in row]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:2] == [tid, verified] and cells[3:6] == [f"ok {checked_at}", f"ok {drilled_at}", "no copy"]
    assert cells[6] == "not evaluated" and "LGPD (no report yet)" in meta["compliance"].value
