"""The fleet-wide forms of the CLI (`backup --all --plan P`, `lgpd apply --all`) on a registry of
the test's own, so `--all` sees exactly the tenants the test made. Judged by the services: each
tenant's restic repository (snapshots), each tenant's database through psql."""
from __future__ import annotations

import json

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine import registry

from .faults import repository_dir, restic_json
from .lgpd_world import ANONYMISED, drop_lgpd_tenant, new_tenant_id, seed_lgpd_tenant


def test_backup_all_plan_backs_up_exactly_the_plans_active_tenants_and_summarises(own_registry, cli, tenant_factory):
    """basic: `ok` (active, seeded) and `ghost` (active, no database: fails); `pro` (active, seeded,
    other plan) and `idle` (basic, seeded, inactive) are never touched."""
    env = {"KRYONIX_MAIN_DB": own_registry.main_db}
    ok, ghost, pro, idle = (tenant_factory(s) for s in ("o", "g", "p", "i"))
    for tid, plan in ((ok, "basic"), (pro, "pro"), (idle, "basic")):
        seed_tenant(own_registry, tid, scale=0.05, plan=plan)
    registry.add_tenant(own_registry, ghost, "Sem banco", "basic")
    registry.set_status(own_registry, idle, "inativo")

    result = cli("backup", "--all", "--plan", "basic", env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "total 2, succeeded 1, failed 1, success rate 50%", result.stdout
    [ok_line] = [line for line in lines if line.startswith(f"{ok}: ")]
    assert ok_line.startswith(f"{ok}: complete, session "), ok_line
    session = ok_line.split("session ", 1)[1].split(",", 1)[0]
    [ghost_line] = [line for line in lines if line.startswith(f"{ghost}: ")]
    assert ghost_line.startswith(f"{ghost}: failed, ")
    assert ghost_line.endswith(f"(postgresql: tenant {ghost}, tier postgresql: database kryonix_cliente_{ghost} "
                               "does not exist)"), ghost_line

    # the repositories: ok's holds that session (a manifest and tier snapshots), ghost's nothing,
    # the other plan's and the inactive tenant's do not exist
    tags = [set(s["tags"]) for s in restic_json(own_registry, ok, "snapshots")]
    assert {"kind=manifest", f"session={session}"} <= set.union(*tags) and len(tags) > 1
    assert all(f"session={session}" in t for t in tags)
    assert restic_json(own_registry, ghost, "snapshots") == []
    for untouched in (pro, idle):
        assert not repository_dir(own_registry, untouched).exists(), untouched
    assert not any(tid in result.stdout + result.stderr for tid in (pro, idle))
    assert f"backup failed for tenant(s) {ghost}" in result.stderr


def test_lgpd_apply_all_applies_the_rules_in_every_registered_tenants_database(own_registry, cli, psql):
    """An active and an inactive tenant (inactive tenants still hold personal data) both get the
    rules; an off-boarded one (status encerrado: its data is gone) is not an apply target."""
    active, inactive, gone = new_tenant_id(), new_tenant_id(), new_tenant_id()
    try:
        databases = {tid: seed_lgpd_tenant(own_registry, tid) for tid in (active, inactive)}
        registry.set_status(own_registry, inactive, "inativo")
        registry.add_tenant(own_registry, gone, "Encerrado", "basic")
        psql(own_registry.main_db, f"UPDATE tenants.clientes SET status = 'encerrado' WHERE id = '{gone}'")

        result = cli("lgpd", "apply", "--all", "--json", env={"KRYONIX_MAIN_DB": own_registry.main_db})
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert sorted(t["tenant"] for t in doc["tenants"]) == sorted((active, inactive))
        assert doc["failed"] == [] and doc["total_rows"] == 12
        for tid, db in databases.items():
            contacts = psql(db, "SELECT id, nome, email, telefone FROM crm.contatos ORDER BY id").splitlines()
            anonymised = {int(row.split("|")[0]) for row in contacts if tuple(row.split("|")[1:]) == ANONYMISED}
            assert anonymised == {1, 3, 5}, (tid, contacts)  # 5 was anonymised already
            assert psql(db, "SELECT string_agg(id::text, ',' ORDER BY id) FROM analytics.eventos") == "203", tid
            assert psql(db, "SELECT string_agg(id::text, ',' ORDER BY id) FROM lgpd.log_processamento "
                            "WHERE id < 1000") == "103", tid
    finally:
        for tid in (active, inactive, gone):
            drop_lgpd_tenant(own_registry, tid)
