"""LGPD erasure on real services: erase a person, restore a restore point taken before the
erasure (in place, --into, a drill): the person never comes back; the value is never printed,
logged or stored. Tests run in file order on one module world (one backup)."""
from __future__ import annotations

import json

from kryonix_dagster.engine import pg
from kryonix_dagster.engine.drill import run_drill
from kryonix_dagster.engine.lgpd import ledger

from .lgpd_erasure_world import EMAIL, ERASED, KEPT, PHONE_KEPT, absent, person_counts, world  # noqa: F401


def test_erase_removes_the_person_everywhere_and_certifies(world, cli):
    before_kept = person_counts(world.settings, world.tenant, KEPT)
    before = person_counts(world.settings, world.tenant, ERASED)
    assert all(before[k] for k in before), before  # the person is present in every service
    result = world.run(cli, "lgpd", "erase", world.tenant, "--subject", f"email={EMAIL}", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    cert = json.loads(result.stdout)
    assert cert["persons"] == 1
    erased = cert["erased"]
    assert erased["postgresql"]["whatsapp.mensagens"] == before["whatsapp.mensagens"]
    assert erased["postgresql"]["crm.contatos"] == 1
    assert "financeiro.faturas" not in erased["postgresql"]  # kept: legal obligation
    assert (erased["redis"], erased["appdata"]) == (1, 1)
    assert sum(erased["object_storage"].values()) == 1
    assert cert["restore_points_that_may_hold_the_person"] == [world.session]
    after = person_counts(world.settings, world.tenant, ERASED)
    assert absent(after), after
    assert after["financeiro.faturas(kept)"] == before["financeiro.faturas(kept)"]
    assert person_counts(world.settings, world.tenant, KEPT) == before_kept
    entries = ledger.entries(world.settings, world.tenant)
    assert len(entries) == 1 and entries[0].subject_kind == "email" and len(entries[0].key_hashes) == 1


def test_dry_run_changes_nothing_and_writes_no_ledger_entry(world, cli):
    before = person_counts(world.settings, world.tenant, KEPT)
    result = world.run(cli, "lgpd", "erase", world.tenant, "--subject", f"telefone={PHONE_KEPT}", "--dry-run",
                       "--json")
    assert result.returncode == 0, result.stderr
    cert = json.loads(result.stdout)
    assert cert["dry_run"] and cert["persons"] == 1 and cert["erased"]["total"] > 0
    assert person_counts(world.settings, world.tenant, KEPT) == before
    assert len(ledger.entries(world.settings, world.tenant)) == 1


def test_bad_subject_is_refused_without_echoing_it(world, cli):
    result = world.run(cli, "lgpd", "erase", world.tenant, "--subject", f"cpf={EMAIL}", "--yes")
    assert result.returncode == 2 and "unknown subject kind" in result.stderr
    no_yes = world.run(cli, "lgpd", "erase", world.tenant, "--subject", f"email={EMAIL}")
    assert no_yes.returncode == 2 and "--yes" in no_yes.stderr


def test_restore_in_place_of_an_older_point_reapplies_the_ledger(world, cli):
    kept = person_counts(world.settings, world.tenant, KEPT)
    result = world.run(cli, "restore", world.tenant, "--snapshot", world.session, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["lgpd"]["subjects_reerased"] == 1
    assert absent(person_counts(world.settings, world.tenant, ERASED))
    assert person_counts(world.settings, world.tenant, KEPT) == kept


def test_restore_into_another_tenant_applies_the_source_ledger(world, cli):
    result = world.run(cli, "restore", world.tenant, "--snapshot", world.session, "--into", world.into, "--yes")
    assert result.returncode == 0, result.stderr
    assert "re-erased 1 subject(s)" in result.stdout
    assert absent(person_counts(world.settings, world.into, ERASED))
    assert person_counts(world.settings, world.into, KEPT) == person_counts(world.settings, world.tenant, KEPT)


def test_drill_of_the_older_point_passes_with_the_person_left_out(world):
    result = run_drill(world.settings, world.tenant, world.session)
    assert result.passed, result.error


def test_the_value_is_never_in_outputs_audit_or_ledger(world):
    outputs = "\n".join(world.outputs)
    assert outputs.strip()
    assert EMAIL not in outputs and PHONE_KEPT not in outputs
    with pg.connection(world.settings.pg_dsn, world.settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(string_agg(row_to_json(a)::text, ' '), '') FROM tenants.backup_audit a "
                    "WHERE cliente_id IN (%s, %s)", (world.tenant, world.into))
        audit = cur.fetchone()[0]
        cur.execute("SELECT coalesce(string_agg(row_to_json(l)::text, ' '), '') FROM tenants.lgpd_ledger l")
        stored = cur.fetchone()[0]
    assert "lgpd_erase" in audit
    assert EMAIL not in audit and PHONE_KEPT not in audit
    assert EMAIL not in stored and "contato7" not in stored
