"""The main database is created and migrated idempotently."""
import secrets

from kryonix_dagster.engine import pg
from kryonix_dagster.engine.migrations import MIGRATIONS, migrate


def schema_snapshot(psql, db):
    return psql(db, """
        SELECT string_agg(table_schema || '.' || table_name || '.' || column_name || ':' || data_type, ','
                          ORDER BY table_schema, table_name, column_name)
        FROM information_schema.columns WHERE table_schema = 'tenants'
    """), psql(db, "SELECT string_agg(version::text, ',' ORDER BY version) FROM tenants.schema_migrations")


def test_migrate_twice_changes_nothing(settings, psql):
    db = "kryonix_test_mig_" + secrets.token_hex(4)
    fresh = settings.with_overrides(main_db=db)
    try:
        first = migrate(fresh)
        assert first.database_created
        assert first.applied == tuple(m.version for m in MIGRATIONS)
        before = schema_snapshot(psql, db)
        second = migrate(fresh)
        assert not second.database_created and second.applied == ()
        assert schema_snapshot(psql, db) == before
        assert "tenants.clientes.plano:text" in before[0]
    finally:
        pg.drop_database(settings.pg_dsn, db)
