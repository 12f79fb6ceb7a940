"""The Dagster layer's shape: domains, the one seam to the engine, the one adapter to Dagster's
private API, and the demo's checks landing in the instance."""
import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import dagster
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from kryonix_dagster import dagster_private
from kryonix_dagster.dagster_private import ConcurrencySlots
from kryonix_dagster.demo import seed_tenant

from .conftest import ROOT

PACKAGE = ROOT / "kryonix_dagster"
# Engine operations the Dagster layer may call only through BackupEngineResource's verbs.
ENGINE_OPERATIONS = {"run_backup", "run_forget", "check_retention", "run_verify", "run_drill", "tenant_statuses",
                     "fleet_status", "list_tenants", "list_tenant_ids", "tenant_compliance", "fleet_compliance"}


def dagster_layer_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py")
            if "engine" not in p.relative_to(PACKAGE).parts
            and p.name != "cli.py" and not p.name.startswith("cli_")]  # the CLI (cli_<domain>.py too) is on the engine


def test_the_dagster_layer_reaches_engine_operations_only_through_the_resource():
    offenders = []
    for path in dagster_layer_modules():
        rel = str(path.relative_to(PACKAGE))
        if rel.startswith("resources/"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and "engine" in (node.module or ""):
                offenders += [f"{rel}:{node.lineno} imports {a.name}" for a in node.names if a.name in ENGINE_OPERATIONS]
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ENGINE_OPERATIONS and not (
                        isinstance(node.func.value, ast.Name) and node.func.value.id == "engine")):
                # e.g. `session.run_backup(...)` through a module; `engine.<verb>` is the resource
                offenders.append(f"{rel}:{node.lineno} calls {node.func.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "settings":
                offenders.append(f"{rel}:{node.lineno} .settings()")
    assert not offenders, offenders


def test_private_dagster_imports_live_in_one_adapter():
    users = sorted(str(p.relative_to(PACKAGE)) for p in dagster_layer_modules()
                   if "dagster._" in p.read_text() and p.name != "dagster_private.py")
    assert users == []
    # public in the pinned version (re-exported by dagster/__init__.py): no adapter needed
    assert "AssetCheckEvaluation as AssetCheckEvaluation" in Path(dagster.__file__).read_text()


def test_the_adapter_matches_the_pinned_dagster(tmp_path, monkeypatch):
    """Fails loudly when an upgrade changes the concurrency storage the adapter drives."""
    assert dagster.__version__ == dagster_private.PINNED_DAGSTER, (
        f"dagster {dagster.__version__} is not the pinned {dagster_private.PINNED_DAGSTER}: "
        "re-check kryonix_dagster/dagster_private.py against it, then update PINNED_DAGSTER")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        for name in dagster_private.STORAGE_METHODS:
            assert callable(getattr(storage, name, None)), f"EventLogStorage.{name} is gone"
        params = list(inspect.signature(storage.claim_concurrency_slot).parameters)
        assert params[:3] == ["concurrency_key", "run_id", "step_key"], params
        slots = ConcurrencySlots.of(instance)
        assert slots.supported
        assert not slots.limited("kryonix_test_pool")  # no limit, no default: does not throttle
        slots.set_limit("kryonix_test_pool", 1)
        assert slots.limited("kryonix_test_pool")
        assert slots.claim("kryonix_test_pool", "run-a", "step-a")
        assert not slots.claim("kryonix_test_pool", "run-b", "step-b")  # the one slot is taken
        slots.free("run-a", "step-a")
        assert slots.claim("kryonix_test_pool", "run-b", "step-b")
        slots.free("run-b", "step-b")


def test_the_demo_records_every_check_of_restore_point(settings, tenant_factory, cli, dagster_home):
    """make demo's last step: each backed-up tenant gets a result for every check in the instance."""
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    home = dagster_home
    env = {"DAGSTER_HOME": str(home)}
    assert cli("backup", tid, env=env).returncode == 0
    other = json.loads(cli("status", "--json").stdout)
    backed_up = [t["id"] for t in other["tenants"] if t["status"] == "ativo" and t["last_session"]]
    code = ("import sys\nfrom dagster import DagsterInstance\n"
            "from kryonix_dagster.fleet.tenant_checks import check_tenants_once\n"
            "with DagsterInstance.get() as instance:\n"
            f"    print(check_tenants_once(instance, [{tid!r}]))\n")
    # the module's main() runs every backed-up tenant of the registry; here only this test's tenant
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, **env},
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert tid in backed_up
    with DagsterInstance.from_config(str(home)) as instance:
        for name in ("consistency", "tier_data_kept", "retention", "freshness", "integrity", "restore_drill"):
            key = AssetCheckKey(AssetKey("restore_point"), name)
            records = instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
            evaluations = [r.event.dagster_event.event_specific_data for r in records if r.event]
            assert [e.partition for e in evaluations] == [tid], name
            assert evaluations[0].passed, (name, evaluations[0].description)
