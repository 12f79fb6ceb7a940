"""LGPD erasure on real services: erase a person, restore a restore point taken before the
erasure (in place, --into, a drill): the person never comes back; the value is never printed,
logged or stored. One world per pytest process (one backup); a step a test needs (the erasure, the
restore --into) is done by whichever test needs it first, so xdist may split the file anywhere."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from kryonix_dagster.engine import keys, pg, registry
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.repository import restic_location
from kryonix_dagster.engine.session import run_backup
from kryonix_dagster.engine.tiers import TIERS
from kryonix_dagster.engine.verify import run_verify
from kryonix_dagster.engine.drill import run_drill
from kryonix_dagster.engine.errors import BadInput
from kryonix_dagster.engine.lgpd import ledger
from kryonix_dagster.engine.lgpd.offboard import run_offboard
from kryonix_dagster.engine.lgpd.rules import load_rules, parse_subject

from . import faults, lgpd_erasure_world, observe
from .lgpd_erasure_world import EMAIL, ERASED, KEPT, PHONE_KEPT, absent, person_counts

from .recovery_checks import TableStepper, kill9_running, poll, restic_snapshots, sessions_in

world = lgpd_erasure_world.world  # the module's one backed-up tenant (a fixture)
rewrite_world = lgpd_erasure_world.rewrite_world  # a tenant of the rewrite test's own
SERVICES = "postgresql,redis,object_storage,appdata"  # where the rules say a person lives (RabbitMQ: nowhere)
OFFBOARD_TIERS = ("postgresql", "redis", "appdata")  # no compliance tier: no legal hold


def test_erase_removes_the_person_everywhere_and_certifies(world, cli):
    cert, before, before_kept = world.erased(cli)
    assert all(before[k] for k in before), before  # the person was present in every service
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
    assert entries[0].subject_kind == "email" and len(entries[0].key_hashes) == 1
    assert entries[0].reference == cert["reference"]


def test_dry_run_changes_nothing_and_writes_no_ledger_entry(world, cli):
    world.erased(cli)
    before, entries = person_counts(world.settings, world.tenant, KEPT), len(ledger.entries(world.settings, world.tenant))
    result = world.run(cli, "lgpd", "erase", world.tenant, "--subject", f"telefone={PHONE_KEPT}", "--dry-run",
                       "--json")
    assert result.returncode == 0, result.stderr
    cert = json.loads(result.stdout)
    assert cert["dry_run"] and cert["persons"] == 1 and cert["erased"]["total"] > 0
    assert person_counts(world.settings, world.tenant, KEPT) == before
    assert len(ledger.entries(world.settings, world.tenant)) == entries
    # a value is data, never a pattern: `*` is not a contact id, refused before anything runs
    from kryonix_dagster.engine.lgpd.erase import run_erase
    with pytest.raises(BadInput, match="contact id"):
        run_erase(world.settings, world.tenant, "contato_id=*", dry_run=True)


def test_erasure_ledger_applied_check_fails_when_the_person_comes_back(world, cli):
    world.erased(cli)
    from dagster import build_resources

    from kryonix_dagster.resources import resources_from_env

    with build_resources({"engine": resources_from_env()["engine"]}) as built:
        check_ledger(built.engine, world)


def check_ledger(engine, world) -> None:
    from kryonix_dagster.lgpd import ledger_evaluation

    assert ledger_evaluation(engine, world.tenant)["passed"]
    key = f"{names_for(world.settings, world.tenant).redis_prefix}contato:{ERASED}"
    client = redis.Redis.from_url(world.settings.redis_url)
    client.hset(key, mapping={"email": EMAIL})  # a cache refilled from somewhere else
    try:
        failed = ledger_evaluation(engine, world.tenant)
        assert not failed["passed"] and failed["metadata"]["redis_keys_found"].value == 1
        assert failed["metadata"]["persons_found"].value == 1
        assert EMAIL not in json.dumps({k: str(v) for k, v in failed["metadata"].items()}) + failed["description"]
    finally:
        client.delete(key)


def test_bad_subject_is_refused_without_echoing_it(world, cli):
    rules = load_rules()
    for bad in (f"cpf={EMAIL}", "email=", EMAIL):
        with pytest.raises(BadInput) as refused:
            parse_subject(bad, rules)
        assert EMAIL not in str(refused.value)
    no_yes = world.run(cli, "lgpd", "erase", world.tenant, "--subject", f"email={EMAIL}")
    assert no_yes.returncode == 2 and "--yes" in no_yes.stderr


def test_restore_in_place_of_an_older_point_reapplies_the_ledger(world, cli):
    world.erased(cli)
    kept = person_counts(world.settings, world.tenant, KEPT)
    result = world.run(cli, "restore", world.tenant, "--snapshot", world.session, "--services", SERVICES, "--yes",
                       "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["lgpd"]["subjects_reerased"] == 1
    assert absent(person_counts(world.settings, world.tenant, ERASED))
    assert person_counts(world.settings, world.tenant, KEPT) == kept


def test_restore_into_another_tenant_applies_the_source_ledger(world, cli):
    result = world.restored_into(cli, SERVICES)
    assert result.returncode == 0, result.stderr
    assert "re-erased 1 subject(s)" in result.stdout
    assert absent(person_counts(world.settings, world.into, ERASED))
    assert person_counts(world.settings, world.into, KEPT) == person_counts(world.settings, world.tenant, KEPT)


def test_restore_of_one_schema_erases_the_person_in_its_own_transaction(world, cli):
    """Only `whatsapp` comes back: the person is recognised by the key (crm.contatos is not restored)."""
    world.erased(cli)
    kept = person_counts(world.settings, world.tenant, KEPT)["whatsapp.mensagens"]
    result = world.run(cli, "restore", world.tenant, "--snapshot", world.session, "--schema", "whatsapp", "--yes",
                       "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["lgpd"]["subjects_reerased"] == 1
    assert doc["lgpd"]["items"]["postgresql"]["whatsapp.mensagens"] > 0
    assert not doc["tiers"]["postgresql"]["warnings"]  # the in-transaction counts are parsed, never shown
    counts = person_counts(world.settings, world.tenant, ERASED)
    assert counts["whatsapp.mensagens"] == 0 and absent(counts)
    assert person_counts(world.settings, world.tenant, KEPT)["whatsapp.mensagens"] == kept


def test_drill_of_the_older_point_passes_with_the_person_left_out(world, cli):
    world.erased(cli)
    # the tiers whose drill comparison counts items (the database's restore verifies itself)
    drilled = tuple(t for t in TIERS if t.name in ("redis", "object_storage"))
    result = run_drill(world.settings, world.tenant, world.session, tiers=drilled)
    assert result.passed, result.error
    assert set(result.compared) == {"redis", "object_storage"}


def test_the_value_is_never_in_outputs_audit_or_ledger(world, cli):
    world.erased(cli)
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


def restic_dump_all(world, tenant_id: str, tag: str = "") -> bytes:
    """Every snapshot (with `tag`) of the tenant's repository through the restic binary itself (tar of `/`)."""
    env = dict(os.environ, RESTIC_PASSWORD=keys.repository_password(world.settings, tenant_id),
               RESTIC_REPOSITORY=restic_location(names_for(world.settings, tenant_id).repository), RESTIC_CACHE_DIR="/tmp/restic-test-cache")
    listed = subprocess.run(["restic", "snapshots", "--json", "--no-lock", *(["--tag", tag] if tag else [])], env=env,
                            capture_output=True, check=True)
    dumped = b""
    for snap in json.loads(listed.stdout):
        out = subprocess.run(["restic", "dump", "--no-lock", snap["id"], "/"], env=env, capture_output=True, check=True)
        dumped += out.stdout
    return dumped


def repository_snapshots(world) -> dict[str, set[str]]:
    """restic's own listing of the tenant's repository: manifest ids and every snapshot id."""
    location = restic_location(names_for(world.settings, world.tenant).repository)
    listed = restic_snapshots(location, keys.repository_password(world.settings, world.tenant))
    return {"manifests": {s["id"] for s in listed if "kind=manifest" in s["tags"]}, "all": {s["id"] for s in listed}}


def ledger_entries(world) -> tuple[int, int]:
    """(entries not rewritten yet, entries rewritten) of the tenant's erasure ledger, through psql."""
    counts = observe.psql(world.settings.main_db, "SELECT count(*) FILTER (WHERE rewritten_at IS NULL), "
                          f"count(rewritten_at) FROM tenants.lgpd_ledger WHERE cliente_id = '{world.tenant}'")
    pending, rewritten = counts.split("|")
    return int(pending), int(rewritten)


@pytest.mark.slow(45)
def test_a_rewrite_killed_before_its_manifest_loses_nothing_and_the_rerun_takes_the_person_out(rewrite_world, cli):
    """`lgpd erase --rewrite` SIGKILLed after it wrote the restore point's new tier snapshots, at
    its fenced lease check right before the new manifest (the lease table's writes are single-
    stepped, the heartbeat is 200 s away): the old restore point stands, whole; the ledger still
    says "not rewritten". The rerun (which takes over the dead child's lease) rewrites the point:
    the person is in no snapshot any more."""
    world = rewrite_world
    world.erased(cli)
    assert ledger_entries(world) == (1, 0)
    before = repository_snapshots(world)
    assert EMAIL.encode() in restic_dump_all(world, world.tenant, "tier=postgresql")  # the old point holds them
    erase = ("lgpd", "erase", world.tenant, "--subject", f"contato_id={ERASED}", "--rewrite", "--yes", "--json")
    stepper = TableStepper(world.settings.main_db, "tenants.backup_leases")
    try:
        proc = faults.start_cli(*erase, env={"KRYONIX_LEASE_TTL_SECONDS": "600"})
        rewrite_started = False
        while True:  # the lease writes: the erasure's take and release, the rewrite's take, its check
            waiting = poll(stepper.waiting, proc, "the child's next write to the lease table")
            query = " ".join(waiting[0][1].split())
            if query.startswith("INSERT INTO tenants.backup_leases") and "'lgpd_rewrite'" in query:
                rewrite_started = True
            elif rewrite_started and query.startswith("UPDATE tenants.backup_leases SET expires_at"):
                break  # ensure_held(): the last step before the new manifest
            stepper.let_through()
        kill9_running(proc)
        stepper.end_backends([pid for pid, _ in waiting])
    finally:
        stepper.close()
    after = repository_snapshots(world)
    assert after["manifests"] == before["manifests"]  # the old restore point stands ...
    assert before["all"] < after["all"]  # ... whole, beside the killed run's new, unlisted tier snapshots
    assert sessions_in(restic_snapshots(restic_location(names_for(world.settings, world.tenant).repository),
                                        keys.repository_password(world.settings, world.tenant))) == {world.session}
    assert ledger_entries(world)[1] == 0  # nothing marked rewritten (the rerun's erasure added an entry)
    assert absent(person_counts(world.settings, world.tenant, ERASED))

    result = world.run(cli, *erase)
    assert result.returncode == 0, result.stderr
    cert = json.loads(result.stdout)
    assert [p["session"] for p in cert["rewritten_restore_points"]] == [world.session]
    assert set(cert["rewritten_restore_points"][0]["tiers"]) >= {"postgresql", "redis", "object_storage", "appdata"}
    dumped = restic_dump_all(world, world.tenant)
    for marker in (EMAIL.encode(), f"foto {ERASED}".encode(), f"ficha do contato {ERASED}".encode()):
        assert marker not in dumped
    assert f"foto {KEPT}".encode() in dumped and f"ficha do contato {KEPT}".encode() in dumped
    assert ledger_entries(world)[0] == 0 and ledger_entries(world)[1] >= 1
    # the rewritten restore point restores, verified against its rewritten manifest
    restored = world.run(cli, "restore", world.tenant, "--snapshot", world.session, "--services", "postgresql",
                         "--yes", "--json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["lgpd"]["subjects_reerased"] == 0  # nothing left to re-erase
    assert absent(person_counts(world.settings, world.tenant, ERASED))


def test_offboarding_is_refused_for_an_active_tenant_and_under_a_legal_hold(world, cli):
    with pytest.raises(BadInput, match="ativo"):
        run_offboard(world.settings, world.into)
    registry.set_status(world.settings, world.tenant, "cancelado")
    try:
        held = world.run(cli, "tenants", "offboard", world.tenant, "--yes")  # its compliance snapshot is held
        assert held.returncode == 2 and "legal hold" in held.stderr, held.stderr
        assert keys.repository_password(world.settings, world.tenant) is not None
    finally:
        registry.set_status(world.settings, world.tenant, "ativo")


def test_offboarding_crypto_shreds_the_backups(world, cli, tmp_path, tenant_factory):
    tid = tenant_factory("o")  # of its own: world.into stays for the --into and refusal tests
    registry.ensure_tenant(world.settings, tid, "Offboard", "basic")
    world.erased(cli)
    restored = world.run(cli, "restore", world.tenant, "--snapshot", world.session, "--into", tid, "--services",
                         SERVICES, "--yes")  # the restored data: person 8, not person 7
    assert restored.returncode == 0, restored.stderr
    session = run_backup(world.settings, tid, "full", tiers=tuple(t for t in TIERS if t.name in OFFBOARD_TIERS))
    assert session.restore_point, session.error
    names = names_for(world.settings, tid)
    copy = tmp_path / "offsite-copy"  # a copy made earlier (an off-site copy, a disk snapshot)
    shutil.copytree(restic_location(names.repository), copy)
    registry.set_status(world.settings, tid, "cancelado")
    export = tmp_path / "export"
    result = world.run(cli, "tenants", "offboard", tid, "--export", str(export), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "encerrado" and "repository password" in doc["keys_destroyed"]
    # this world has no pgBackRest stanza: the certificate says no PITR repository holds the database
    assert doc["pitr_retention"]["configured"] is False and "no PITR configured" in doc["pitr_retention"]["statement"]
    # the export: the newest restore point, ledger-filtered
    sql = subprocess.run(["pg_restore", "-f", "-", str(export / "postgresql.dump")], capture_output=True, check=True)
    assert f"contato{KEPT}@exemplo.com.br".encode() in sql.stdout and EMAIL.encode() not in sql.stdout
    assert (export / "appdata" / "contatos" / str(KEPT) / "ficha.txt").is_file()
    # live data gone, registry and audit say so
    assert not pg.database_exists(world.settings.pg_dsn, names.database) and not names.app_data_dir.exists()
    assert not list(redis.Redis.from_url(world.settings.redis_url).scan_iter(match=names.redis_match))
    assert registry.get_tenant(world.settings, tid).status == "encerrado"
    assert tid not in registry.list_tenant_ids(world.settings)  # the partition sensor drops it
    assert observe.psql(world.settings.main_db, "SELECT count(*) FROM tenants.backup_audit WHERE cliente_id = "
                        f"'{tid}' AND operation = 'offboard' AND success") == "1"
    # nothing the product holds opens the copy: no key of its own is left, and no other one fits
    assert keys.repository_password(world.settings, tid) is None
    assert ledger.ledger_key(world.settings, tid) is None
    assert not Path(restic_location(names.repository)).exists()
    held = observe.psql(world.settings.main_db, "SELECT cliente_id FROM tenants.backup_keys").split()
    assert held  # other tenants' passwords exist and are tried
    for other in held:
        env = dict(os.environ, RESTIC_PASSWORD=keys.repository_password(world.settings, other),
                   RESTIC_REPOSITORY=str(copy), RESTIC_CACHE_DIR=str(tmp_path / "cache"))
        opened = subprocess.run(["restic", "cat", "config", "--no-lock"], env=env, capture_output=True)
        assert opened.returncode != 0
    # other tenants still verify
    verified = run_verify(world.settings, world.tenant)
    assert verified.ok, verified.problems


def test_app_data_erasure_never_follows_a_link(tmp_path):
    from kryonix_dagster.engine.lgpd.locations import Erased, _inside, erase_appdata, key_in

    root, outside = tmp_path / "cliente_x", tmp_path / "outside"
    (root / "contatos").mkdir(parents=True)
    outside.mkdir()
    (outside / "precious.txt").write_text("not the tenant's")
    (root / "contatos" / "9").symlink_to(outside, target_is_directory=True)  # the person's path is a link
    (root / "via").symlink_to(outside, target_is_directory=True)
    erased = Erased()
    erase_appdata(root, ["contatos/{contato_id}", "via/{contato_id}"], "contato_id", ["9", "precious.txt"], False,
                  erased)
    assert not (root / "contatos" / "9").exists() and not (root / "contatos" / "9").is_symlink()  # the link went
    assert (outside / "precious.txt").read_text() == "not the tenant's"  # never what it pointed to
    assert erased.appdata == 1
    assert _inside(root, "contatos/../../outside") is None and _inside(root, "/etc") is None
    assert _inside(root, "via/precious.txt") is None  # a link on the way is never followed
    assert key_in("contato:42", "contato:{contato_id}", "contato_id", whole=True) == "42"
    assert key_in("contato:42:extra", "contato:{contato_id}", "contato_id", whole=True) is None
    assert key_in("contatos/4/foto.jpg", "contatos/{contato_id}/", "contato_id", whole=False) == "4"
