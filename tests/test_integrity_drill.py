"""Integrity checks and restore drills, run as Dagster asset checks on real repositories."""
import json
import secrets
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterInstance, Definitions, define_asset_job

from kryonix_dagster.backup.assets import tenant_backup_session
from kryonix_dagster.drills import restore_drill_check
from kryonix_dagster.integrity import integrity_check
from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.naming import scratch_names_for
from kryonix_dagster.partitions import KRYONIX_TENANTS
from kryonix_dagster.resources import resources_from_env

from . import observe
from .conftest import MAIN_DB


def run_check(check, tid, run_config=None):
    """Run one partitioned check for one tenant (check-only jobs take the partition from the run's tag)."""
    job = define_asset_job("one_check", selection=AssetSelection.checks(check))
    defs = Definitions(assets=[tenant_backup_session], asset_checks=[check], jobs=[job], resources=resources_from_env())
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(KRYONIX_TENANTS, [tid])
        result = defs.resolve_job_def("one_check").execute_in_process(
            instance=instance, tags={"dagster/partition": tid}, run_config=run_config or {}, raise_on_error=False)
        evaluation = next(e.dagster_event.event_specific_data for e in instance.all_logs(result.run_id)
                          if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION")
        assert evaluation.asset_check_key == AssetCheckKey(AssetKey("restore_point"), next(iter(check.check_specs)).name)
        assert evaluation.partition == tid
        return evaluation


def pack_files(settings, tid) -> list[Path]:
    root = Path(settings.repo.removeprefix("file://")) / f"cliente_{tid}" / "data"
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_a_flipped_byte_fails_the_integrity_check_naming_the_tenant(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.1)
    assert cli("backup", tid).returncode == 0
    full = {"ops": {"restore_point_integrity": {"config": {"read_data_subset": "1/1"}}}}
    good = run_check(integrity_check, tid, full)
    assert good.passed and good.metadata["read_data_subset"].value == "1/1"

    biggest = max(pack_files(settings, tid), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.chmod(0o644)
    biggest.write_bytes(bytes(data))
    bad = run_check(integrity_check, tid, full)
    assert not bad.passed and bad.severity.value == "ERROR"
    assert f"tenant {tid}" in bad.description and "restic check" in bad.description
    assert observe.psql(MAIN_DB, f"SELECT string_agg(success::text, ',' ORDER BY id) FROM tenants.backup_audit "
                                             f"WHERE cliente_id = '{tid}' AND operation = 'check'") == "true,false"


@pytest.mark.slow(86)
def test_the_drill_passes_on_a_good_session_and_fails_on_a_tampered_one(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.1)
    backup = cli("backup", tid, "--json")
    assert backup.returncode == 0
    session = json.loads(backup.stdout)["sessions"][0]["session"]
    scratch = scratch_names_for(settings, tid)

    good = run_check(restore_drill_check, tid)
    assert good.passed, good.description
    compared = good.metadata["compared"].value
    assert set(compared) == {"postgresql", "redis", "object_storage", "rabbitmq", "appdata"}
    assert set(compared.values()) == {"ok"}
    # the scratch tenant is gone from every service and from the registry
    assert observe.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE '{scratch.database}%'") == "0"
    assert observe.psql("postgres", f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{scratch.role_prefix}%'") == "0"
    assert observe.psql(MAIN_DB, "SELECT count(*) FROM tenants.clientes WHERE id LIKE 'drill%'") == "0"
    assert observe.psql(MAIN_DB, f"SELECT count(*) FROM tenants.backup_leases WHERE cliente_id = '{scratch.tenant_id}'") == "0"
    client = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    assert observe.bucket_state(client, scratch.bucket_prefix) == {}
    assert observe.redis_state(settings.redis_url, scratch.redis_prefix) == {}
    assert observe.rabbit_api("/vhosts") and scratch.vhost not in {v["name"] for v in observe.rabbit_api("/vhosts")}
    assert not scratch.app_data_dir.exists()

    # Tamper: a newer manifest for the session whose row hashes no longer match the dump.
    manifest = json.loads(cli("restic", tid, "--", "dump", "latest", "/manifest.json", "--tag", "kind=manifest").stdout)
    table = "crm.contatos"
    count, digest = manifest["tiers"]["postgresql"]["checksums"]["tables"][table]
    manifest["tiers"]["postgresql"]["checksums"]["tables"][table] = [count, str(int(digest) + 1)]
    forged = f"{session[:-6]}{secrets.token_hex(3)}"
    manifest["session_id"] = forged
    result = cli("restic", tid, "--", "backup", "--stdin", "--stdin-filename", "manifest.json", "--host", "kryonix",
                 "--tag", f"kind=manifest,session={forged},type=full,status=complete,consistent=yes",
                 stdin=json.dumps(manifest))
    assert result.returncode == 0, result.stderr
    bad = run_check(restore_drill_check, tid)
    assert not bad.passed and "does not match the backup" in bad.description and table in bad.description
    assert observe.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE '{scratch.database}%'") == "0"
