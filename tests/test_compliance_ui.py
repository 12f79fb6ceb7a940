"""Compliance in the Dagster UI (issue 23 items 5-7): the per-tenant `lgpd_compliance` check
executed alone, for a partition or without one ("Execute all"), evaluates read-only; the
LGPD report's check fails naming the non-compliant tenants; the fleet report carries the
compliance officer's columns as Markdown and JSON; the demo's report runner records both
reports and their checks in DAGSTER_HOME. Judged by psql (data unchanged) and the instance."""
from __future__ import annotations

import os
import subprocess
import sys

from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterInstance, materialize

from .lgpd_world import TABLES, checksums, drop_lgpd_tenant, new_tenant_id, seed_lgpd_tenant

LGPD_CHECK = AssetCheckKey(AssetKey("lgpd_retention"), "lgpd_compliance")
REPORT_CHECK = AssetCheckKey(AssetKey("lgpd_compliance_report"), "all_tenants_compliant")


def evaluations(run, key: AssetCheckKey) -> dict:
    """{partition: evaluation} of `key` logged by a run."""
    return {e.event_specific_data.partition: e.event_specific_data for e in run.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.asset_check_key == key}


def test_lgpd_compliance_executes_alone_read_only_and_the_report_check_names_the_tenant(own_registry, psql,
                                                                                       monkeypatch):
    from kryonix_dagster.definitions import defs  # first: the domains import each other in this order
    from kryonix_dagster.lgpd import lgpd_compliance, lgpd_compliance_report, lgpd_retention
    from kryonix_dagster.partitions import KRYONIX_TENANTS
    from kryonix_dagster.resources import resources_from_env

    assert defs.resolve_assets_def("lgpd_compliance_report").check_keys == {REPORT_CHECK}
    monkeypatch.setenv("KRYONIX_MAIN_DB", own_registry.main_db)
    bad, good = new_tenant_id(), new_tenant_id()
    try:
        bad_db = seed_lgpd_tenant(own_registry, bad)  # 6 rows past their period
        good_db = seed_lgpd_tenant(own_registry, good, drop=TABLES)  # nothing personal left to judge
        before = {bad: checksums(psql, bad_db), good: psql(good_db, "SELECT count(*) FROM auth.usuarios")}
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(KRYONIX_TENANTS, [bad, good])
            # the check alone, for one partition (a checks-only run carries its partition as a tag in
            # Dagster 1.13, as the UI launches it): evaluated, nothing materialised
            run = materialize([lgpd_retention, lgpd_compliance], selection=AssetSelection.checks(lgpd_compliance),
                              tags={"dagster/partition": bad}, instance=instance, resources=resources_from_env())
            assert run.success
            [alone] = run.get_asset_check_evaluations()
            assert alone.partition == bad and not alone.passed
            assert alone.metadata["overdue_rows"].value == 6 and bad in alone.description
            # "Execute all": the check without a partition evaluates every tenant on its partition
            run = materialize([lgpd_retention, lgpd_compliance], selection=AssetSelection.checks(lgpd_compliance),
                              instance=instance, resources=resources_from_env())
            assert run.success
            per_tenant = evaluations(run, LGPD_CHECK)
            assert not per_tenant[bad].passed and per_tenant[bad].metadata["overdue_rows"].value == 6
            assert per_tenant[good].passed and per_tenant[None].metadata["non_compliant"].value == [bad]
            # the report: its check fails naming exactly the non-compliant tenant; each tenant's
            # lgpd_compliance is evaluated on its partition; the JSON travels as metadata
            run = materialize([lgpd_compliance_report], instance=instance, resources=resources_from_env())
            assert run.success
            [fleet_check] = evaluations(run, REPORT_CHECK).values()
            assert not fleet_check.passed and bad in fleet_check.description and good not in fleet_check.description
            per_tenant = evaluations(run, LGPD_CHECK)
            assert set(per_tenant) == {bad, good} and not per_tenant[bad].passed and per_tenant[good].passed
            meta = instance.get_latest_materialization_event(
                AssetKey("lgpd_compliance_report")).asset_materialization.metadata
            assert meta["json"].value["non_compliant"] == [bad] and "Ana" not in str(meta["json"].value)
            assert instance.get_latest_materialization_event(AssetKey("lgpd_retention")) is None
        assert checksums(psql, bad_db) == before[bad]
        assert psql(good_db, "SELECT count(*) FROM auth.usuarios") == before[good] == "1"
        assert psql(bad_db, "SELECT count(*) FROM crm.contatos WHERE nome = 'ANONIMIZADO'") == "1"
    finally:
        drop_lgpd_tenant(own_registry, bad)
        drop_lgpd_tenant(own_registry, good)


def test_demo_reports_runner_records_both_reports_and_their_checks(own_registry, psql, dagster_home):
    """What `make demo` runs last, as a process of its own on a DAGSTER_HOME: afterwards the
    instance holds a materialization of fleet_backup_report and lgpd_compliance_report, the
    report's check and the tenant's lgpd_compliance (on its partition) evaluated, data unchanged."""
    tid = new_tenant_id()
    try:
        db = seed_lgpd_tenant(own_registry, tid)
        before = checksums(psql, db)
        env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "KRYONIX_MAIN_DB": own_registry.main_db}
        done = subprocess.run([sys.executable, "-W", "ignore", "-m", "kryonix_dagster.fleet.demo_reports"], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert "fleet_report_job: materialized" in done.stderr and "lgpd_report_job: materialized" in done.stderr
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            fleet = instance.get_latest_materialization_event(AssetKey("fleet_backup_report"))
            lgpd = instance.get_latest_materialization_event(AssetKey("lgpd_compliance_report"))
            assert fleet and lgpd
            [row] = fleet.asset_materialization.metadata["json"].value["rows"]
            assert row["id"] == tid and row["lgpd_compliant"] is False and row["verified_session"] is None
            [line] = [r for r in fleet.asset_materialization.metadata["compliance"].value.splitlines() if tid in r]
            assert [c.strip() for c in line.strip("|").split("|")][1:3] == ["none", "—"] and "NOT compliant" in line
            report_check = instance.get_latest_asset_check_evaluation_record(REPORT_CHECK)
            evaluation = report_check.event.asset_check_evaluation
            assert not evaluation.passed and tid in evaluation.description
            [tenant_check] = instance.event_log_storage.get_asset_check_execution_history(LGPD_CHECK, limit=10)
            evaluation = tenant_check.event.asset_check_evaluation
            assert evaluation.partition == tid and not evaluation.passed
            assert evaluation.metadata["overdue_rows"].value == 6
            assert {r.dagster_run.job_name for r in instance.get_run_records()} == {"fleet_report_job", "lgpd_report_job"}
        assert checksums(psql, db) == before
    finally:
        drop_lgpd_tenant(own_registry, tid)
