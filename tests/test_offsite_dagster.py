"""The off-site domain in Dagster: the copy asset and its lag check on the shared off-site
world, the DR drill job's RTO metadata, and the pure selection/lag rules."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from dagster import (AssetCheckKey, AssetCheckSeverity, AssetKey, AssetSelection, DagsterInstance, Definitions, define_asset_job,
                     materialize)

from kryonix_dagster.engine.offsite import lag_of, offsite_lags
from kryonix_dagster.offsite import dr_drill_job, offsite_copy, offsite_lag_check
from kryonix_dagster.offsite.assets import lag_evaluation
from kryonix_dagster.offsite.jobs import DR_SHARE, dr_drill_tenants_for
from kryonix_dagster.partitions import KRYONIX_TENANTS
from kryonix_dagster.resources import resources_from_env

pytest_plugins = ["tests.offsite_world"]  # the world shared with the other off-site modules, set up once


@pytest.fixture
def world_env(dr_world, monkeypatch):
    for name, value in dr_world.env.items():
        monkeypatch.setenv(name, value)
    return dr_world


def test_offsite_copy_materializes_with_its_lag_check_and_the_dr_drill_records_rto(world_env):
    tid = world_env.tenant_id
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(KRYONIX_TENANTS, [tid])
        result = materialize([offsite_copy, offsite_lag_check], partition_key=tid, instance=instance,
                             resources=resources_from_env())
        assert result.success
        meta = instance.get_latest_materialization_event(AssetKey("offsite_copy")).asset_materialization.metadata
        assert meta["restore_points_offsite"].value >= 1 and meta["duration_seconds"].value > 0
        check = next(e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION")
        evaluation = check.event_specific_data
        assert evaluation.passed and evaluation.metadata["lag_hours"].value == 0.0
        drill = dr_drill_job.execute_in_process(
            instance=instance, resources=resources_from_env(),
            run_config={"ops": {"dr_drill_tenants": {"config": {"tenants": [tid]}}}})
        assert drill.success
        point = instance.get_latest_materialization_event(AssetKey("dr_drill")).asset_materialization
        assert point.partition == tid and point.metadata["passed"].value
        assert point.metadata["rto_seconds"].value > 0

        # a new restore point the copy has not taken yet: the check measures how long it has waited
        newest = world_env.cli_json("backup", tid)["sessions"][0]["session"]
        lag_only = Definitions(assets=[offsite_copy], asset_checks=[offsite_lag_check], resources=resources_from_env(),
                               jobs=[define_asset_job("lag_only", selection=AssetSelection.checks(offsite_lag_check))])
        waiting = lag_only.resolve_job_def("lag_only").execute_in_process(  # checks-only: the partition by tag
            instance=instance, tags={"dagster/partition": tid})
        evaluation = next(e for e in waiting.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION").event_specific_data
        copied = evaluation.metadata["secondary_latest"].value
        assert copied and copied != newest and copied in {p["session"] for p in world_env.cli_json(
            "snapshots", tid, "--from", "secondary")}
        assert evaluation.passed and 0 < evaluation.metadata["lag_hours"].value < 1
        # the same uncopied point past the plan's limit (basic: 24 h) fails the check, as an ERROR
        [lag] = offsite_lags(world_env.settings, tid, now=datetime.now(timezone.utc) + timedelta(hours=25))
        late = lag_evaluation(lag)
        assert lag.primary_latest == newest and late["passed"] is False
        assert late["severity"] == AssetCheckSeverity.ERROR and "(limit 24 h)" in late["description"]
        # the copy catches up: the world is whole again for the other off-site tests
        assert materialize([offsite_copy], partition_key=tid, instance=instance, resources=resources_from_env()).success
        assert newest in {p["session"] for p in world_env.cli_json("snapshots", tid, "--from", "secondary")}


def test_offsite_lag_against_the_plan_limit():
    now = datetime(2026, 12, 2, 12, tzinfo=timezone.utc)
    newest = (now - timedelta(hours=7)).strftime("%Y%m%dT%H%M%SZ") + "-abcdef"
    older = (now - timedelta(hours=30)).strftime("%Y%m%dT%H%M%SZ") + "-123456"
    assert lag_of("a", "basic", newest, newest, now).lag_hours == 0 and lag_of("a", "basic", newest, newest, now).ok
    behind = lag_of("a", "enterprise", newest, older, now)
    assert round(behind.lag_hours) == 7 and not behind.ok  # enterprise: 6 h
    assert lag_of("a", "basic", newest, older, now).ok  # basic: 24 h
    assert lag_of("a", "basic", None, None, now).lag_hours is None


def test_dr_drill_selection_takes_every_enterprise_tenant_and_rotates_the_others():
    tenants = [(f"t{n}", "enterprise" if n < 3 else "basic") for n in range(40)]
    weeks = [datetime(2026, 1, 5, tzinfo=timezone.utc) + timedelta(weeks=w) for w in range(DR_SHARE)]
    chosen = [set(dr_drill_tenants_for(tenants, when)) for when in weeks]
    for picked in chosen:
        assert {"t0", "t1", "t2"} <= picked and len(picked) < len(tenants)
    assert set().union(*chosen) == {tid for tid, _ in tenants}  # everyone within DR_SHARE weeks


def test_a_cli_copy_is_recorded_in_the_dagster_instance_with_its_lag_check(world_env, dagster_home):
    """What the CLI does shows in the UI: `copy` materializes the tenant's offsite_copy partition
    and evaluates its offsite_lag check, in the instance DAGSTER_HOME names."""
    tid = world_env.tenant_id
    newest = world_env.cli_json("backup", tid)["sessions"][0]["session"]
    home = {"DAGSTER_HOME": str(dagster_home)}
    copied = world_env.cli("copy", tid, env=home)
    assert copied.returncode == 0 and "reported 1 copy(ies) to the Dagster instance" in copied.stderr, copied.stderr
    assert "Warning" not in copied.stderr, copied.stderr
    assert newest in {p["session"] for p in world_env.cli_json("snapshots", tid, "--from", "secondary")}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        event = instance.get_latest_materialization_event(AssetKey("offsite_copy")).asset_materialization
        assert event.partition == tid and event.metadata["latest_session"].value == newest
        assert event.metadata["copied_restore_points"].value == 1
        [record] = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey("offsite_copy"), "offsite_lag"), limit=5)
        evaluation = record.event.dagster_event.event_specific_data
        assert evaluation.partition == tid and evaluation.passed
        assert evaluation.metadata["secondary_latest"].value == newest
