"""Test helpers: remove every trace of a tenant."""
from __future__ import annotations

import shutil
from pathlib import Path

from psycopg2 import sql

from kryonix_dagster.engine import pg
from kryonix_dagster.engine.naming import names_for

from .helpers_tenant import destroy


def purge_tenant(settings, tenant_id: str) -> None:
    """Live data, backup repository, registry, key and audit rows of a test tenant."""
    destroy(settings, tenant_id)
    names = names_for(settings, tenant_id)
    for database in (names.restoring_database, names.previous_database):
        pg.drop_database(settings.pg_dsn, database)
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (names.role_prefix,))
        for (role,) in cur.fetchall():
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    if names.repository.startswith("file://"):
        shutil.rmtree(Path(names.repository[len("file://"):]), ignore_errors=True)
    shutil.rmtree(Path(settings.state_dir) / "mirror" / f"cliente_{tenant_id}", ignore_errors=True)
    forget_registry_rows(settings, tenant_id)



def forget_registry_rows(settings, tenant_id: str) -> None:
    """The tenant's rows in every tenants.* table of the main database, and its registry row."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.columns "
                    "WHERE table_schema = 'tenants' AND column_name = 'cliente_id'")
        for (table,) in cur.fetchall():
            cur.execute(sql.SQL("DELETE FROM tenants.{} WHERE cliente_id = %s").format(sql.Identifier(table)),
                        (tenant_id,))
        cur.execute("DELETE FROM tenants.clientes WHERE id = %s", (tenant_id,))

def failed_session_run(instance, tenant_id: str):
    """Materialize the session of a registered tenant that has no database: a failed run."""
    from dagster import materialize

    from kryonix_dagster.backup.assets import tenant_backup_session
    from kryonix_dagster.partitions import KRYONIX_TENANTS
    from kryonix_dagster.resources import resources_from_env

    instance.add_dynamic_partitions(KRYONIX_TENANTS, [tenant_id])
    run = materialize([tenant_backup_session], partition_key=tenant_id, instance=instance,
                      resources=resources_from_env(), raise_on_error=False)
    assert not run.success
    return run
