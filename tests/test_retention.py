"""Retention by plan, with restic itself as the oracle, on back-dated sessions."""
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from kryonix_dagster.engine import registry
from kryonix_dagster.engine.plans import PLANS, plan_for
from kryonix_dagster.engine.retention import check_retention
from kryonix_dagster.engine.tenant_repository import open_repository
from kryonix_dagster.retention import retention_evaluation

from . import observe
from .conftest import MAIN_DB

# The seed's plans, written out independently of the product's table.
SEED_FLAGS = {
    "basic": ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "3"],
    "pro": ["--keep-daily", "30", "--keep-weekly", "12", "--keep-monthly", "12", "--keep-yearly", "2"],
    "enterprise": ["--keep-daily", "60", "--keep-weekly", "24", "--keep-monthly", "24", "--keep-yearly", "5"],
}
COMMON = ["--keep-last", "1", "--keep-within", "48h"]


def restic_backup(cli, tid, when, filename, tags, data="x"):
    result = cli("restic", tid, "--", "backup", "--stdin", "--stdin-filename", filename, "--host", "kryonix",
                 "--time", when.strftime("%Y-%m-%d %H:%M:%S"), "--tag", ",".join(tags), "--json", stdin=data)
    assert result.returncode == 0, result.stderr


def fake_session(cli, tid, when, compliance=False, manifest=True):
    sid = f"{when:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    restic_backup(cli, tid, when, "database.pgdump",
                  ["kind=tier", f"session={sid}", "tier=postgresql", "part=dump", "type=incremental"], data=sid)
    if compliance:
        restic_backup(cli, tid, when, "records.csv",
                      ["kind=tier", f"session={sid}", "tier=compliance", "part=records", "type=incremental",
                       "retention=legal"], data="legal " + sid)
    if manifest:
        restic_backup(cli, tid, when, "manifest.json",
                      ["kind=manifest", f"session={sid}", "type=incremental", "status=complete", "consistent=yes"],
                      data=json.dumps({"session": sid}))
    return sid


def timeline(now):
    """Sessions over 2.5 years: dense recently, sparse further back (days ago, hour)."""
    days = [0, 0.5, 1, 1.5]  # within 48 h
    days += list(range(2, 10))  # daily
    days += [14, 21, 35]  # weekly
    days += [60, 95, 130, 300]  # monthly
    days += [550, 900]  # yearly
    return [now - timedelta(days=d, minutes=5) for d in days]


def snapshots(cli, tid):
    return json.loads(cli("restic", tid, "--", "snapshots", "--json").stdout)


def tag(snap, key):
    return next((t.split("=", 1)[1] for t in snap["tags"] if t.startswith(key + "=")), None)


def restic_keeps(cli, tid, flags):
    out = cli("restic", tid, "--", "forget", "--dry-run", "--json", "--group-by", "host", "--tag", "kind=manifest",
              *flags)
    assert out.returncode == 0, out.stderr
    return {tag(s, "session") for group in json.loads(out.stdout) for s in group["keep"]}


def our_forget(cli, tid, *args):
    out = cli("forget", tid, "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_plans_match_the_seed():
    for name, flags in SEED_FLAGS.items():
        assert PLANS[name].forget_args() == [*COMMON, *flags]
    plan, warning = plan_for("gold")
    assert plan.name == "basic" and "unknown plan 'gold'" in warning


@pytest.mark.slow(133)
def test_forget_keeps_what_restic_keeps_for_every_plan(settings, cli, tenant_factory):
    tid = tenant_factory()
    registry.add_tenant(settings, tid, "Retenção", "basic")
    open_repository(settings, tid, create=True)
    now = datetime.now(timezone.utc)
    when_list = timeline(now)
    with_compliance = [n % 5 == 0 for n in range(len(when_list))]
    with ThreadPoolExecutor(max_workers=3) as pool:  # restic opens the repository in ~0.5 s per call
        sessions = list(pool.map(lambda wc: fake_session(cli, tid, *wc), zip(when_list, with_compliance)))
    unfinished = fake_session(cli, tid, now - timedelta(days=3, hours=5), manifest=False)

    for plan in ("basic", "pro", "enterprise", "gold"):
        observe.psql(MAIN_DB, f"UPDATE tenants.clientes SET plano = '{plan}' WHERE id = '{tid}'")
        decision = our_forget(cli, tid, "--dry-run")
        ours = {s["session_id"] for s in decision["sessions"] if s["keep"]}
        assert ours == restic_keeps(cli, tid, [*COMMON, *SEED_FLAGS.get(plan, SEED_FLAGS["basic"])]), plan
        assert decision["plan"] == (plan if plan != "gold" else "basic")
        assert (decision["warning"] is not None) == (plan == "gold")
    assert len(snapshots(cli, tid)) == 2 * len(sessions) + sum(with_compliance) + 1  # a dry run changes nothing

    observe.psql(MAIN_DB, f"UPDATE tenants.clientes SET plano = 'basic' WHERE id = '{tid}'")
    before = retention_evaluation(tid, check_retention(settings, tid))
    assert before["passed"] is False and before["severity"].value == "ERROR"
    assert "kept beyond the basic plan" in before["description"]

    decision = our_forget(cli, tid)
    kept = restic_keeps(cli, tid, [*COMMON, *SEED_FLAGS["basic"]])
    assert {s["session_id"] for s in decision["sessions"] if s["keep"]} == kept
    remaining = snapshots(cli, tid)
    manifests = {tag(s, "session") for s in remaining if "kind=manifest" in s["tags"]}
    assert manifests == kept
    for snap in remaining:
        if "kind=tier" in snap["tags"]:
            session = tag(snap, "session")
            # a tier snapshot survives only with its session: the compliance tier too (no legal hold here;
            # no standing five-year keep, issue 22 item 9)
            assert session in kept, snap
    tiers_left = {(tag(s, "session"), tag(s, "tier")) for s in remaining if "kind=tier" in s["tags"]}
    assert all((session, "postgresql") in tiers_left for session in kept)  # kept restore points are whole
    assert unfinished not in {tag(s, "session") for s in remaining}
    assert sum(with_compliance) > sum(1 for s in remaining if tag(s, "tier") == "compliance") > 0
    assert decision["legal_hold_sessions"] == []

    after = retention_evaluation(tid, check_retention(settings, tid))
    assert after["passed"] is True, after["description"]
    assert not after["metadata"]["over_retained"].value
    assert cli("restic", tid, "--", "check").returncode == 0  # the pruned repository is sound
    audit = observe.psql(MAIN_DB, f"SELECT count(*) FROM tenants.backup_audit WHERE cliente_id = '{tid}' "
                                              "AND operation = 'forget' AND success")
    assert audit == "1"


def test_missing_days_are_under_retention(settings, cli, tenant_factory):
    tid = tenant_factory()
    registry.add_tenant(settings, tid, "Lacunas", "basic")
    open_repository(settings, tid, create=True)
    now = datetime.now(timezone.utc)
    for days in (1, 4, 5):
        fake_session(cli, tid, now - timedelta(days=days, hours=9))
    result = retention_evaluation(tid, check_retention(settings, tid))
    assert result["passed"] is False and result["severity"].value == "WARN"
    missing = result["metadata"]["missing_days"].value
    assert (now - timedelta(days=2, hours=9)).date().isoformat() in missing
    assert (now - timedelta(days=4, hours=9)).date().isoformat() not in missing
