"""`kryonix-backup tenants add|list|set-status`, including every bad input (exit 2, one line)."""
import json

import pytest

BAD_IDS = ["../x", "1-2", "A", "1;drop", "*", "", "a" * 33]

from .conftest import MAIN_DB


def registry_rows(psql):
    return psql(MAIN_DB, "SELECT coalesce(string_agg(id || '|' || plano || '|' || status, ',' ORDER BY id), '') "
                                     "FROM tenants.clientes")


def assert_refused(result, fragment):
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]


def test_add_list_set_status(cli, tenant_factory):
    tid = tenant_factory()
    added = cli("tenants", "add", tid, "--name", "Clínica Sorriso", "--plan", "pro")
    assert added.returncode == 0, added.stderr
    listed = json.loads(cli("tenants", "list", "--json").stdout)
    mine = [t for t in listed if t["id"] == tid]
    assert mine == [{**mine[0], "nome": "Clínica Sorriso", "plano": "pro", "status": "ativo"}]
    assert cli("tenants", "set-status", tid, "inativo").returncode == 0
    listed = json.loads(cli("tenants", "list", "--json").stdout)
    assert [t["status"] for t in listed if t["id"] == tid] == ["inativo"]
    table = cli("tenants", "list").stdout
    assert tid in table and "inativo" in table


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused_before_any_service(cli, cli_in_process, psql, bad):
    run = cli if bad == BAD_IDS[0] else cli_in_process  # one case through the installed console script
    before = registry_rows(psql)
    # An unreachable PostgreSQL proves the id is refused before any service is touched.
    result = run("tenants", "add", bad, "--name", "x", "--plan", "basic",
                 env={"KRYONIX_PG_DSN": "postgresql://postgres@127.0.0.1:1/postgres"})
    assert_refused(result, "invalid tenant id")
    assert registry_rows(psql) == before
    assert_refused(run("tenants", "set-status", bad, "ativo"), "invalid tenant id")


def test_unknown_plan_duplicate_and_bad_status(cli, psql, tenant_factory):
    tid = tenant_factory()
    before = registry_rows(psql)
    assert_refused(cli("tenants", "add", tid, "--name", "x", "--plan", "gold"), "gold")
    assert registry_rows(psql) == before
    assert cli("tenants", "add", tid, "--name", "Primeiro", "--plan", "basic").returncode == 0
    after_first = registry_rows(psql)
    assert_refused(cli("tenants", "add", tid, "--name", "Segundo", "--plan", "pro"), "already exists")
    assert registry_rows(psql) == after_first
    assert psql(MAIN_DB, f"SELECT nome FROM tenants.clientes WHERE id = '{tid}'") == "Primeiro"
    assert_refused(cli("tenants", "set-status", tid, "suspenso"), "suspenso")
    assert_refused(cli("tenants", "set-status", tid + "zz", "ativo"), "not registered")
    assert registry_rows(psql) == after_first


def test_missing_arguments_and_unknown_commands_are_bad_input(cli):
    assert_refused(cli("tenants", "add"), "Missing argument")
    assert_refused(cli("tenants", "frobnicate"), "No such command")
    assert_refused(cli("demo", "seed", "--tenants", "0"), "--tenants")
    assert_refused(cli("demo", "seed", "--scale", "-1"), "--scale")
