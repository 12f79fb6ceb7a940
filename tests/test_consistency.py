"""Consistency rules: pure evaluation, and a broken reference caught by a real session."""
import json

import pytest

from dagster import AssetCheckKey, DagsterInstance, materialize

from kryonix_dagster.backup.assets import tenant_backup_session
from kryonix_dagster.engine.consistency import evaluate, load_rules
from kryonix_dagster.engine.errors import OperationFailed
from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.partitions import KRYONIX_TENANTS
from kryonix_dagster.resources import resources_from_env

from . import observe

QUERY_FILES = "SELECT bucket || '/' || object_key FROM portal.arquivos"
QUERY_IDS = "SELECT id::text FROM crm.contatos"


def captured(**overrides):
    base = {
        "postgresql": {QUERY_FILES: ["media/a.png", "documentos/b.pdf"], QUERY_IDS: ["1", "2", "3"]},
        "object_storage": {"media/a.png", "documentos/b.pdf"},
        "redis": ["contato:1", "contato:3", "sessao:9", "ranking"],
        "rabbitmq": ["mobile.sync", "whatsapp.outbound", "notificacoes", "dead.letters"],
        "appdata": {"files": [], "root": None},
    }
    base.update(overrides)
    return base


def test_rules_are_declared_data():
    rules = load_rules()
    assert [r.name for r in rules.rules] == ["database_storage", "cache_database", "messaging_application",
                                              "file_references"]
    assert rules.threshold_percent == 95
    assert [r.name for r in rules.rules if r.orphans_fail] == ["database_storage"]  # as the seed counts them


def test_a_broken_rules_file_is_named_with_its_field(tmp_path):
    bad = tmp_path / "rules.json"
    bad.write_text(json.dumps({"rules": [{"name": "x", "references": {"tier": "postgres"},
                                          "targets": {"tier": "redis"}}]}))
    with pytest.raises(OperationFailed) as caught:
        load_rules(bad)
    message = str(caught.value)
    assert str(bad) in message and "rules.0.references.tier" in message and "\n" not in message
    bad.write_text(json.dumps({"rules": [{"name": "x", "references": {"tier": "redis", "key_pattern": "^a$"},
                                          "targets": {"tier": "redis"}}]}))
    with pytest.raises(OperationFailed, match="capture group"):
        load_rules(bad)


def test_one_failing_rule_of_four_is_inconsistent_as_in_the_seed(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "app.json").write_text(json.dumps({"queues": ["mobile.sync"], "files": []}))
    clean = captured(appdata={"files": ["config/app.json"], "root": str(tmp_path)})
    assert evaluate(clean).score == 100.0 and evaluate(clean).consistent
    broken = dict(clean, redis=["contato:1", "contato:99"])  # half the cached contacts dangle
    report = evaluate(broken)
    assert report.score == 75.0 and not report.consistent


def test_evaluation_names_missing_and_orphans(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "app.json").write_text(json.dumps({"queues": ["mobile.sync", "faltando"],
                                                              "files": ["media/logo.png"]}))
    report = evaluate(captured(
        object_storage={"media/a.png", "sobra/c.txt"},
        redis=["contato:1", "contato:99"],
        appdata={"files": ["media/logo.png", "config/app.json"], "root": str(tmp_path)},
    ))
    rules = {r.name: r for r in report.rules}
    assert rules["database_storage"].missing == ["documentos/b.pdf"] and rules["database_storage"].orphans == ["sobra/c.txt"]
    assert rules["database_storage"].score == 0.0  # one missing and one orphan over two references
    assert rules["cache_database"].missing == ["99"] and rules["cache_database"].score == 50.0
    assert rules["messaging_application"].missing == ["faltando"]
    assert rules["file_references"].passed
    assert report.score == 25.0 and not report.consistent  # one rule of four passed
    assert any("documentos/b.pdf" in p for p in report.problems)


def test_unavailable_tiers_are_not_evaluated_and_a_clean_capture_is_consistent():
    report = evaluate({"postgresql": {QUERY_FILES: "relation does not exist", QUERY_IDS: ["1", "3"]},
                       "redis": ["contato:1", "contato:3"]})
    rules = {r.name: r for r in report.rules}
    assert not rules["database_storage"].evaluated and "query failed" in rules["database_storage"].reason
    assert rules["cache_database"].passed and report.score == 100.0 and report.consistent


def test_a_deleted_object_fails_the_check_naming_it(settings, tenant_factory, cli):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.1)
    key = "contratos/2026/contrato assinado.pdf"
    s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    s3.delete_object(Bucket=f"cliente-{tid}-documentos", Key=key)

    result = cli("backup", tid, "--json")
    doc = json.loads(result.stdout)["sessions"][0]
    assert doc["status"] == "complete"
    assert any(f"documentos/{key}" in p for p in doc["consistency"]["problems"])
    assert f"documentos/{key}" in result.stderr  # the operator sees it too

    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(KRYONIX_TENANTS, [tid])
        run = materialize([tenant_backup_session], partition_key=tid, instance=instance,
                          resources=resources_from_env(), raise_on_error=False)
        evaluation = next(e.dagster_event.event_specific_data for e in instance.all_logs(run.run_id)
                          if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION")
        assert evaluation.asset_check_key == AssetCheckKey(asset_key=evaluation.asset_key, name="consistency")
        assert evaluation.passed is False
        assert f"documentos/{key}" in evaluation.metadata["missing"].value["database_storage"]


def test_a_missing_queue_makes_the_session_inconsistent(settings, tenant_factory, cli):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    names = names_for(settings, tid)
    # Everything the application config expects is gone: two rules fail outright.
    import requests
    requests.delete(f"http://127.0.0.1:15672/api/vhosts/{names.vhost.replace('/', '%2F')}", auth=("guest", "guest"))
    s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    for suffix in ("media", "documentos"):
        bucket = f"cliente-{tid}-{suffix}"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
    result = cli("backup", tid, "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)["sessions"][0]
    assert doc["status"] == "complete" and doc["restore_point"] is True
    assert doc["consistency"]["consistent"] is False and doc["consistency"]["score"] < 95
    assert "inconsistent" in doc["error"]
    listed = json.loads(cli("snapshots", tid, "--json").stdout)
    assert listed[0]["consistent"] == "no"


def test_the_5_percent_boundary_of_a_rule_and_of_the_dagster_check():
    """A rule passes with at most 5% of its references missing (orphans counting where the rule
    says so), and fails at 6%; the Dagster check fails on any missing reference, as a WARN while
    the session is consistent and as an ERROR once it is not."""
    from datetime import datetime, timezone

    from dagster import AssetCheckSeverity

    from kryonix_dagster.backup.metadata import consistency_evaluation
    from kryonix_dagster.engine.session import SessionResult

    ids = [str(n) for n in range(1, 101)]
    files = [f"media/{n}.png" for n in ids]

    def judge(contacts_gone: int, objects_gone: int, orphans: int):
        report = evaluate(captured(  # 100 references per rule; no application folder: 2 rules evaluated
            postgresql={QUERY_FILES: files, QUERY_IDS: ids[contacts_gone:]},
            redis=[f"contato:{n}" for n in ids],
            object_storage=set(files[objects_gone:]) | {f"sobra/{n}.txt" for n in range(orphans)}))
        return report, {r.name: r for r in report.rules if r.evaluated}

    report, rules = judge(5, 4, 1)  # 5 of 100 missing; 4 missing + 1 orphan of 100
    assert set(rules) == {"cache_database", "database_storage"}
    assert rules["cache_database"].score == 95.0 and rules["cache_database"].passed
    assert rules["database_storage"].score == 95.0 and rules["database_storage"].passed
    assert report.score == 100.0 and report.consistent
    at_boundary = consistency_evaluation(SessionResult("t1", "s1", "full", datetime.now(timezone.utc),
                                                       consistency=report.to_json()))
    assert at_boundary["passed"] is False and at_boundary["severity"] == AssetCheckSeverity.WARN

    report, rules = judge(6, 0, 0)  # 6% missing: the rule fails, and with it half the score
    assert rules["cache_database"].score == 94.0 and not rules["cache_database"].passed
    assert rules["database_storage"].passed and report.score == 50.0 and not report.consistent
    below = consistency_evaluation(SessionResult("t1", "s1", "full", datetime.now(timezone.utc),
                                                 consistency=report.to_json()))
    assert below["passed"] is False and below["severity"] == AssetCheckSeverity.ERROR

    report, rules = judge(0, 5, 1)  # the orphan is the one too many for database_storage
    assert rules["database_storage"].score == 94.0 and not rules["database_storage"].passed
    assert not report.consistent
