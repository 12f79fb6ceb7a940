"""The Dagster layer runs the same sessions and shows them as per-tenant materializations."""
import json

from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter, DagsterInstance, materialize

from kryonix_dagster.backup.assets import tenant_backup_session
from kryonix_dagster.engine import keys
from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.partitions import KRYONIX_TENANTS
from kryonix_dagster.resources import resources_from_env

from . import observe
from .helpers import failed_session_run


def test_materializing_a_partition_runs_a_session(settings, tenant_factory, cli):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.1)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(KRYONIX_TENANTS, [tid])
        result = materialize([tenant_backup_session], partition_key=tid, instance=instance,
                             resources=resources_from_env(),
                             run_config={"ops": {"tenant_backup_session": {"config": {"backup_type": "full"}}}})
        assert result.success
        event = instance.get_latest_materialization_event(AssetKey("postgresql_backup"))
        meta = event.asset_materialization.metadata
        assert event.asset_materialization.partition == tid
        rows = int(observe.psql(f"kryonix_cliente_{tid}", "SELECT (SELECT count(*) FROM crm.contatos) + 0"))
        assert meta["rows"].value > rows > 0
        assert meta["bytes_processed"].value > 0 and meta["duration_seconds"].value > 0
        assert "dump=" in meta["snapshot_id"].value
        point = instance.get_latest_materialization_event(AssetKey("restore_point")).asset_materialization
        assert point.partition == tid and point.metadata["status"].value == "complete"
        # the session's consistency result belongs to the tenant's partition, not to the asset
        check = AssetCheckKey(AssetKey("restore_point"), "consistency")
        [evaluation] = [r.event.dagster_event.event_specific_data
                        for r in instance.event_log_storage.get_asset_check_execution_history(check, limit=5)]
        assert evaluation.partition == tid and evaluation.passed
        # the session is the CLI's restore point
        session = point.metadata["session"].value
        listed = json.loads(cli("snapshots", tid, "--json").stdout)
        assert [p["session"] for p in listed] == [session]
        # no secret in the run's event log
        logs = "".join(str(e) for e in instance.all_logs(result.run_id))
        for secret in (keys.repository_password(settings, tid), settings.master_key_file.read_text().strip(),
                       settings.s3_secret_key):
            assert secret not in logs


def test_a_failed_session_fails_the_run_and_materializes_nothing(settings, tenant_factory, cli):
    tid = tenant_factory()
    assert cli("tenants", "add", tid, "--name", "Sem banco", "--plan", "basic").returncode == 0
    with DagsterInstance.ephemeral() as instance:
        result = failed_session_run(instance, tid)
        assert instance.get_latest_materialization_event(AssetKey("restore_point")) is None
        failure = next(e for e in instance.all_logs(result.run_id) if e.dagster_event and e.dagster_event.is_step_failure)
        assert f"kryonix_cliente_{tid} does not exist" in str(failure.dagster_event.event_specific_data.error)


def test_cli_backup_appears_in_the_dagster_instance(settings, tenant_factory, cli, tmp_path):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    home = tmp_path / "dagster_home"
    home.mkdir()
    result = cli("backup", tid, "--json", env={"DAGSTER_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    session = json.loads(result.stdout)["sessions"][0]["session"]
    with DagsterInstance.from_config(str(home)) as instance:
        assert tid in instance.get_dynamic_partitions(KRYONIX_TENANTS)
        event = instance.get_latest_materialization_event(AssetKey("postgresql_backup"))
        assert event.asset_materialization.partition == tid
        assert event.asset_materialization.metadata["session"].value == session
        point = instance.get_latest_materialization_event(AssetKey("restore_point"))
        assert point.asset_materialization.metadata["session"].value == session
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(AssetKey("restore_point"), "consistency")])[AssetCheckKey(AssetKey("restore_point"), "consistency")]
        assert check.event.dagster_event.event_specific_data.passed is True


def test_every_cli_session_of_a_tenant_is_a_materialization_with_its_check(settings, tenant_factory, cli, dagster_home):
    """The second session of a tenant used to hit the UNIQUE index on asset_check_executions."""
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    home = dagster_home
    sessions = []
    for _ in range(2):
        result = cli("backup", tid, "--json", env={"DAGSTER_HOME": str(home)})
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr.lower() and "UNIQUE" not in result.stderr, result.stderr
        assert "reported session" in result.stderr
        sessions.append(json.loads(result.stdout)["sessions"][0]["session"])
    key = AssetCheckKey(AssetKey("restore_point"), "consistency")
    with DagsterInstance.from_config(str(home)) as instance:
        points = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("restore_point"), asset_partitions=[tid]), limit=10).records
        assert sorted(r.asset_materialization.metadata["session"].value for r in points) == sorted(sessions)
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
        evaluations = [r.event.dagster_event.event_specific_data for r in history]
        assert len(evaluations) == 2
        assert sorted(e.metadata["session"].value for e in evaluations) == sorted(sessions)
        assert all(e.passed and e.partition == tid for e in evaluations)
