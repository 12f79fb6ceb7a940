"""PostgreSQL connections and libpq environments for the command-line tools."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .errors import OperationFailed, one_line

_LIBPQ_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}


def dsn_for(admin_dsn: str, dbname: str) -> str:
    """The admin DSN pointed at another database."""
    return psycopg2.extensions.make_dsn(admin_dsn, dbname=dbname)


def tool_env(admin_dsn: str, dbname: str | None = None) -> dict[str, str]:
    """Environment for pg_dump/pg_restore/psql: credentials travel in the environment,
    never on a command line that `ps` would show."""
    params = psycopg2.extensions.parse_dsn(admin_dsn)
    if dbname:
        params["dbname"] = dbname
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in params.items():
        if key in _LIBPQ_ENV:
            env[_LIBPQ_ENV[key]] = str(value)
    return env


def server_label(admin_dsn: str) -> str:
    """host:port of a DSN, for messages (no user, no password)."""
    params = psycopg2.extensions.parse_dsn(admin_dsn)
    return f"{params.get('host', 'localhost')}:{params.get('port', '5432')}"


def connect(admin_dsn: str, dbname: str | None = None, autocommit: bool = False):
    dsn = dsn_for(admin_dsn, dbname) if dbname else admin_dsn
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10, application_name="kryonix-backup")
    except psycopg2.OperationalError as exc:
        where = f"database {dbname}" if dbname else "the admin database"
        raise OperationFailed(
            f"PostgreSQL {server_label(admin_dsn)}, {where}: cannot connect: {one_line(exc)}"
        ) from None
    conn.autocommit = autocommit
    return conn


@contextlib.contextmanager
def connection(admin_dsn: str, dbname: str | None = None, autocommit: bool = False) -> Iterator:
    conn = connect(admin_dsn, dbname, autocommit)
    try:
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException:
        if not autocommit:
            conn.rollback()
        raise
    finally:
        conn.close()


def database_exists(admin_dsn: str, dbname: str) -> bool:
    with connection(admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        return cur.fetchone() is not None


def create_database(admin_dsn: str, dbname: str) -> bool:
    """Create the database if missing; True when it was created."""
    with connection(admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        if cur.fetchone():
            return False
        try:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        except psycopg2.errors.DuplicateDatabase:
            return False
        return True


def terminate_connections(admin_dsn: str, dbname: str) -> int:
    """Terminate every other session on `dbname`; returns how many were terminated."""
    with connection(admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        return int(cur.fetchone()[0])


def drop_database(admin_dsn: str, dbname: str) -> None:
    with connection(admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
