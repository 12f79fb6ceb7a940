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
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg2
from psycopg2 import sql

from .. import consistency, pg, procs
from ..errors import BadInput, OperationFailed, one_line
from ..manifest import STATUS_OK, TierResult, tier_tags
from ..naming import TenantNames, rename_role
from ..pgdump_header import normalize_dump_header
from ..pg_script import (FIXED_RENDERING, HASH_RENDERING, checksum_assertion, fixed_rendering_script,
                         ddl_label, foreign_keys_touching, guarded_foreign_key, outside_dependents_guard,
                         outside_dependents_sql, parse_toc, rename_roles, schema_entries, statements,
                         table_checksum_sql)
from .base import BackupContext, RestoreContext, RestoreOutcome, TierSpec
from ..reporting import Stopwatch

TIER = "postgresql"
DUMP_FILE = "database.pgdump"
ROLES_FILE = "roles.json"
CHUNK = 1 << 20
# pg_restore's parallel jobs into the staging database (tables and indexes load side by side;
# 200 MB on 2 cores: 16-18 s with one job, 7-10 s with two, measured under load)
RESTORE_JOBS = max(1, min(4, os.cpu_count() or 1))
_ROLE_ATTRS = ("rolinherit", "rolcreaterole", "rolcreatedb", "rolcanlogin", "rolreplication", "rolbypassrls")
# Privileges beyond the tenant's names: a (tampered) restore point must not hand them out.
_ROLE_ATTRS_NEVER_RESTORED = ("rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")
_ROLE_SQL = {"rolinherit": "INHERIT", "rolcreaterole": "CREATEROLE", "rolcreatedb": "CREATEDB",
             "rolcanlogin": "LOGIN", "rolreplication": "REPLICATION", "rolbypassrls": "BYPASSRLS"}


# --- backup --------------------------------------------------------------------------------

_RELATIONS = ("SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
              "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ({kinds}) "
              "AND c.relpersistence <> 't' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
              "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1")


def _tables(cur, largest_first: bool = False) -> list[str]:
    """The tables whose rows the dump holds: not temporary tables (other sessions' are unreadable
    and pg_dump skips them), not foreign tables (their rows live elsewhere; see `_foreign_tables`)."""
    query = _RELATIONS.format(kinds="'r', 'p'")
    if largest_first:
        query = query.replace("ORDER BY 1", "ORDER BY pg_total_relation_size(c.oid) DESC, 1")
    cur.execute(query)
    return [row[0] for row in cur.fetchall()]


def _foreign_tables(cur) -> list[str]:
    """Foreign tables: the dump has their definition only, never their rows, so they are not hashed."""
    cur.execute(_RELATIONS.format(kinds="'f'"))
    return [row[0] for row in cur.fetchall()]


def fix_rendering(cur) -> None:
    """Make row text independent of the database's and the session's settings."""
    for statement in FIXED_RENDERING:
        cur.execute(statement)


def table_checksums(cur, fixed_rendering: bool = True) -> dict[str, list]:
    """table → [rows, hash] in the cursor's snapshot (rendered in HASH_RENDERING unless told not:
    restore points taken before it were hashed in the database's own settings)."""
    if fixed_rendering:
        fix_rendering(cur)
    result = {}
    for table in _tables(cur):
        result[table] = _table_checksum(cur, table)
    return result


def _table_checksum(cur, table: str) -> list:
    cur.execute(table_checksum_sql(table))
    count, digest = cur.fetchone()
    return [int(count), digest]


def staged_checksums(dsn: str, database: str, fixed_rendering: bool = True,
                     jobs: int = RESTORE_JOBS) -> dict[str, list]:
    """`table_checksums` of a database nobody else writes (a staging database), the tables
    spread over `jobs` connections, largest first: the server hashes on every core."""
    with pg.connection(dsn, database) as conn, conn.cursor() as cur:
        queue = _tables(cur, largest_first=True)
    lock = threading.Lock()

    def worker() -> dict[str, list]:
        found = {}
        with pg.connection(dsn, database) as conn, conn.cursor() as cur:
            if fixed_rendering:
                fix_rendering(cur)
            while True:
                with lock:
                    if not queue:
                        return found
                    table = queue.pop(0)
                found[table] = _table_checksum(cur, table)

    workers = max(1, min(jobs, len(queue)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pg-verify") as pool:
        parts = list(pool.map(lambda _: worker(), range(workers)))
    return dict(sorted((table, value) for part in parts for table, value in part.items()))


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


def database_properties(cur, database: str) -> dict | None:
    """What pg_dump leaves out: the database's owner, connection limit, ACL (e.g. REVOKE CONNECT
    FROM PUBLIC) and its settings (ALTER DATABASE … SET, ALTER ROLE … IN DATABASE … SET)."""
    cur.execute(
        "SELECT pg_get_userbyid(d.datdba), d.datconnlimit, d.datacl IS NULL, "
        "(SELECT coalesce(json_agg(json_build_array(CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
        "ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable)), '[]') "
        "FROM aclexplode(d.datacl) a), "
        "(SELECT coalesce(json_agg(json_build_array(CASE WHEN s.setrole = 0 THEN NULL "
        "ELSE pg_get_userbyid(s.setrole) END, s.setconfig)), '[]') "
        "FROM pg_db_role_setting s WHERE s.setdatabase = d.oid) "
        "FROM pg_database d WHERE d.datname = %s", (database,))
    row = cur.fetchone()
    if row is None:
        return None
    owner, connlimit, default_acl, acl, role_settings = row
    return {"owner": owner, "connlimit": connlimit, "acl": None if default_acl else acl, "settings": role_settings}


def _dump_chunks(settings, names: TenantNames, snapshot: str, digest) -> Iterator[bytes]:
    """pg_dump's output in chunks; raises if pg_dump fails (the restic wrapper then kills restic)."""
    with tempfile.TemporaryFile() as errfile:
        db_args, env = pg.tool_args(settings.pg_dsn, names.database)
        proc = procs.popen(
            ["pg_dump", "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password", *db_args],
            stdout=subprocess.PIPE, stderr=errfile, env=env,
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
    heal_interrupted_swap(ctx.settings, names, ctx.report)
    if not pg.database_exists(ctx.settings.pg_dsn, names.database):
        raise OperationFailed(f"tenant {names.tenant_id}, tier postgresql: database {names.database} does not exist")
    tags = lambda part: tier_tags(ctx.session_id, TIER, part, ctx.backup_type)  # noqa: E731
    digest = hashlib.sha256()
    reusable = _reusable_hashes(ctx)
    # One exported snapshot: pg_dump and the row checksums see exactly the same data. Without
    # hashes to reuse, the exporting transaction hashes the rows while pg_dump streams into
    # restic (the server reads the tables twice, side by side); with them, it hashes after the
    # dump only if the dump changed. The roles are written by a second restic process meanwhile.
    with pg.connection(ctx.settings.pg_dsn, names.database) as conn, conn.cursor() as cur, \
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="pg-tier") as pool:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
        snapshot, server_version = cur.fetchone()
        ctx.report.info(f"tenant {names.tenant_id}: dumping {names.database}")
        catalog = pool.submit(_snapshot_facts, cur, names.database, reusable is None)
        roles_write = pool.submit(_backup_roles, ctx, tags("roles"))
        try:
            dump = ctx.repo.backup_stream(_dump_chunks(ctx.settings, names, snapshot, digest), DUMP_FILE,
                                          tags("dump"), ctx.session_time, ctx.restic_progress("postgresql dump"))
        finally:
            wait([catalog, roles_write])  # the connection stays open until the hashing is done
        ctx.captured[TIER], schemas, foreign, properties, checksums = catalog.result()
        checksums_of = None
        if checksums is None and reusable.dump_sha256 == digest.hexdigest():
            checksums, checksums_of = reusable.tables, reusable.session_id  # the same bytes: the same rows
        elif checksums is None:
            checksums = table_checksums(cur)  # still the exported snapshot's transaction
    roles, roles_snap = roles_write.result()
    if foreign:
        ctx.report.warn(f"tenant {names.tenant_id}: foreign table(s) {', '.join(foreign[:5])}: their definition is "
                        "backed up, their rows are not (they live outside the database)")
    snapshots = {"dump": dump.snapshot_id}
    added = dump.data_added
    if roles_snap is not None:
        snapshots["roles"] = roles_snap.snapshot_id
        added += roles_snap.data_added
    rows = sum(count for count, _ in checksums.values())
    return TierResult(
        tier=TIER, status=STATUS_OK, snapshots=snapshots, bytes_processed=dump.total_bytes_processed,
        bytes_added=added, items=rows, duration_seconds=watch.seconds,
        checksums={"dump_sha256": digest.hexdigest(), "dump_bytes": dump.total_bytes_processed, "tables": checksums,
                   "rendering": HASH_RENDERING} | ({"tables_hashed_by": checksums_of} if checksums_of else {}),
        details={"database": names.database, "schemas": schemas, "tables": len(checksums),
                 "roles": [r["name"] for r in roles], "server_version": server_version,
                 "foreign_tables": foreign, "database_properties": properties},
    )


@dataclass(frozen=True)
class ReusableHashes:
    """The previous restore point's row hashes, good for this session if its dump is the same."""
    session_id: str
    dump_sha256: str
    tables: dict[str, list]


def _reusable_hashes(ctx: BackupContext) -> ReusableHashes | None:
    """An incremental whose dump comes out byte-identical to the previous restore point's (same
    sha256 of the same pg_dump rendering of the same snapshot contents) has the same table
    contents, so that restore point's row hashes — taken from the data that produced those
    bytes, and what its restores are verified against — verify this one as well, and the tables
    are read once, by pg_dump. A full session always hashes afresh."""
    try:
        previous = ctx.previous_tier(TIER)
    except Exception as exc:  # the previous manifest unreadable: hash afresh, as a full session does
        ctx.report.warn(f"previous restore point unreadable, hashing afresh: {one_line(str(exc), 200)}")
        return None
    if previous is None or previous.status != STATUS_OK:
        return None
    sums = previous.checksums
    if sums.get("rendering") != HASH_RENDERING or not sums.get("dump_sha256") or not isinstance(sums.get("tables"), dict):
        return None
    session_id = sums.get("tables_hashed_by") or ctx.previous.session_id
    return ReusableHashes(session_id, sums["dump_sha256"], sums["tables"])


def _snapshot_facts(cur, database: str, hash_rows: bool) -> tuple:
    """What the session keeps of the exported snapshot besides the dump: the consistency rules'
    results (first: the hashing fixes the rendering), schemas, foreign tables, database
    properties, then row counts and hashes (None unless `hash_rows`)."""
    facts = (_consistency_queries(cur), _schemas(cur), _foreign_tables(cur), database_properties(cur, database))
    return (*facts, table_checksums(cur) if hash_rows else None)


def _backup_roles(ctx: BackupContext, tags: list[str]):
    """The tenant's roles as their own small snapshot (None when it has none)."""
    roles = tenant_roles(ctx.settings, ctx.names)
    if not roles:
        return roles, None
    return roles, ctx.repo.backup_bytes(json.dumps(roles).encode(), ROLES_FILE, tags, ctx.session_time)


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

def _staging_dir(settings) -> Path:
    """The private folder of restore staging files and swap journals (0700 even if it existed)."""
    staging = Path(settings.state_dir) / "restore"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging.chmod(0o700)
    return staging


def _sweep_staged_dumps(settings, names: TenantNames) -> int:
    """Remove plaintext dumps a killed restore of this tenant left behind (the tenant's lease is
    held, so none of them belongs to a running restore)."""
    removed = 0
    for leftover in _staging_dir(settings).glob(f"{names.local_name}-*.pgdump"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def _staged_dump(ctx: RestoreContext) -> Iterator[Path]:
    """The session's dump in a private temporary file, its checksum verified (taken while the
    file is written: one pass) before anything reads it."""
    fd, name = tempfile.mkstemp(prefix=f"{ctx.target.local_name}-", suffix=".pgdump",
                                dir=_staging_dir(ctx.settings))
    path = Path(name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            ctx.report.info(f"tenant {ctx.source.tenant_id}: fetching the database dump of session {ctx.manifest.session_id}")
            for chunk in ctx.repo.dump_chunks(ctx.result.snapshots["dump"], f"/{DUMP_FILE}", CHUNK):
                digest.update(chunk)
                out.write(chunk)
        expected = ctx.result.checksums.get("dump_sha256")
        if expected and digest.hexdigest() != expected:
            raise OperationFailed(f"tenant {ctx.source.tenant_id}, tier postgresql: the dump of session "
                                  f"{ctx.manifest.session_id} does not match its manifest checksum")
        yield path
    finally:
        path.unlink(missing_ok=True)


def _set_password_unlogged(conn, role: str, password_hash: str) -> None:
    """Copy a role's password hash without it reaching the server log: psycopg2 interpolates
    parameters client-side, so the statement text holds the hash; logging is off for it."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            cur.execute("SET LOCAL log_statement = 'none'")
            cur.execute("SET LOCAL log_min_duration_statement = -1")
            cur.execute("SET LOCAL log_min_error_statement = 'panic'")
            cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(role)), (password_hash,))
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


def _snapshot_roles(ctx: RestoreContext) -> list[dict]:
    """The restore point's roles.json, refused before anything is changed unless it is well formed
    and every role it names is one of the source tenant's (a tampered snapshot could otherwise
    create another tenant's roles, or any role, on the cluster)."""
    if "roles" not in ctx.result.snapshots:
        return []
    where = f"tenant {ctx.source.tenant_id}, tier postgresql"
    try:
        roles = json.loads(ctx.repo.dump_bytes(ctx.result.snapshots["roles"], f"/{ROLES_FILE}"))
    except ValueError:
        raise OperationFailed(f"{where}: the restore point's {ROLES_FILE} is not JSON; nothing was changed") from None
    if not isinstance(roles, list) or not all(_well_formed_role(role) for role in roles):
        raise OperationFailed(f"{where}: the restore point's {ROLES_FILE} is malformed; nothing was changed")
    foreign = [role["name"] for role in roles if not ctx.source.owns_role(role["name"])]
    if foreign:
        raise OperationFailed(f"{where}: the restore point names role(s) outside the tenant's names: "
                              f"{one_line(', '.join(foreign), 300)}; nothing was changed")
    return roles


def _well_formed_role(role: object) -> bool:
    return (isinstance(role, dict) and isinstance(role.get("name"), str)
            and isinstance(role.get("connlimit", -1), int) and isinstance(role.get("password"), (str, type(None)))
            and isinstance(role.get("member_of", []), list)
            and all(isinstance(group, str) for group in role.get("member_of", [])))


def _restore_roles(ctx: RestoreContext, roles: list[dict], outcome: RestoreOutcome) -> None:
    """Create the tenant's roles that are missing (renamed for --into); `roles` passed
    `_snapshot_roles`. Existing roles are left as they are; passwords are copied only back into
    the same tenant. Only memberships in the source's own roles are given (renamed for --into):
    never in a role the tenant does not own (pg_execute_server_program, another tenant's)."""
    created = []
    with pg.connection(ctx.settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        for role in roles:
            name = rename_role(role["name"], ctx.source, ctx.target) if ctx.into_other else role["name"]
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
            if cur.fetchone():
                continue
            flags = [(_ROLE_SQL[a] if role.get(a) and a not in _ROLE_ATTRS_NEVER_RESTORED else "NO" + _ROLE_SQL[a])
                     for a in _ROLE_ATTRS]
            withheld = [_ROLE_SQL[a] for a in _ROLE_ATTRS_NEVER_RESTORED if role.get(a)]
            if withheld:
                outcome.warnings.append(f"role {name} created without {', '.join(withheld)} (a restore point never "
                                        "gives cluster-wide privileges: grant them again by hand if they were meant)")
            cur.execute(sql.SQL("CREATE ROLE {} " + " ".join(flags) + " CONNECTION LIMIT %s").format(
                sql.Identifier(name)), (role.get("connlimit", -1),))
            if role.get("password") and not ctx.into_other:
                _set_password_unlogged(conn, name, role["password"])
            elif role.get("password"):
                outcome.warnings.append(f"role {name} created without a password (passwords are not copied across tenants)")
            created.append((name, role.get("member_of", [])))
            ctx.report.info(f"created role {name}")
        for name, groups in created:  # once every role exists, so memberships among them are given too
            _grant_memberships(ctx, cur, name, groups, outcome)


def _grant_memberships(ctx: RestoreContext, cur, name: str, groups: list[str], outcome: RestoreOutcome) -> None:
    for group in groups:
        if not ctx.source.owns_role(group):
            outcome.warnings.append(f"role {name}: membership in {group} not given (not a role of tenant "
                                    f"{ctx.source.tenant_id})")
            continue
        if ctx.into_other:
            group = rename_role(group, ctx.source, ctx.target)
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (group,))
        if cur.fetchone():
            cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))


def _run_psql_script(ctx: RestoreContext, database: str, chunks: Iterator[bytes], single_transaction: bool,
                     outcome: RestoreOutcome) -> None:
    db_args, env = pg.tool_args(ctx.settings.pg_dsn, database)
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password", *db_args]
    if single_transaction:
        args.append("--single-transaction")
    with tempfile.TemporaryFile() as errfile:
        proc = procs.popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errfile, env=env)
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
        if "kryonix-lgpd:" in line:  # the erasure ledger's in-transaction counts (engine/lgpd/reapply.py)
            outcome.details.setdefault("_lgpd", []).append(line.split("kryonix-lgpd:", 1)[1].strip())
        elif "kryonix:" in line and "WARNING" in line:
            outcome.warnings.append(line.split("kryonix:", 1)[1].strip())
    if code != 0:
        errors = [l for l in stderr.splitlines() if "ERROR" in l or "FATAL" in l] or stderr.splitlines()[-3:]
        raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: restore into {database} failed "
                              f"and was rolled back: {one_line(' '.join(errors))}")


def _pg_restore_script(ctx: RestoreContext, dump: Path, list_file: Path | None = None,
                       schema_only: bool = False) -> Iterator[bytes]:
    """pg_restore's SQL script, with the source's role names rewritten when restoring --into."""
    args = ["pg_restore", "--file=-"]
    if list_file:
        args.append(f"--use-list={list_file}")
    if schema_only:
        args.append("--schema-only")
    proc = procs.popen([*args, str(dump)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = (line.decode("utf-8", errors="surrogateescape") for line in proc.stdout)
    if ctx.into_other:
        lines = rename_roles(lines, ctx.source.role_prefix, ctx.target.role_prefix)
    for line in lines:
        yield line.encode("utf-8", errors="surrogateescape")
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: pg_restore failed: {one_line(err)}")


def _fixed_rendering(ctx: RestoreContext) -> bool:
    """Whether the manifest's row hashes were taken in HASH_RENDERING (restore points of older
    versions were hashed in the database's own settings)."""
    return ctx.result.checksums.get("rendering") == HASH_RENDERING


def _verify_tables(ctx: RestoreContext, database: str, tables: dict[str, list]) -> None:
    restored = staged_checksums(ctx.settings.pg_dsn, database, _fixed_rendering(ctx))
    expected = {t: v for t, v in ctx.result.checksums.get("tables", {}).items() if t in tables}
    wrong = sorted(t for t in expected if restored.get(t) != expected[t])
    missing = sorted(set(expected) - set(restored))
    if wrong or missing:
        raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: restored data does not match "
                              f"the backup in {', '.join((wrong + missing)[:5])}; the current database was kept")


# --- database properties -------------------------------------------------------------------

_LIST_QUOTED_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries",
                         "local_preload_libraries", "shared_preload_libraries"}


def _setting_values(name: str, value: str) -> sql.Composable:
    """`value` as stored in pg_db_role_setting, as the TO clause of ALTER … SET."""
    if name.lower() not in _LIST_QUOTED_SETTINGS:
        return sql.Literal(value)
    items, current, quoted, i = [], "", False, 0
    while i < len(value):
        char = value[i]
        if char == '"' and quoted and value[i + 1:i + 2] == '"':
            current, i = current + '"', i + 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append(current.strip())
            current = ""
        else:
            current += char
        i += 1
    items.append(current.strip())
    return sql.SQL(", ").join(sql.Literal(item) for item in items)


def _local_role(ctx: RestoreContext, role: str | None, outcome: RestoreOutcome, recorded: bool = True) -> str | None:
    """A role named in the database properties, as the target knows it (None: skip). `recorded`:
    the properties come from the restore point (not the target's own live ones). Recorded ones
    into another tenant (or a drill's scratch names) keep only the source's roles (renamed),
    PUBLIC and the cluster's admin: never a grant or setting for a third tenant's role."""
    if role is None or role == "PUBLIC":
        return role
    with pg.connection(ctx.settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        if recorded and ctx.into_other:
            if ctx.source.owns_role(role):
                role = rename_role(role, ctx.source, ctx.target)
            elif not _is_cluster_admin(cur, role):
                outcome.warnings.append(f"database property for role {role} not restored into tenant "
                                        f"{ctx.target.tenant_id}: not a role of tenant {ctx.source.tenant_id}")
                return None
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone():
            return role
    outcome.warnings.append(f"database property for role {role} not restored: the role does not exist")
    return None


def _is_cluster_admin(cur, role: str) -> bool:
    """The bootstrap superuser or the role the product connects as (owner of the databases it creates)."""
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s AND (oid = 10 OR rolname = current_user)", (role,))
    return cur.fetchone() is not None


def _grantee(role: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if role == "PUBLIC" else sql.Identifier(role)


def _apply_database_properties(ctx: RestoreContext, database: str, props: dict, outcome: RestoreOutcome,
                               recorded: bool = True) -> None:
    """Give `database` the owner, connection limit, ACL and settings in `props` (`recorded`: the
    restore point's, else the target's own live ones; see `_local_role`)."""
    db = sql.Identifier(database)
    with pg.connection(ctx.settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        owner = _local_role(ctx, props.get("owner"), outcome, recorded)
        if owner:
            cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(owner)))
        cur.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(int(props.get("connlimit", -1)))))
        for role, config in props.get("settings") or []:
            target_role = _local_role(ctx, role, outcome, recorded)
            if role is not None and target_role is None:
                continue
            for entry in config:
                name, _, value = entry.partition("=")
                setting = sql.SQL("SET {} TO {}").format(sql.Identifier(*name.split(".")), _setting_values(name, value))
                if role is None:
                    cur.execute(sql.SQL("ALTER DATABASE {} ").format(db) + setting)
                else:
                    cur.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} ").format(sql.Identifier(target_role), db) + setting)
        if props.get("acl") is not None:
            _apply_acl(ctx, cur, database, props["acl"], outcome, recorded)


_DATABASE_PRIVILEGES = ("CREATE", "CONNECT", "TEMPORARY")


def _apply_acl(ctx: RestoreContext, cur, database: str, acl: list, outcome: RestoreOutcome,
               recorded: bool = True) -> None:
    """Reach the recorded ACL from the database's default one by the fewest REVOKEs and GRANTs."""
    cur.execute("SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, "
                "a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(coalesce(d.datacl, "
                "acldefault('d', d.datdba))) a WHERE d.datname = %s", (database,))
    current = {tuple(row) for row in cur.fetchall()}
    wanted = set()
    for role, privilege, grantable in acl:
        if privilege not in _DATABASE_PRIVILEGES:  # spliced into GRANT as SQL: never a manifest's free text
            outcome.warnings.append(f"database privilege {one_line(str(privilege), 60)!r} not restored: not a "
                                    "database privilege")
            continue
        local = _local_role(ctx, role, outcome, recorded)
        if local:
            wanted.add((local, privilege, grantable))
    db = sql.Identifier(database)
    for role, privilege, _ in sorted(current - wanted):
        cur.execute(sql.SQL("REVOKE {} ON DATABASE {} FROM {}").format(sql.SQL(privilege), db, _grantee(role)))
    for role, privilege, grantable in sorted(wanted - current):
        cur.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}" + (" WITH GRANT OPTION" if grantable else "")).format(
            sql.SQL(privilege), db, _grantee(role)))


def _properties_for(ctx: RestoreContext) -> tuple[dict | None, bool]:
    """The properties the restored database gets, and whether they are the restore point's
    (recorded): the recorded ones; into another tenant whose database exists, that tenant's own
    (its owner, isolation and settings stay its own)."""
    if ctx.into_other:
        with pg.connection(ctx.settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
            own = database_properties(cur, ctx.target.database)
        if own is not None:
            return own, False
    return ctx.result.details.get("database_properties"), True


# --- full restore: staging database, then a journaled swap ------------------------------------

def _restore_database(ctx: RestoreContext, dump: Path, outcome: RestoreOutcome) -> None:
    target = ctx.target.database
    staging = ctx.target.restoring_database
    previous = ctx.target.previous_database
    dsn = ctx.settings.pg_dsn
    properties, recorded = _properties_for(ctx)
    pg.drop_database(dsn, staging)  # a leftover of an interrupted restore
    pg.create_database(dsn, staging)
    try:
        ctx.report.info(f"restoring into staging database {staging}")
        if ctx.into_other:
            _run_psql_script(ctx, staging, _pg_restore_script(ctx, dump), True, outcome)
        else:
            db_args, env = pg.tool_args(dsn, staging)
            proc = procs.run(["pg_restore", "--exit-on-error", f"--jobs={RESTORE_JOBS}", "--no-password", *db_args,
                              str(dump)],
                             capture_output=True, env=env)
            if proc.returncode != 0:
                raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: pg_restore failed: "
                                      f"{one_line(proc.stderr.decode(errors='replace'))}")
        tables = ctx.result.checksums.get("tables", {})
        _verify_tables(ctx, staging, tables)
        if properties:
            _apply_database_properties(ctx, staging, properties, outcome, recorded)
        outcome.restored = sum(count for count, _ in tables.values())
        outcome.details.update(ctx.reapply(TIER, staging))  # the erasure ledger, before the data goes live
        outcome.connections_terminated = _swap_in(ctx, staging, target, previous)
    except BaseException:
        pg.drop_database(dsn, staging)
        raise


def _journal_path(settings, database: str) -> Path:
    return _staging_dir(settings) / f"{database}.swap.json"


def _write_journal(path: Path, allow_connections: bool) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        json.dump({"allow_connections": allow_connections}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_journal(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def _database_state(cur, name: str) -> bool | None:
    """None when `name` does not exist, else whether it allows connections."""
    cur.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (name,))
    row = cur.fetchone()
    return None if row is None else bool(row[0])


def _rename(cur, old: str, new: str) -> None:
    cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def _allow_connections(cur, database: str, allow: bool) -> None:
    cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        sql.Identifier(database), sql.SQL("true" if allow else "false")))


def heal_interrupted_swap(settings, names: TenantNames, report=None) -> str | None:
    """Finish or undo a database swap a killed restore left half done; called, under the tenant's
    lease, before every backup and restore of the tenant. Returns what it did (None: nothing).

    live missing, `__previous` present → the kill came between the two renames: roll back
      (`__previous` becomes the live database again); `__previous` is never dropped then.
    live and `__previous` present → the swap finished, its cleanup did not: roll forward (drop
      the old copy).
    A leftover `__restoring` (an unswapped copy of a restore point) is dropped; the journal's
    `allow_connections` is given back to the live database."""
    live, previous, staging = names.database, names.previous_database, names.restoring_database
    journal = _journal_path(settings, live)
    entry = _read_journal(journal)
    dsn = settings.pg_dsn
    action = None
    with pg.connection(dsn, autocommit=True) as conn, conn.cursor() as cur:
        live_state, previous_state = _database_state(cur, live), _database_state(cur, previous)
        if live_state is None and previous_state is not None:
            _rename(cur, previous, live)
            _allow_connections(cur, live, (entry or {}).get("allow_connections", True))
            action = "rolled back"
        elif live_state is not None and previous_state is not None:
            action = "rolled forward"
        elif entry is not None and live_state is not None:
            _allow_connections(cur, live, entry.get("allow_connections", True))
            action = "connections re-allowed"
        staging_left = _database_state(cur, staging) is not None
    if action == "rolled forward":
        pg.drop_database(dsn, previous)
    if staging_left:
        pg.drop_database(dsn, staging)
    journal.unlink(missing_ok=True)
    if action and report is not None:
        report.warn(f"tenant {names.tenant_id}, tier postgresql: an interrupted restore swap of {live} was {action}")
    return action


def _swap_in(ctx: RestoreContext, staging: str, target: str, previous: str) -> int:
    """Replace `target` by `staging` with two renames; the old database is dropped last. A journal
    (written before the first change, removed after the last) lets `heal_interrupted_swap`
    finish or undo the swap after a kill."""
    dsn = ctx.settings.pg_dsn
    journal = _journal_path(ctx.settings, target)
    terminated = 0
    with pg.connection(dsn, autocommit=True) as conn, conn.cursor() as cur:
        allowed = _database_state(cur, target)
        exists = allowed is not None
        if _database_state(cur, previous) is not None:
            if not exists:  # never drop the only copy: heal_interrupted_swap runs first
                raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: {target} is missing and "
                                      f"{previous} holds its data; run the restore again to put it back")
            pg.drop_database(dsn, previous)
        if exists:
            _write_journal(journal, allowed)
            _allow_connections(cur, target, False)
            terminated = pg.terminate_connections(dsn, target)
            ctx.report.info(f"terminated {terminated} connection(s) to {target}")
            try:
                _rename(cur, target, previous)
            except Exception:
                _allow_connections(cur, target, allowed)
                journal.unlink(missing_ok=True)
                raise
        try:
            _rename(cur, staging, target)
        except Exception:
            if exists:  # put the original back
                _rename(cur, previous, target)
                _allow_connections(cur, target, allowed)
                journal.unlink(missing_ok=True)
            raise
    if exists:
        pg.drop_database(dsn, previous)
        journal.unlink(missing_ok=True)
    return terminated


# --- one schema ----------------------------------------------------------------------------

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


def _refuse_outside_dependents(ctx: RestoreContext) -> None:
    """`DROP SCHEMA … CASCADE` would also drop what other schemas build on this one (columns of
    its types, views, defaults, functions): refuse, naming them, before anything is touched."""
    if not pg.database_exists(ctx.settings.pg_dsn, ctx.target.database):
        return
    with pg.connection(ctx.settings.pg_dsn, ctx.target.database, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(outside_dependents_sql(ctx.schema))
        dependents = [row[0] for row in cur.fetchall()]
    if dependents:
        shown = "; ".join(dependents[:6]) + (f"; and {len(dependents) - 6} more" if len(dependents) > 6 else "")
        raise OperationFailed(
            f"tenant {ctx.target.tenant_id}, tier postgresql: restore --schema {ctx.schema} refused: objects in other "
            f"schemas depend on it and would be dropped with it: {shown}; nothing was changed "
            "(restore the whole database, or drop or move those objects first)")


def _schema_lists(dump: Path, schema: str, folder: Path) -> tuple[Path, Path]:
    """pg_restore list files of a dump: the schema's own entries (without foreign keys), and every
    foreign key of the database (which of them touch the schema only their statements say)."""
    listing = procs.run(["pg_restore", "--list", str(dump)], capture_output=True, check=True).stdout.decode()
    entries = parse_toc(listing)
    main, _ = schema_entries(entries, schema)
    fks = [e for e in entries if e.kind == "FK CONSTRAINT"]
    main_list, fk_list = folder / f"{dump.name}.main.list", folder / f"{dump.name}.fk.list"
    main_list.write_text("".join(f"{e.line}\n" for e in main))
    fk_list.write_text("".join(f"{e.line}\n" for e in fks))
    return (main_list if main else None), (fk_list if fks else None)


def _script_statements(ctx: RestoreContext, dump: Path, list_file: Path | None, schema_only: bool = False) -> list[str]:
    if list_file is None:
        return []
    return statements(b"".join(_pg_restore_script(ctx, dump, list_file, schema_only)).decode())


def _restore_schema(ctx: RestoreContext, dump: Path, outcome: RestoreOutcome) -> None:
    """Replace one schema in one transaction: its objects, its rows (checked against the
    manifest), and every foreign key touching it — its own (outbound, to any schema) and those of
    other schemas that reference it (inbound), from the restore point, plus the live inbound ones
    the restore point did not have. Then the schema's DDL is compared with the restore point's."""
    schema = ctx.schema
    target = ctx.target.database
    dsn = ctx.settings.pg_dsn
    pg.create_database(dsn, target)
    with pg.connection(dsn, target, autocommit=True) as conn, conn.cursor() as cur:
        live_inbound = _external_foreign_keys(cur, schema)
    tables = {t: v for t, v in ctx.result.checksums.get("tables", {}).items() if t.split(".")[0].strip('"') == schema}
    with tempfile.TemporaryDirectory(dir=dump.parent) as tmp:
        main_list, fk_list = _schema_lists(dump, schema, Path(tmp))
        if main_list is None:
            raise BadInput(f"schema {schema} is not in the dump of session {ctx.manifest.session_id}")
        foreign = foreign_keys_touching(_script_statements(ctx, dump, fk_list), schema)
        from_dump = {(fk.table, fk.name) for fk in foreign}
        live_only = [(t, n, d) for t, n, d in live_inbound if (t, n) not in from_dump]
        erasure_sql = ctx.reapply(TIER, ("schema-sql", target, schema)).get("sql", "")  # the ledger, in-transaction

        def script() -> Iterator[bytes]:
            yield sql_text(outside_dependents_guard(schema))
            yield sql_text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE;\n")
            yield from _pg_restore_script(ctx, dump, main_list)
            for fk in foreign:
                yield sql_text(guarded_foreign_key(fk.statement, fk.label))
            for table, name, definition in live_only:
                yield sql_text(guarded_foreign_key(
                    f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(name)} {definition}", f"{table}.{name}"))
            if _fixed_rendering(ctx):
                yield sql_text(fixed_rendering_script())
            for table, (count, digest) in tables.items():
                yield sql_text(checksum_assertion(table, count, digest))
            yield sql_text(erasure_sql)  # after the checksums: the restore point verified, then filtered

        outcome.connections_terminated = pg.terminate_connections(dsn, target)
        ctx.report.info(f"terminated {outcome.connections_terminated} connection(s) to {target}")
        _run_psql_script(ctx, target, script(), True, outcome)
        outcome.details.update(ctx.reapply(TIER, ("schema-done", target, outcome.details.pop("_lgpd", []))))
        expected = set(_script_statements(ctx, dump, main_list, schema_only=True)) | {fk.statement for fk in foreign}
        _check_schema_ddl(ctx, expected, Path(tmp))
    outcome.restored = sum(count for count, _ in tables.values())
    outcome.details["schema"] = schema
    outcome.details["foreign_keys"] = len(foreign) + len(live_only)


def _check_schema_ddl(ctx: RestoreContext, expected: set[str], folder: Path) -> None:
    """`pg_dump --schema-only` of the restored database, read through the same selection as the
    restore point's dump (the schema's objects, the foreign keys touching it): every statement of
    the restore point must be there, or the restore fails naming what is not."""
    schema = ctx.schema
    live = folder / "live.pgdump"
    db_args, env = pg.tool_args(ctx.settings.pg_dsn, ctx.target.database)
    proc = procs.run(["pg_dump", "--schema-only", "-Fc", f"--file={live}", *db_args], capture_output=True, env=env)
    if proc.returncode != 0:
        raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier postgresql: schema {schema} was restored but its "
                              f"DDL could not be checked: pg_dump failed: {one_line(proc.stderr.decode(errors='replace'))}")
    main_list, fk_list = _schema_lists(live, schema, folder)
    plain = RestoreContext(ctx.settings, ctx.target, ctx.target, ctx.repo, ctx.manifest, ctx.result, ctx.report)
    actual = set(_script_statements(plain, live, main_list, schema_only=True))
    actual |= {fk.statement for fk in foreign_keys_touching(_script_statements(plain, live, fk_list), schema)}
    missing = sorted(expected - actual)
    if missing:
        shown = "; ".join(ddl_label(m) for m in missing[:6]) + (f"; and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise OperationFailed(
            f"tenant {ctx.target.tenant_id}, tier postgresql: schema {schema}'s rows were restored, but {len(missing)} "
            f"statement(s) of the restore point's DDL are not in the database: {shown}")


def sql_text(text: str) -> bytes:
    return text.encode()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    roles = _snapshot_roles(ctx)  # a tampered role list is refused before anything is touched
    heal_interrupted_swap(ctx.settings, ctx.target, ctx.report)
    if _sweep_staged_dumps(ctx.settings, ctx.target):
        ctx.report.info(f"tenant {ctx.target.tenant_id}: removed dump files a killed restore left behind")
    if ctx.schema:
        _refuse_outside_dependents(ctx)
    _restore_roles(ctx, roles, outcome)
    with _staged_dump(ctx) as dump:
        if ctx.schema:
            _restore_schema(ctx, dump, outcome)
        else:
            _restore_database(ctx, dump, outcome)
    return outcome


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS).

SPEC = TierSpec(
    TIER, "foundation", True, "postgresql", backup, restore,
    asset_key="postgresql_backup", kinds=("postgres", "restic"), pool="postgres",
    description="The tenant's database kryonix_cliente_{id} and its roles: pg_dump (custom format) of one "
                "snapshot streamed into the tenant's restic repository; rows per table.",
)  # drill: the restore itself verifies every table's rows against the manifest
