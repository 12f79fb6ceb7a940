"""Idempotent creation and migration of the main database (`kryonix_main`).

Each migration runs once, in order, inside one transaction that also records it in
`tenants.schema_migrations`; an advisory lock serialises concurrent migrators. Running
`migrate` twice changes nothing the second time.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import pg
from .config import Settings
from .keys import VAULT_LOCK

_MIGRATION_LOCK = 0x6B72796F  # "kryo": pg_advisory_xact_lock key for migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "tenant registry",
        """
        CREATE TABLE tenants.clientes (
            id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9]{1,32}$'),
            nome        text NOT NULL,
            plano       text NOT NULL,
            status      text NOT NULL DEFAULT 'ativo' CHECK (status IN ('ativo', 'inativo')),
            created_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX clientes_status_plano ON tenants.clientes (status, plano);
        """,
    ),
    Migration(
        2,
        "backup keys, audit trail and leases",
        """
        CREATE TABLE tenants.backup_keys (
            cliente_id      text PRIMARY KEY,
            master_key_id   text NOT NULL,
            nonce           bytea NOT NULL,
            wrapped_password bytea NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE tenants.backup_audit (
            id                bigserial PRIMARY KEY,
            cliente_id        text NOT NULL,
            operation         text NOT NULL,
            session_id        text,
            backup_type       text,
            backup_date       timestamptz NOT NULL DEFAULT now(),
            finished_at       timestamptz,
            backup_size_bytes bigint,
            bytes_added       bigint,
            duration_seconds  double precision,
            success           boolean NOT NULL,
            error             text,
            snapshot_ids      jsonb NOT NULL DEFAULT '{}'::jsonb,
            details           jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX backup_audit_cliente_date ON tenants.backup_audit (cliente_id, operation, backup_date DESC);
        CREATE TABLE tenants.backup_leases (
            cliente_id  text PRIMARY KEY,
            session_id  text NOT NULL,
            operation   text NOT NULL,
            holder      text NOT NULL,
            acquired_at timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "repository statistics for the fleet status",
        """
        CREATE TABLE tenants.repository_stats (
            cliente_id     text PRIMARY KEY,
            restore_points integer NOT NULL,
            snapshots      integer NOT NULL,
            repo_bytes     bigint,
            latest_session text,
            updated_at     timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    Migration(
        4,
        "pgBackRest repository passphrases (wrapped by the master key)",
        """
        CREATE TABLE tenants.pitr_keys (
            stanza           text PRIMARY KEY,
            master_key_id    text NOT NULL,
            nonce            bytea NOT NULL,
            wrapped_password bytea NOT NULL,
            created_at       timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    Migration(
        5,
        "off-site copy state per tenant",
        """
        CREATE TABLE tenants.offsite_copies (
            cliente_id        text PRIMARY KEY,
            latest_session    text,
            latest_session_at timestamptz,
            restore_points    integer NOT NULL DEFAULT 0,
            copied_at         timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    Migration(
        6,
        "LGPD erasure ledger, its per-tenant keys, and the off-boarded status",
        """
        CREATE TABLE tenants.lgpd_ledger_keys (
            cliente_id    text PRIMARY KEY,
            master_key_id text NOT NULL,
            nonce         bytea NOT NULL,
            wrapped_key   bytea NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE tenants.lgpd_ledger (
            id           bigserial PRIMARY KEY,
            cliente_id   text NOT NULL,
            subject_kind text NOT NULL,
            value_hash   text NOT NULL,
            key_hashes   text[] NOT NULL DEFAULT '{}',
            erased_at    timestamptz NOT NULL DEFAULT now(),
            rewritten_at timestamptz,
            details      jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX lgpd_ledger_cliente ON tenants.lgpd_ledger (cliente_id, erased_at);
        ALTER TABLE tenants.clientes DROP CONSTRAINT IF EXISTS clientes_status_check;
        ALTER TABLE tenants.clientes ADD CONSTRAINT clientes_status_check
            CHECK (status IN ('ativo', 'inativo', 'cancelado', 'encerrado'));
        """,
    ),
    Migration(
        7,
        "the key vault refuses a secret wrapped by a retired master key",
        """
        CREATE TABLE tenants.retired_master_keys (
            master_key_id text PRIMARY KEY,
            retired_at    timestamptz NOT NULL DEFAULT now()
        );
        CREATE FUNCTION tenants.vault_write_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- the vault's lock, shared (engine/keys.py VAULT_LOCK): keys rotate-master's final
            -- pass waits for this transaction, or this one waits for it
            PERFORM pg_advisory_xact_lock_shared(%d);
            IF EXISTS (SELECT 1 FROM tenants.retired_master_keys WHERE master_key_id = NEW.master_key_id) THEN
                RAISE EXCEPTION 'a secret wrapped by master key %%, retired by keys rotate-master, cannot be stored: '
                    'wrap it with the current master key', NEW.master_key_id;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER vault_write_guard BEFORE INSERT OR UPDATE ON tenants.backup_keys
            FOR EACH ROW EXECUTE FUNCTION tenants.vault_write_guard();
        CREATE TRIGGER vault_write_guard BEFORE INSERT OR UPDATE ON tenants.lgpd_ledger_keys
            FOR EACH ROW EXECUTE FUNCTION tenants.vault_write_guard();
        CREATE TRIGGER vault_write_guard BEFORE INSERT OR UPDATE ON tenants.pitr_keys
            FOR EACH ROW EXECUTE FUNCTION tenants.vault_write_guard();
        """ % VAULT_LOCK,
    ),
)


@dataclass(frozen=True)
class MigrationReport:
    database_created: bool
    applied: tuple[int, ...]
    current_version: int


def migrate(settings: Settings) -> MigrationReport:
    """Create the main database if missing and apply pending migrations."""
    created = pg.create_database(settings.pg_dsn, settings.main_db)
    applied: list[int] = []
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        cur.execute("CREATE SCHEMA IF NOT EXISTS tenants")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS tenants.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version FROM tenants.schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            cur.execute(migration.sql)
            cur.execute(
                "INSERT INTO tenants.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied.append(migration.version)
    return MigrationReport(created, tuple(applied), MIGRATIONS[-1].version)
