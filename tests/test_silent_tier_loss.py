"""A tier that comes out empty after the previous restore point had data in it (a wiped Redis
namespace) is red: the session says so, the restore point carries it in `snapshots`, its
Dagster check fails on the tenant's partition, and `restore` of `latest` warns and names the
newest restore point that still has the data, from which the keys come back. Judged through
redis-py and restic's own listing, not through the product's audit rows."""
from __future__ import annotations

import json

import redis
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from kryonix_dagster.demo import seed_tenant

from . import observe


def namespace(settings, tid: str) -> dict[bytes, tuple]:
    return observe.redis_state(settings.redis_url, f"cliente:{tid}:")


def test_a_wiped_redis_namespace_is_red_and_restore_names_the_point_that_has_it(settings, tenant_factory, cli,
                                                                                dagster_home):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    before = namespace(settings, tid)
    assert len(before) > 10
    env = {"DAGSTER_HOME": str(dagster_home)}
    first = cli("backup", tid, "--json", env=env)
    assert first.returncode == 0, first.stderr
    good = json.loads(first.stdout)["sessions"][0]
    assert good["emptied"] == {}

    redis.Redis.from_url(settings.redis_url).delete(*before)  # the silent loss
    second = cli("backup", tid, "--json", env=env)
    assert second.returncode == 0, second.stderr
    bad = json.loads(second.stdout)["sessions"][0]
    assert bad["emptied"] == {"redis": good["tiers"]["redis"]["items"]}
    assert f"tier redis: empty, the previous restore point had {good['tiers']['redis']['items']} item(s)" in second.stderr

    points = json.loads(cli("snapshots", tid, "--json").stdout)
    assert [(p["session"], p["emptied"]) for p in points] == [(bad["session"], ["redis"]), (good["session"], [])]
    # each point's tiers, from its manifest: the loss is visible there, not only in the backup's output
    assert points[1]["tiers"]["redis"]["items"] == good["tiers"]["redis"]["items"] > 0
    assert points[0]["tiers"]["redis"]["items"] == 0 and points[0]["tiers"]["redis"]["status"] in ("ok", "empty")
    assert points[0]["tiers"]["postgresql"]["bytes"] > 0 and points[0]["tiers"]["postgresql"]["status"] == "ok"
    assert any("tier redis: empty" in w for w in points[0]["warnings"])
    table = cli("snapshots", tid).stdout
    assert "EMPTIED" in table and "redis" in table.splitlines()[2]

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        history = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey("restore_point"), "tier_data_kept"), limit=10)
        evaluations = {e.metadata["session"].value: e for e in (r.event.dagster_event.event_specific_data
                                                                 for r in history)}
    assert evaluations[good["session"]].passed and evaluations[good["session"]].partition == tid
    failed = evaluations[bad["session"]]
    assert not failed.passed and failed.partition == tid and failed.metadata["emptied"].value == bad["emptied"]

    # restoring latest says what it is about to do and where the data still is
    warning = (f"tier redis of the latest restore point {bad['session']} is empty although the restore point "
               f"before it had items")
    where = f"`restore {tid} --snapshot {good['session']} --services redis`"
    asked = cli("restore", tid, "--services", "redis", "--yes")  # that tier explicitly: refused, pointed on
    assert asked.returncode == 2 and warning in asked.stderr and where in asked.stderr, asked.stderr
    latest = cli("restore", tid, "--yes", "--json")
    assert latest.returncode == 0, latest.stderr
    assert warning in latest.stderr and where in latest.stderr
    assert any(warning in w and where in w for w in json.loads(latest.stdout)["warnings"])
    assert namespace(settings, tid) == {}  # nothing came back from the point that lost it
    back = cli("restore", tid, "--snapshot", good["session"], "--services", "redis", "--yes")
    assert back.returncode == 0, back.stderr
    assert namespace(settings, tid) == before
