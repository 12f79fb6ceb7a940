"""PostgreSQL tier: role names a restore point carries are never trusted (review finding 26, issue 8).

A tenant's restore point may only create or grant the tenant's own roles: a roles.json naming
another tenant's role (or any name outside the tenant's prefix) is refused before anything is
touched; memberships in groups the tenant does not own (e.g. pg_execute_server_program) are
never given back; database ACLs and per-role settings never reach another tenant's roles
through --into. Every outcome is judged through psql."""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.manifest import find_manifest, new_session_id, tier_tags, write_manifest
from kryonix_dagster.engine.tenant_repository import open_repository

from . import observe

SCALE = 0.05


def backup(cli, tid: str) -> None:
    result = cli("backup", tid, "--json")
    assert result.returncode == 0, result.stderr


def restore(cli, tid: str, *extra):
    return cli("restore", tid, "--services", "postgresql", "--yes", *extra)


def error_line(result) -> str:
    """The CLI's one error line (progress lines before it are the CLI's own)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("kryonix-backup: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def memberships(role: str) -> str:
    return observe.psql("postgres", "SELECT coalesce(string_agg(g.rolname, ',' ORDER BY g.rolname), '') "
                                    "FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                                    f"JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = '{role}'")


def roles_named(*names: str) -> str:
    """The roles whose name starts with one of `names` (other helpers' tenants come and go)."""
    where = " OR ".join(f"starts_with(rolname, '{name}')" for name in names)
    return observe.psql("postgres", f"SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE {where}")


def database_oid(db: str) -> str:
    return observe.psql("postgres", f"SELECT oid FROM pg_database WHERE datname = '{db}'")


def tenant_databases(db: str) -> str:
    return observe.psql("postgres", f"SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database "
                                    f"WHERE datname LIKE '{db}%'")


def with_database_acl(settings, tid: str, acl: list) -> str:
    """A new restore point of `tid`: the latest one, its recorded database ACL replaced by `acl`."""
    repo = open_repository(settings, tid)
    manifest = find_manifest(repo, "latest")
    result = manifest.tiers["postgresql"]
    properties = dict(result.details["database_properties"], acl=acl)
    tiers = dict(manifest.tiers)
    tiers["postgresql"] = dataclasses.replace(result, details={**result.details, "database_properties": properties})
    session = new_session_id()
    write_manifest(repo, dataclasses.replace(manifest, session_id=session, tiers=tiers), datetime.now(timezone.utc))
    return session


def with_roles_file(settings, tid: str, roles: list[dict]) -> str:
    """A new restore point of `tid`: the latest one, its roles.json replaced by `roles`."""
    repo = open_repository(settings, tid)
    manifest = find_manifest(repo, "latest")
    session = new_session_id()
    now = datetime.now(timezone.utc)
    roles_snap = repo.backup_bytes(json.dumps(roles).encode(), "roles.json",
                                   tier_tags(session, "postgresql", "roles", manifest.backup_type), now)
    result = manifest.tiers["postgresql"]
    tiers = dict(manifest.tiers)
    tiers["postgresql"] = dataclasses.replace(result, snapshots={**result.snapshots, "roles": roles_snap.snapshot_id})
    write_manifest(repo, dataclasses.replace(manifest, session_id=session, tiers=tiers), now)
    return session


# --- a restore point naming roles outside the tenant's names is refused, nothing touched -----------

def test_a_restore_point_naming_roles_outside_the_tenant_is_refused_untouched(settings, cli, tenant_factory):
    tid, other = tenant_factory("a"), tenant_factory("b")
    seed_tenant(settings, tid, scale=SCALE)
    db = f"kryonix_cliente_{tid}"
    backup(cli, tid)
    own_new = f"kryonix_cliente_{tid}_novo"  # would be created first if the check came too late
    for foreign in (f"kryonix_cliente_{other}_intruso", "intruso_sem_prefixo", f"kryonix_cliente_{tid}"):
        roles = [{"name": own_new, "rolcanlogin": True, "member_of": [], "password": None},
                 {"name": foreign, "rolcanlogin": True, "member_of": [], "password": None}]
        session = with_roles_file(settings, tid, roles)
        observe.psql(db, "UPDATE crm.contatos SET nome = 'depois do backup'")
        watched = (f"kryonix_cliente_{tid}", f"kryonix_cliente_{other}", "intruso")
        roles_before, oid_before = roles_named(*watched), database_oid(db)
        data_before, databases_before = observe.table_checksums(db), tenant_databases(db)
        result = restore(cli, tid, "--snapshot", session)
        assert result.returncode == 1, result.stderr
        line = error_line(result)
        assert f"tenant {tid}, tier postgresql" in line and foreign in line and "nothing was changed" in line, line
        assert roles_named(*watched) == roles_before
        assert database_oid(db) == oid_before
        assert observe.table_checksums(db) == data_before
        assert tenant_databases(db) == databases_before


# --- memberships in groups the tenant does not own are never given back ---------------------------

def test_a_membership_in_a_group_the_tenant_does_not_own_is_not_restored(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=SCALE)
    role, read = f"kryonix_cliente_{tid}_x", f"kryonix_cliente_{tid}_leitura"
    observe.psql("postgres", f"CREATE ROLE {role}; GRANT pg_execute_server_program TO {role}; GRANT {read} TO {role}")
    backup(cli, tid)
    observe.psql("postgres", f"DROP ROLE {role}")
    result = restore(cli, tid)
    assert result.returncode == 0, result.stderr
    assert memberships(role) == read  # back, with its membership among the tenant's own roles only
    assert "pg_execute_server_program" in result.stderr  # the skipped membership is reported


def test_cluster_wide_role_attributes_are_never_restored(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=SCALE)
    role = f"kryonix_cliente_{tid}_adm"
    observe.psql("postgres", f"CREATE ROLE {role} LOGIN CREATEROLE CREATEDB BYPASSRLS")
    backup(cli, tid)
    observe.psql("postgres", f"DROP ROLE {role}")
    result = restore(cli, tid)
    assert result.returncode == 0, result.stderr
    attributes = "rolcanlogin, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls"
    assert observe.psql("postgres", f"SELECT {attributes} FROM pg_roles WHERE rolname = '{role}'") == "t|f|f|f|f"
    assert "CREATEROLE, CREATEDB, BYPASSRLS" in result.stderr  # withheld, and said so


# --- --into: the source's database ACL and role settings never reach roles of a third tenant -------

def database_grants(db: str) -> str:
    return observe.psql("postgres", f"""
        SELECT coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(d.datacl) a), '') || ' | ' ||
               coalesce((SELECT string_agg(coalesce(r.rolname, '-') || ':' || array_to_string(s.setconfig, ';'), ' '
                                           ORDER BY r.rolname NULLS FIRST)
                           FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
                          WHERE s.setdatabase = d.oid), '')
        FROM pg_database d WHERE d.datname = '{db}'""")


def test_into_gives_no_database_grant_or_setting_to_another_tenants_role(settings, cli, tenant_factory):
    source, target, third = tenant_factory("a"), tenant_factory("b"), tenant_factory("c")  # third purged last
    seed_tenant(settings, source, scale=SCALE)
    assert cli("tenants", "add", target, "--name", "Alvo", "--plan", "basic").returncode == 0
    src_db, tgt_db = f"kryonix_cliente_{source}", f"kryonix_cliente_{target}"
    src_app, foreign = f"kryonix_cliente_{source}_app", f"kryonix_cliente_{third}_espiao"
    observe.psql("postgres", f"""
        CREATE ROLE {foreign} LOGIN;
        REVOKE CONNECT, TEMPORARY ON DATABASE {src_db} FROM PUBLIC;
        GRANT CONNECT ON DATABASE {src_db} TO {src_app};
        GRANT CONNECT, TEMPORARY ON DATABASE {src_db} TO {foreign};
        ALTER ROLE {src_app} IN DATABASE {src_db} SET statement_timeout TO '5s';
        ALTER ROLE {foreign} IN DATABASE {src_db} SET work_mem TO '8MB';
    """)
    backup(cli, source)
    observe.psql("postgres", f"REVOKE ALL ON DATABASE {src_db} FROM {foreign}")  # so the third can be purged
    result = restore(cli, source, "--into", target)
    assert result.returncode == 0, result.stderr
    grants = database_grants(tgt_db)
    assert third not in grants, grants
    assert f"kryonix_cliente_{target}_app=c/" in grants, grants  # the source's own role, renamed
    assert f"kryonix_cliente_{target}_app:statement_timeout=5s" in grants, grants
    assert observe.psql("postgres", f"SELECT has_database_privilege('{foreign}', '{tgt_db}', 'CONNECT')") == "f"
    assert foreign in result.stderr  # the skipped grant is reported


def test_a_recorded_database_privilege_is_never_run_as_sql(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=SCALE)
    db, injected = f"kryonix_cliente_{tid}", f"kryonix_cliente_{tid}_injetado"
    backup(cli, tid)
    session = with_database_acl(settings, tid, [
        ["PUBLIC", "CONNECT", False],
        ["PUBLIC", f"CONNECT ON DATABASE {db} TO PUBLIC; CREATE ROLE {injected}; GRANT CONNECT", False]])
    result = restore(cli, tid, "--snapshot", session)
    assert result.returncode == 0, result.stderr
    assert observe.psql("postgres", f"SELECT count(*) FROM pg_roles WHERE rolname = '{injected}'") == "0"
    assert observe.psql("postgres", f"SELECT has_database_privilege('public', '{db}', 'CONNECT')") == "t"
    assert "not a database privilege" in result.stderr
