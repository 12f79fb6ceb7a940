"""The LGPD rules file: the packaged default loads; bad files are refused naming file and field."""
from __future__ import annotations

import json

import pytest

from kryonix_dagster.engine.errors import BadInput, OperationFailed
from kryonix_dagster.engine.lgpd.rules import RULES_FILE, fill, load_rules, parse_subject


def test_the_packaged_rules_are_the_seeds_periods():
    rules = load_rules(RULES_FILE)
    periods = {rule.table: (rule.period, rule.action) for rule in rules.retention}
    assert periods == {
        "crm.contatos": ("3 years", "anonymise"),
        "lgpd.log_processamento": ("5 years", "delete"),
        "analytics.eventos": ("2 years", "delete"),
    }
    assert rules.locations("email").redis == ["contato:{contato_id}"]


def test_the_environment_names_another_rules_file(tmp_path, monkeypatch):
    doc = json.loads(RULES_FILE.read_text())
    doc["retention"] = doc["retention"][1:]
    other = tmp_path / "rules.json"
    other.write_text(json.dumps(doc))
    monkeypatch.setenv("KRYONIX_LGPD_RULES", str(other))
    assert [rule.name for rule in load_rules().retention] == ["logs_processamento", "eventos_analytics"]


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["retention"][0].update(period="3 yrs"), "retention.0.period"),
    (lambda d: d["retention"][1].update(table="log_processamento"), "retention.1.table"),
    (lambda d: d["retention"][0].update(set={}), "retention.0"),
    (lambda d: d["person"]["contato_id"]["database"][6].update(reason=""), "person.contato_id.database.6"),
    (lambda d: d["person"]["contato_id"]["redis"].append("x:{pessoa}"), "(top level)"),
    (lambda d: d.update(extra=1), "extra"),
])
def test_a_bad_rules_file_is_refused_naming_file_and_field(tmp_path, mutate, field):
    doc = json.loads(RULES_FILE.read_text())
    mutate(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(OperationFailed) as err:
        load_rules(bad)
    assert str(bad) in str(err.value) and f"field {field}" in str(err.value)


def test_subjects_parse_without_echoing_the_value():
    rules = load_rules(RULES_FILE)
    assert parse_subject("telefone=+5511999", rules) == ("telefone", "+5511999")
    with pytest.raises(BadInput) as err:
        parse_subject("cpf=123.456.789-00", rules)
    assert "123.456" not in str(err.value) and "email" in str(err.value)
    with pytest.raises(BadInput):
        parse_subject("email=", rules)
    assert fill("contatos/{contato_id}/", "contato_id", 7) == "contatos/7/"
