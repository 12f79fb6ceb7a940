"""PostgreSQL connections and libpq environments for the command-line tools."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .errors import BadInput, OperationFailed, one_line

# Every libpq connection keyword that has an environment variable (libpq 15-17). Keywords
# without one travel in the conninfo of `tool_conninfo`; secret ones never travel on a command line.
_LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE", "options": "PGOPTIONS", "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE", "requiressl": "PGREQUIRESSL", "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR", "sslsni": "PGSSLSNI", "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION", "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE", "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB",
    "connect_timeout": "PGCONNECT_TIMEOUT", "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "require_auth": "PGREQUIREAUTH", "sslcertmode": "PGSSLCERTMODE", "sslnegotiation": "PGSSLNEGOTIATION",
    "gssdelegation": "PGGSSDELEGATION",
}
_SECRET_KEYWORDS = ("password", "sslpassword")
_UNPARSABLE = ("KRYONIX_PG_DSN is not a valid PostgreSQL connection string (libpq cannot parse it; "
               "percent-encode special characters such as @ : / in the password)")


def parse(admin_dsn: str) -> dict[str, str]:
    """The DSN's keywords. A DSN libpq cannot parse, or parses into a host holding an `@` (an
    unencoded `@` in the password), is refused without quoting any of it: its fragments may be
    pieces of the password."""
    try:
        params = psycopg2.extensions.parse_dsn(admin_dsn)
    except psycopg2.Error:
        raise BadInput(_UNPARSABLE) from None
    if "@" in params.get("host", "") or "@" in params.get("hostaddr", ""):
        raise BadInput(_UNPARSABLE)
    return params


def dsn_for(admin_dsn: str, dbname: str) -> str:
    """The admin DSN pointed at another database."""
    parse(admin_dsn)
    return psycopg2.extensions.make_dsn(admin_dsn, dbname=dbname)


def tool_env(admin_dsn: str, dbname: str | None = None) -> dict[str, str]:
    """Environment for pg_dump/pg_restore/psql: credentials travel in the environment,
    never on a command line that `ps` would show."""
    params = parse(admin_dsn)
    if dbname:
        params["dbname"] = dbname
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in params.items():
        if key in _LIBPQ_ENV:
            env[_LIBPQ_ENV[key]] = str(value)
    return env


def tool_conninfo(admin_dsn: str, dbname: str) -> str:
    """The tools' `--dbname`: the database and the DSN's keywords that have no environment
    variable (keepalives, tcp_user_timeout, …). Holds no secret: it is visible in `ps`."""
    params = parse(admin_dsn)
    extra = {k: v for k, v in params.items() if k not in _LIBPQ_ENV}
    secret = [k for k in extra if k in _SECRET_KEYWORDS]
    if secret:
        raise BadInput(f"KRYONIX_PG_DSN keyword {secret[0]} cannot be given to pg_dump/psql without "
                       "showing it on their command line: use a key file without a passphrase or a service file")
    return psycopg2.extensions.make_dsn(**extra, dbname=dbname)


def tool_args(admin_dsn: str, dbname: str) -> tuple[list[str], dict[str, str]]:
    """(`--dbname=…` argument, environment) for a PostgreSQL tool connecting to `dbname`."""
    return [f"--dbname={tool_conninfo(admin_dsn, dbname)}"], tool_env(admin_dsn, dbname)


def server_label(admin_dsn: str) -> str:
    """host:port of a DSN, for messages (no user, no password)."""
    params = parse(admin_dsn)
    return f"{params.get('host', 'localhost')}:{params.get('port', '5432')}"


def _without_secrets(message: str, admin_dsn: str) -> str:
    params = parse(admin_dsn)
    for key in _SECRET_KEYWORDS:
        if params.get(key):
            message = message.replace(params[key], "***")
    return message


def connect(admin_dsn: str, dbname: str | None = None, autocommit: bool = False):
    dsn = dsn_for(admin_dsn, dbname) if dbname else admin_dsn
    parse(dsn)
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10, application_name="kryonix-backup")
    except psycopg2.OperationalError as exc:
        where = f"database {dbname}" if dbname else "the admin database"
        raise OperationFailed(
            f"PostgreSQL {server_label(admin_dsn)}, {where}: cannot connect: "
            f"{one_line(_without_secrets(str(exc), admin_dsn))}"
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
