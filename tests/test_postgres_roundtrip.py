"""PostgreSQL tier round trips through the CLI, judged by psql (independent of the product)."""
import json
from pathlib import Path

import pytest

from kryonix_dagster.demo import seed_tenant

from . import observe


def backup(cli, tid, *extra):
    result = cli("backup", tid, "--json", *extra)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["summary"] == {"total": 1, "succeeded": 1, "failed": 0, "success_rate": 1.0}
    return doc["sessions"][0]


def mangle(db):
    observe.psql(db, """
        UPDATE crm.contatos SET nome = 'ALTERADO' WHERE id % 3 = 0;
        DELETE FROM lgpd.log_processamento WHERE id % 2 = 0;
        UPDATE auth.usuarios SET nome = 'MUDOU';
        DROP TABLE financeiro.faturas;
        DROP SCHEMA whitelabel CASCADE;
        SELECT setval('crm.contatos_id_seq', 999999);
    """)


def test_restore_brings_back_every_row(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.3)
    db = f"kryonix_cliente_{tid}"
    at_backup = observe.table_checksums(db)
    sequences = observe.sequences(db)
    session = backup(cli, tid)
    assert session["tiers"]["postgresql"]["items"] == sum(c for c, _ in at_backup.values())
    mangle(db)
    assert observe.table_checksums(db) != at_backup

    restored = cli("restore", tid, "--yes", "--snapshot", "latest")
    assert restored.returncode == 0, restored.stderr
    assert "connection(s) terminated" in restored.stdout
    assert observe.table_checksums(db) == at_backup
    assert observe.sequences(db) == sequences
    assert int(observe.psql(db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated")) == 7
    # no staging leftovers
    assert observe.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE '{db}\\_\\_%'") == "0"


def test_restore_terminates_open_connections_and_says_how_many(settings, cli, tenant_factory):
    import psycopg2

    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.1)
    backup(cli, tid)
    db = f"kryonix_cliente_{tid}"
    idle = [psycopg2.connect(host="127.0.0.1", user="postgres", dbname=db) for _ in range(2)]
    try:
        result = cli("restore", tid, "--yes", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["tiers"]["postgresql"]["connections_terminated"] == 2
        assert "terminated 2 connection(s)" in result.stderr
    finally:
        for conn in idle:
            conn.close()


@pytest.mark.slow(35)
def test_schema_restore_touches_only_that_schema(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.2)
    db = f"kryonix_cliente_{tid}"
    at_backup = observe.table_checksums(db)
    backup(cli, tid)
    observe.psql(db, "UPDATE crm.contatos SET nome = 'ALTERADO'; DELETE FROM crm.contatos WHERE id > 300 "
                     "AND id NOT IN (SELECT contato_id FROM lgpd.consentimentos UNION SELECT contato_id FROM whatsapp.mensagens "
                     "UNION SELECT contato_id FROM agendamento.agendamentos UNION SELECT contato_id FROM financeiro.faturas "
                     "UNION SELECT contato_id FROM marketing.envios); UPDATE auth.usuarios SET nome = 'MUDOU'")
    changed = observe.table_checksums(db)
    result = cli("restore", tid, "--yes", "--schema", "crm", "--json")
    assert result.returncode == 0, result.stderr
    after = observe.table_checksums(db)
    assert after["crm.contatos"] == at_backup["crm.contatos"]
    for table in after:
        if not table.startswith("crm."):
            assert after[table] == changed[table], table  # auth keeps its change
    assert after["auth.usuarios"] != at_backup["auth.usuarios"]
    # the foreign keys into crm from other schemas are back and valid
    assert int(observe.psql(db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated")) == 7

    # DROP TABLE … CASCADE takes the foreign keys of other schemas (inbound) and its own (outbound)
    before_drop = foreign_keys(db)
    assert len(before_drop) == 7 and any(fk.startswith("crm.contatos ") for fk in before_drop), before_drop
    observe.psql(db, "DROP TABLE crm.contatos CASCADE")
    assert len(foreign_keys(db)) < 7
    result = cli("restore", tid, "--yes", "--schema", "crm", "--json")
    assert result.returncode == 0, result.stderr
    assert foreign_keys(db) == before_drop
    assert json.loads(result.stdout)["tiers"]["postgresql"]["details"]["foreign_keys"] == 6  # all touch crm

    # one it cannot bring back (its table is gone too) is named, and the restore does not say ok
    observe.psql(db, "DROP TABLE crm.contatos CASCADE; DROP TABLE whatsapp.mensagens")
    result = cli("restore", tid, "--yes", "--schema", "crm")
    assert result.returncode == 1, result.stderr
    assert "foreign key whatsapp.mensagens.mensagens_contato_id_fkey" in result.stderr, result.stderr
    assert foreign_keys(db) == [fk for fk in before_drop if not fk.startswith("whatsapp.mensagens ")]


def foreign_keys(db) -> list[str]:
    """Every foreign key of the database, as pg_constraint holds it: table, name, definition, valid."""
    rows = observe.psql(db, "SET search_path = pg_catalog; SELECT conrelid::regclass || ' ' || conname || ' ' || "
                            "pg_get_constraintdef(oid) || ' ' || convalidated FROM pg_constraint "
                            "WHERE contype = 'f' ORDER BY 1")
    return rows.splitlines()


@pytest.mark.slow(93)
def test_into_another_tenant_leaves_the_source_untouched(settings, cli, tenant_factory):
    source, target = tenant_factory("a"), tenant_factory("b")
    seed_tenant(settings, source, scale=0.2)
    assert cli("tenants", "add", target, "--name", "Alvo", "--plan", "basic").returncode == 0
    src_db, dst_db = f"kryonix_cliente_{source}", f"kryonix_cliente_{target}"
    at_backup = observe.table_checksums(src_db)
    backup(cli, source)
    observe.psql(src_db, "UPDATE crm.contatos SET nome = 'DEPOIS DO BACKUP'")
    source_now = observe.table_checksums(src_db)

    result = cli("restore", source, "--yes", "--into", target)
    assert result.returncode == 0, result.stderr
    assert observe.table_checksums(dst_db) == at_backup
    assert observe.table_checksums(src_db) == source_now
    # roles were renamed to the target's; the target grants nothing to the source's roles
    grants = observe.psql(dst_db, "SELECT DISTINCT grantee FROM information_schema.role_table_grants "
                                  "WHERE grantee LIKE 'kryonix_cliente_%' ORDER BY 1").split()
    assert grants == [f"kryonix_cliente_{target}_app", f"kryonix_cliente_{target}_leitura"]

    # --schema --into restores one schema into the other tenant
    observe.psql(dst_db, "UPDATE crm.contatos SET nome = 'X'")
    assert cli("restore", source, "--yes", "--into", target, "--schema", "crm").returncode == 0
    assert observe.table_checksums(dst_db)["crm.contatos"] == at_backup["crm.contatos"]


def repo_bytes(settings, tid) -> int:
    root = Path(settings.repo[len("file://"):]) / f"cliente_{tid}"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.slow(84)
def test_unchanged_second_backup_adds_under_one_percent(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=4.0)
    first = backup(cli, tid)
    after_first = repo_bytes(settings, tid)  # compressed and encrypted, as stored
    second = backup(cli, tid, "--type", "full")
    growth = repo_bytes(settings, tid) - after_first
    assert first["session"] != second["session"]
    assert second["tiers"]["postgresql"]["bytes_processed"] == first["tiers"]["postgresql"]["bytes_processed"]
    assert growth < 0.01 * after_first, (growth, after_first)


@pytest.mark.slow(91)
def test_s3_repository_round_trip(settings, cli, tenant_factory, moto_endpoint):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.1)
    db = f"kryonix_cliente_{tid}"
    at_backup = observe.table_checksums(db)
    env = {"KRYONIX_REPO": f"s3:{moto_endpoint}/kryonix-backups/{tid}",
           "KRYONIX_REPO_ACCESS_KEY": "repo-access", "KRYONIX_REPO_SECRET_KEY": "repo-secret-key"}
    result = cli("backup", tid, env=env)
    assert result.returncode == 0, result.stderr
    s3 = observe.s3(moto_endpoint, "repo-access", "repo-secret-key")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="kryonix-backups", Prefix=f"{tid}/cliente_{tid}/")["Contents"]]
    assert any(k.endswith("/config") for k in keys) and any("/snapshots/" in k for k in keys)
    # contacts above id 100 lost (with the rows that reference them), the others renamed
    assert int(observe.psql(db, "SELECT count(*) FROM crm.contatos WHERE id > 100")) > 0
    dependents = ("whatsapp.mensagens", "agendamento.agendamentos", "financeiro.faturas", "marketing.envios",
                  "lgpd.consentimentos")
    observe.psql(db, "".join(f"DELETE FROM {t} WHERE contato_id > 100; " for t in dependents)
                 + "DELETE FROM crm.contatos WHERE id > 100")
    assert observe.psql(db, "SELECT count(*) FROM crm.contatos WHERE id > 100") == "0"
    observe.psql(db, "UPDATE crm.contatos SET nome = 'Y'")
    damaged = observe.table_checksums(db)
    assert damaged["crm.contatos"][0] == 100 < at_backup["crm.contatos"][0]
    assert sum(damaged[t][0] for t in dependents) < sum(at_backup[t][0] for t in dependents)
    assert cli("restore", tid, "--yes", env=env).returncode == 0
    assert observe.table_checksums(db) == at_backup
    assert cli("verify", tid, "--read-data", env=env).returncode == 0


@pytest.mark.slow(30)
def test_an_unchanged_incremental_keeps_the_verified_row_hashes_of_the_same_dump(settings, cli, tenant_factory):
    """An incremental whose dump is byte-identical to the previous restore point's carries that
    point's row hashes (named in `tables_hashed_by`) instead of hashing every table again; a
    changed database or a full session hashes afresh; and a restore of the reused-hash point
    still verifies every table (judged by psql, independently)."""
    from kryonix_dagster.engine.manifest import find_manifest
    from kryonix_dagster.engine.tenant_repository import open_repository

    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.1)
    db = f"kryonix_cliente_{tid}"
    at_backup = observe.table_checksums(db)
    first, second = backup(cli, tid), backup(cli, tid)
    repo = open_repository(settings, tid)
    manifest = lambda session: find_manifest(repo, session["session"]).tiers["postgresql"].checksums  # noqa: E731
    assert "tables_hashed_by" not in first["tiers"]["postgresql"]["checksums"]
    assert second["tiers"]["postgresql"]["checksums"]["dump_sha256"] == first["tiers"]["postgresql"]["checksums"]["dump_sha256"]
    assert second["tiers"]["postgresql"]["checksums"]["tables_hashed_by"] == first["session"]
    assert manifest(second)["tables"] == manifest(first)["tables"]

    observe.psql(db, "UPDATE crm.contatos SET nome = 'MUDOU' WHERE id = (SELECT min(id) FROM crm.contatos)")
    changed = backup(cli, tid)
    assert "tables_hashed_by" not in changed["tiers"]["postgresql"]["checksums"]
    changed_tables = manifest(changed)["tables"]
    assert changed_tables["crm.contatos"] != manifest(first)["tables"]["crm.contatos"]
    assert {t: v for t, v in changed_tables.items() if t != "crm.contatos"} == \
        {t: v for t, v in manifest(first)["tables"].items() if t != "crm.contatos"}
    full = backup(cli, tid, "--type", "full")
    assert "tables_hashed_by" not in full["tiers"]["postgresql"]["checksums"]

    mangle(db)
    restored = cli("restore", tid, "--yes", "--snapshot", second["session"])
    assert restored.returncode == 0, restored.stderr
    assert observe.table_checksums(db) == at_backup
