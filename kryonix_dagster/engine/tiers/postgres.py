"""PostgreSQL tier: the tenant's database (`kryonix_cliente_{id}`) and its roles.

Backup: `pg_dump -Fc -Z0` of one exported snapshot, streamed into restic (uncompressed so
restic's chunking deduplicates unchanged data between sessions; restic compresses). Row
counts and row hashes of every table are computed in the same snapshot and kept in the
manifest, so a restore is verified against exactly what was dumped.

Restore: the whole database is rebuilt in a staging database, verified, then swapped in
by rename (the old one is dropped only after the swap), so a failure leaves the tenant's
current data untouched. One schema (`--schema`) is replaced inside a single transaction.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg2
from psycopg2 import sql

from .. import consistency, pg, procs
from ..errors import BadInput, OperationFailed, one_line
from ..manifest import STATUS_OK, TierResult, tier_tags
from ..naming import TenantNames, rename_role
from ..pgdump_header import normalize_dump_header
from ..pg_script import (checksum_assertion, guarded_foreign_key, parse_toc, rename_roles, schema_entries,
                         statements, table_checksum_sql)
from .base import BackupContext, RestoreContext, RestoreOutcome, Stopwatch

TIER = "postgresql"
DUMP_FILE = "database.pgdump"
ROLES_FILE = "roles.json"
CHUNK = 1 << 20
_ROLE_ATTRS = ("rolinherit", "rolcreaterole", "rolcreatedb", "rolcanlogin", "rolreplication", "rolbypassrls")
_ROLE_SQL = {"rolinherit": "INHERIT", "rolcreaterole": "CREATEROLE", "rolcreatedb": "CREATEDB",
             "rolcanlogin": "LOGIN", "rolreplication": "REPLICATION", "rolbypassrls": "BYPASSRLS"}


# --- backup --------------------------------------------------------------------------------

def _tables(cur) -> list[str]:
    cur.execute(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1"
    )
    return [row[0] for row in cur.fetchall()]


def table_checksums(cur) -> dict[str, list]:
    """table → [rows, hash] in the cursor's snapshot."""
    result = {}
    for table in _tables(cur):
        cur.execute(table_checksum_sql(table))
        count, digest = cur.fetchone()
        result[table] = [int(count), digest]
    return result


def _schemas(cur) -> list[str]:
    cur.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' "
                "AND nspname <> 'information_schema' ORDER BY 1")
    return [row[0] for row in cur.fetchall()]


def tenant_roles(settings, names: TenantNames) -> list[dict]:
    """The tenant's roles (named under its role prefix) with attributes and memberships."""
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT rolname, {', '.join(_ROLE_ATTRS)}, rolconnlimit, rolpassword FROM pg_authid "
            "WHERE starts_with(rolname, %s) ORDER BY rolname",
            (names.role_prefix,),
        )
        roles = []
        for row in cur.fetchall():
            role = {"name": row[0], **dict(zip(_ROLE_ATTRS, row[1:7])), "connlimit": row[7], "password": row[8]}
            cur.execute(
                "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s ORDER BY 1", (row[0],))
            role["member_of"] = [r[0] for r in cur.fetchall()]
            roles.append(role)
        return roles


def _dump_chunks(settings, names: TenantNames, snapshot: str, digest) -> Iterator[bytes]:
    """pg_dump's output in chunks; raises if pg_dump fails (the restic wrapper then kills restic)."""
    with tempfile.TemporaryFile() as errfile:
        proc = procs.popen(
            ["pg_dump", "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password"],
            stdout=subprocess.PIPE, stderr=errfile, env=pg.tool_env(settings.pg_dsn, names.database),
        )
        try:
            first = True
            while chunk := proc.stdout.read(CHUNK):
                if first:
                    chunk, first = normalize_dump_header(chunk), False
                digest.update(chunk)
                yield chunk
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            errfile.seek(0)
            raise OperationFailed(f"tenant {names.tenant_id}, tier postgresql: pg_dump failed: "
                                  f"{one_line(errfile.read().decode(errors='replace'))}")


def backup(ctx: BackupContext) -> TierResult:
    watch = Stopwatch()
    names = ctx.names
    if not pg.database_exists(ctx.settings.pg_dsn, names.database):
        raise OperationFailed(f"tenant {names.tenant_id}, tier postgresql: database {names.database} does not exist")
    tags = lambda part: tier_tags(ctx.session_id, TIER, part, ctx.backup_type)  # noqa: E731
    digest = hashlib.sha256()
    # One exported snapshot: pg_dump and the row checksums see exactly the same data.
    with pg.connection(ctx.settings.pg_dsn, names.database) as conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
        snapshot, server_version = cur.fetchone()
        ctx.report.info(f"tenant {names.tenant_id}: dumping {names.database}")
        dump = ctx.repo.backup_stream(_dump_chunks(ctx.settings, names, snapshot, digest), DUMP_FILE,
                                      tags("dump"), ctx.session_time, ctx.restic_progress("postgresql dump"))
        checksums = table_checksums(cur)
        schemas = _schemas(cur)
        ctx.captured[TIER] = _consistency_queries(cur)
    snapshots = {"dump": dump.snapshot_id}
    added = dump.data_added
    roles = tenant_roles(ctx.settings, names)
    if roles:
        roles_snap = ctx.repo.backup_bytes(json.dumps(roles).encode(), ROLES_FILE, tags("roles"), ctx.session_time)
        snapshots["roles"] = roles_snap.snapshot_id
        added += roles_snap.data_added
    rows = sum(count for count, _ in checksums.values())
    return TierResult(
        tier=TIER, status=STATUS_OK, snapshots=snapshots, bytes_processed=dump.total_bytes_processed,
        bytes_added=added, items=rows, duration_seconds=watch.seconds,
        checksums={"dump_sha256": digest.hexdigest(), "dump_bytes": dump.total_bytes_processed, "tables": checksums},
        details={"database": names.database, "schemas": schemas, "tables": len(checksums),
                 "roles": [r["name"] for r in roles], "server_version": server_version},
    )


def _consistency_queries(cur) -> dict[str, list[str] | str]:
    """The consistency rules' SQL, in the dump's snapshot; a failing query records its error."""
    results: dict[str, list[str] | str] = {}
    for key, query in consistency.database_queries(consistency.load_rules()).items():
        cur.execute("SAVEPOINT kryonix_rule")
        try:
            cur.execute(query)
            results[key] = [str(row[0]) for row in cur.fetchall()]
            cur.execute("RELEASE SAVEPOINT kryonix_rule")
        except psycopg2.Error as exc:
            cur.execute("ROLLBACK TO SAVEPOINT kryonix_rule")
            results[key] = one_line(str(exc), 200)
    return results


# --- restore -------------------------------------------------------------------------------

@contextmanager
def _staged_dump(ctx: RestoreContext) -> Iterator[Path]:
    """The session's dump in a private temporary file, its checksum verified."""
    staging = ctx.settings.state_dir / "restore"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=f"cliente_{ctx.target.tenant_id}-", suffix=".pgdump", dir=staging)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            ctx.report.info(f"tenant {ctx.source.tenant_id}: fetching the database dump of session {ctx.manifest.session_id}")
            ctx.repo.dump_to(ctx.result.snapshots["dump"], f"/{DUMP_FILE}", out)
        expected = ctx.result.checksums.get("dump_sha256")
        if expected and _sha256(path) != expected:
            raise OperationFailed(f"tenant {ctx.source.tenant_id}, tier postgresql: the dump of session "
                                  f"{ctx.manifest.session_id} does not match its manifest checksum")
        yield path
    finally:
        path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _restore_roles(ctx: RestoreContext, outcome: RestoreOutcome) -> None:
    """Create the tenant's roles that are missing (renamed for --into). Existing roles are
    left as they are; passwords are copied only back into the same tenant."""
    if "roles" not in ctx.result.snapshots:
        return
    roles = json.loads(ctx.repo.dump_bytes(ctx.result.snapshots["roles"], f"/{ROLES_FILE}"))
    with pg.connection(ctx.settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        for role in roles:
            name = rename_role(role["name"], ctx.source, ctx.target) if ctx.into_other else role["name"]
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
            if cur.fetchone():
                continue
            flags = [(_ROLE_SQL[a] if role.get(a) else "NO" + _ROLE_SQL[a]) for a in _ROLE_ATTRS]
            cur.execute(sql.SQL("CREATE ROLE {} " + " ".join(flags) + " CONNECTION LIMIT %s").format(
                sql.Identifier(name)), (role.get("connlimit", -1),))
            if role.get("password") and not ctx.into_other:
                cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(name)), (role["password"],))
            elif role.get("password"):
                outcome.warnings.append(f"role {name} created without a password (passwords are not copied across tenants)")
            for group in role.get("member_of", []):
                if ctx.source.owns_role(group):
                    group = rename_role(group, ctx.source, ctx.target) if ctx.into_other else group
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (group,))
                if cur.fetchone():
                    cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))
            ctx.report.info(f"created role {name}")


def _run_psql_script(ctx: RestoreContext, database: str, chunks: Iterator[bytes], single_transaction: bool,
                     outcome: RestoreOutcome) -> None:
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"]
    if single_transaction:
        args.append("--single-transaction")
    with tempfile.TemporaryFile() as errfile:
        proc = procs.popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errfile,
                           env=pg.tool_env(ctx.settings.pg_dsn, database))
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        code = proc.wait()
        errfile.seek(0)
        stderr = errfile.read().decode(errors="replace")
    for line in stderr.splitlines():
        if "kryonix:" in line and "WARNING" in line:
            outcome.warnings.append(line.split("kryonix:", 1)[1].strip())
    if code != 0:
        errors = [l for l in stderr.splitlines() if "ERROR" in l or "FATAL" in l] or stderr.splitlines()[-3:]
        raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: restore into {database} failed "
                              f"and was rolled back: {one_line(' '.join(errors))}")


def _pg_restore_script(ctx: RestoreContext, dump: Path, list_file: Path | None = None) -> Iterator[bytes]:
    """pg_restore's SQL script, with the source's role names rewritten when restoring --into."""
    args = ["pg_restore", "--file=-"]
    if list_file:
        args.append(f"--use-list={list_file}")
    proc = procs.popen([*args, str(dump)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = (line.decode("utf-8", errors="surrogateescape") for line in proc.stdout)
    if ctx.into_other:
        lines = rename_roles(lines, ctx.source.role_prefix, ctx.target.role_prefix)
    for line in lines:
        yield line.encode("utf-8", errors="surrogateescape")
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: pg_restore failed: {one_line(err)}")


def _verify_tables(ctx: RestoreContext, database: str, tables: dict[str, list]) -> None:
    with pg.connection(ctx.settings.pg_dsn, database) as conn, conn.cursor() as cur:
        restored = table_checksums(cur)
    expected = {t: v for t, v in ctx.result.checksums.get("tables", {}).items() if t in tables}
    wrong = sorted(t for t in expected if restored.get(t) != expected[t])
    missing = sorted(set(expected) - set(restored))
    if wrong or missing:
        raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: restored data does not match "
                              f"the backup in {', '.join((wrong + missing)[:5])}; the current database was kept")


def _restore_database(ctx: RestoreContext, dump: Path, outcome: RestoreOutcome) -> None:
    target = ctx.target.database
    staging = f"{target}__restoring"
    previous = f"{target}__previous"
    dsn = ctx.settings.pg_dsn
    pg.drop_database(dsn, staging)  # a leftover of an interrupted restore
    pg.create_database(dsn, staging)
    try:
        ctx.report.info(f"restoring into staging database {staging}")
        if ctx.into_other:
            _run_psql_script(ctx, staging, _pg_restore_script(ctx, dump), True, outcome)
        else:
            proc = procs.run(["pg_restore", "--exit-on-error", "--no-password", f"--dbname={staging}", str(dump)],
                             capture_output=True, env=pg.tool_env(dsn, staging))
            if proc.returncode != 0:
                raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: pg_restore failed: "
                                      f"{one_line(proc.stderr.decode(errors='replace'))}")
        tables = ctx.result.checksums.get("tables", {})
        _verify_tables(ctx, staging, tables)
        outcome.restored = sum(count for count, _ in tables.values())
        outcome.connections_terminated = _swap_in(ctx, staging, target, previous)
    except BaseException:
        pg.drop_database(dsn, staging)
        raise


def _swap_in(ctx: RestoreContext, staging: str, target: str, previous: str) -> int:
    """Replace `target` by `staging` with two renames; the old database is dropped last."""
    dsn = ctx.settings.pg_dsn
    terminated = 0
    with pg.connection(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,))
        exists = cur.fetchone() is not None
        pg.drop_database(dsn, previous)
        if exists:
            cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(target)))
            terminated = pg.terminate_connections(dsn, target)
            ctx.report.info(f"terminated {terminated} connection(s) to {target}")
            try:
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(target), sql.Identifier(previous)))
            except Exception:
                cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(target)))
                raise
        try:
            cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(staging), sql.Identifier(target)))
        except Exception:
            if exists:  # put the original back
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(previous), sql.Identifier(target)))
                cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(target)))
            raise
    if exists:
        pg.drop_database(dsn, previous)
    return terminated


def _external_foreign_keys(cur, schema: str) -> list[tuple[str, str, str]]:
    """Foreign keys of other schemas that reference `schema` (dropped with it by CASCADE)."""
    cur.execute(
        "SELECT format('%%I.%%I', rn.nspname, r.relname), c.conname, pg_get_constraintdef(c.oid) "
        "FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace "
        "JOIN pg_class f ON f.oid = c.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace "
        "WHERE c.contype = 'f' AND fn.nspname = %s AND rn.nspname <> %s ORDER BY 1, 2",
        (schema, schema),
    )
    return cur.fetchall()


def _restore_schema(ctx: RestoreContext, dump: Path, outcome: RestoreOutcome) -> None:
    schema = ctx.schema
    target = ctx.target.database
    dsn = ctx.settings.pg_dsn
    listing = procs.run(["pg_restore", "--list", str(dump)], capture_output=True, check=True).stdout.decode()
    main, fks = schema_entries(parse_toc(listing), schema)
    if not main:
        raise BadInput(f"schema {schema} is not in the dump of session {ctx.manifest.session_id}")
    pg.create_database(dsn, target)
    with pg.connection(dsn, target, autocommit=True) as conn, conn.cursor() as cur:
        external = _external_foreign_keys(cur, schema)
    tables = {t: v for t, v in ctx.result.checksums.get("tables", {}).items() if t.split(".")[0].strip('"') == schema}
    with tempfile.TemporaryDirectory(dir=dump.parent) as tmp:
        main_list, fk_list = Path(tmp, "main.list"), Path(tmp, "fk.list")
        main_list.write_text("\n".join(e.line for e in main) + "\n")
        fk_list.write_text("\n".join(e.line for e in fks) + "\n")
        fk_script = b"".join(_pg_restore_script(ctx, dump, fk_list)).decode() if fks else ""

        def script() -> Iterator[bytes]:
            yield sql_text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE;\n")
            yield from _pg_restore_script(ctx, dump, main_list)
            for statement in statements(fk_script):
                yield sql_text(guarded_foreign_key(statement, statement.split("ADD CONSTRAINT", 1)[-1].split()[0]))
            for table, name, definition in external:
                yield sql_text(guarded_foreign_key(
                    f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(name)} {definition}", f"{table}.{name}"))
            for table, (count, digest) in tables.items():
                yield sql_text(checksum_assertion(table, count, digest))

        outcome.connections_terminated = pg.terminate_connections(dsn, target)
        ctx.report.info(f"terminated {outcome.connections_terminated} connection(s) to {target}")
        _run_psql_script(ctx, target, script(), True, outcome)
    outcome.restored = sum(count for count, _ in tables.values())
    outcome.details["schema"] = schema


def sql_text(text: str) -> bytes:
    return text.encode()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    _restore_roles(ctx, outcome)
    with _staged_dump(ctx) as dump:
        if ctx.schema:
            _restore_schema(ctx, dump, outcome)
        else:
            _restore_database(ctx, dump, outcome)
    return outcome


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS). Imported here, not at the top, only so this block stays
# an append to the module.
from .base import TierSpec  # noqa: E402

SPEC = TierSpec(
    TIER, "foundation", True, "postgresql", backup, restore,
    asset_key="postgresql_backup", kinds=("postgres", "restic"), pool="postgres",
    description="The tenant's database kryonix_cliente_{id} and its roles: pg_dump (custom format) of one "
                "snapshot streamed into the tenant's restic repository; rows per table.",
)  # drill: the restore itself verifies every table's rows against the manifest
