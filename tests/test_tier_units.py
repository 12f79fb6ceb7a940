"""A tier is one unit: its module holds backup, restore, drill comparison and its SPEC; the
session, the drill and the Dagster layer are built from the list of tiers. A small extra tier
(one text file) registered in a test-only list shows that one module plus one line is enough."""
import dataclasses
import hashlib
import importlib

from dagster import AssetCheckKey, AssetKey, Definitions

from kryonix_dagster.backup.assets import build_backup_session, tenant_backup_session
from kryonix_dagster.fleet import TENANT_CHECKS
from kryonix_dagster.engine import registry
from kryonix_dagster.engine.drill import run_drill
from kryonix_dagster.engine.manifest import STATUS_OK, TierResult, find_manifest, tier_tags
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.session import run_backup
from kryonix_dagster.engine.tenant_repository import open_repository
from kryonix_dagster.engine.tiers import TIERS, tier
from kryonix_dagster.engine.tiers.base import RestoreOutcome, TierSpec, verified_by_restore
from kryonix_dagster.backup.metadata import TIER_ASSETS
from kryonix_dagster.resources import resources_from_env

# --- the whole extra tier: what a new tier module would hold --------------------------------
NOTES = "notes"


def notes_file(names):
    return names.app_data_dir / "NOTES.txt"


def notes_backup(ctx) -> TierResult:
    data = notes_file(ctx.names).read_bytes()
    summary = ctx.repo.backup_bytes(data, "NOTES.txt", tier_tags(ctx.session_id, NOTES, "text", ctx.backup_type),
                                    ctx.session_time)
    return TierResult(NOTES, STATUS_OK, snapshots={"text": summary.snapshot_id}, items=1,
                      checksums={"sha256": hashlib.sha256(data).hexdigest()})


def notes_restore(ctx) -> RestoreOutcome:
    target = notes_file(ctx.target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(ctx.repo.dump_bytes(ctx.result.snapshots["text"], "/NOTES.txt"))
    return RestoreOutcome(NOTES, restored=1)


COMPARED: list[str] = []


def notes_drill(check) -> str:
    COMPARED.append(check.scratch.tenant_id)
    got = hashlib.sha256(notes_file(check.scratch).read_bytes()).hexdigest()
    return "ok" if got == check.recorded.checksums["sha256"] else "NOTES.txt differs"


NOTES_SPEC = TierSpec(NOTES, "application", False, "appdata", notes_backup, notes_restore,
                      kinds=("restic",), description="The tenant's NOTES.txt.", drill=notes_drill)
# ---------------------------------------------------------------------------------------------
WITH_NOTES = (*TIERS, NOTES_SPEC)  # the one line a new tier adds to the list


def test_each_listed_tier_is_its_own_modules_spec():
    for spec in TIERS:
        module = importlib.import_module(spec.backup.__module__)
        assert module.SPEC is spec and spec.restore.__module__ == module.__name__
        assert spec.drill is verified_by_restore or spec.drill.__module__ == module.__name__
        assert spec.description and "restic" in spec.kinds
    assert TIER_ASSETS == {t.name: t.asset_key for t in TIERS}
    assert tier("redis") is TIERS[1]


def test_the_default_graph_is_built_from_the_tiers():
    assert {k.to_user_string() for k in tenant_backup_session.keys} == {t.asset_key for t in TIERS} | {"restore_point"}
    deps = {k.to_user_string(): {d.to_user_string() for d in v} for k, v in tenant_backup_session.asset_deps.items()}
    assert all(deps[t.asset_key] == set() for t in TIERS)  # siblings: none is derived from another
    assert deps["restore_point"] == {t.asset_key for t in TIERS}


def test_an_extra_tier_appears_as_an_asset_with_the_checks():
    session = build_backup_session(WITH_NOTES, name="session_with_notes")
    defs = Definitions(assets=[session], asset_checks=TENANT_CHECKS, resources=resources_from_env())
    graph = defs.resolve_asset_graph()
    notes = graph.get(AssetKey("notes_backup"))
    assert notes.kinds == {"restic"}
    assert notes.parent_keys == set()  # a sibling of the other tiers, read in the "application" phase
    assert notes.description == "The tenant's NOTES.txt. (read in phase 'application' of the session)"
    assert AssetKey("notes_backup") in graph.get(AssetKey("restore_point")).parent_keys
    checks = {k.name for k in graph.asset_check_keys if k.asset_key == AssetKey("restore_point")}
    assert checks == {"consistency", "tier_data_kept", "retention", "freshness", "integrity", "restore_drill"}
    assert AssetCheckKey(AssetKey("restore_point"), "consistency") in session.check_keys


def test_an_extra_tier_is_backed_up_restored_and_judged_by_its_own_drill_comparison(settings, tenant_factory):
    tid = tenant_factory()
    registry.add_tenant(settings, tid, "Notes only", "basic")
    notes_file(names_for(settings, tid)).parent.mkdir(parents=True)
    notes_file(names_for(settings, tid)).write_text("call the customer back\n")
    session = run_backup(settings, tid, "full", tiers=(NOTES_SPEC,))
    assert session.restore_point and session.tiers[NOTES].status == STATUS_OK
    assert set(find_manifest(open_repository(settings, tid), "latest").tiers) == {NOTES}

    COMPARED.clear()
    good = run_drill(settings, tid, tiers=(NOTES_SPEC,))
    assert good.passed and good.compared == {NOTES: "ok"} and COMPARED == [good.scratch_id], good.error

    strict = dataclasses.replace(NOTES_SPEC, drill=lambda check: "1 line differs")
    bad = run_drill(settings, tid, tiers=(strict,))
    assert not bad.passed and bad.error == "notes: 1 line differs"
