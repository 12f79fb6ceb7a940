"""Where a person lives, per service, and how to erase them there: the primitives that the live
erasure (`erase.py`), the re-application to restored data (`reapply.py`) and the live check share.

Person keys are handled as text (`str(contato_id)`). Every function takes a `dry_run` and then
only counts. A location the tenant does not have (a table, a bucket, a folder) is skipped and
reported, never an error.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from psycopg2 import sql

from ..naming import TenantNames
from .rules import DatabaseLocation, ObjectPrefix, PersonLocations, fill


@dataclass
class Erased:
    """Counts of what was (or, in a dry run, would be) erased, per service and place."""

    database: dict[str, int] = field(default_factory=dict)  # schema.table -> rows deleted or anonymised
    redis: int = 0
    objects: dict[str, int] = field(default_factory=dict)  # bucket -> object keys (all their versions)
    appdata: int = 0  # files
    skipped: list[str] = field(default_factory=list)  # locations the tenant does not have

    @property
    def total(self) -> int:
        return sum(self.database.values()) + self.redis + sum(self.objects.values()) + self.appdata

    def to_json(self) -> dict:
        return {"postgresql": self.database, "redis": self.redis, "object_storage": self.objects,
                "appdata": self.appdata, "skipped": self.skipped, "total": self.total}


def _split(table: str) -> tuple[str, str]:
    schema, name = table.split(".", 1)
    return schema, name


def existing_tables(cur) -> set[str]:
    cur.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE'")
    return {row[0] for row in cur.fetchall()}


def _table(table: str) -> sql.Composable:
    return sql.Identifier(*_split(table))


def distinct_values(cur, table: str, column: str) -> list[str]:
    cur.execute(sql.SQL("SELECT DISTINCT {}::text FROM {} WHERE {} IS NOT NULL").format(
        sql.Identifier(column), _table(table), sql.Identifier(column)))
    return [row[0] for row in cur.fetchall()]


def pairs(cur, table: str, key: str, column: str) -> list[tuple[str, str]]:
    """(key, column value) of every row, as text: what a resolve rule hashes."""
    cur.execute(sql.SQL("SELECT {}::text, {}::text FROM {} WHERE {} IS NOT NULL").format(
        sql.Identifier(key), sql.Identifier(column), _table(table), sql.Identifier(column)))
    return list(cur.fetchall())


def _erase_rows(cur, loc: DatabaseLocation, keys: list[str], dry_run: bool) -> int:
    match = sql.SQL("{}::text = ANY(%s)").format(sql.Identifier(loc.match))
    if loc.action == "delete":
        verb = sql.SQL("SELECT count(*) FROM {} WHERE {}") if dry_run else sql.SQL("DELETE FROM {} WHERE {}")
        cur.execute(verb.format(_table(loc.table), match), (keys,))
        return cur.fetchone()[0] if dry_run else cur.rowcount
    # anonymise: only rows that still differ count (a second erasure changes nothing)
    columns = list(loc.set.items())
    differs = sql.SQL(" OR ").join(
        sql.SQL("{} IS DISTINCT FROM %s").format(sql.Identifier(c)) for c, _ in columns)
    where = sql.SQL("{} AND ({})").format(match, differs)
    params = [keys, *[v for _, v in columns]]
    if dry_run:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(_table(loc.table), where), params)
        return cur.fetchone()[0]
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c, _ in columns)
    cur.execute(sql.SQL("UPDATE {} SET {} WHERE {}").format(_table(loc.table), assignments, where),
                [*[v for _, v in columns], *params])
    return cur.rowcount


def erase_database(cur, where: PersonLocations, keys: list[str], dry_run: bool, erased: Erased) -> None:
    """Delete or anonymise the person's rows, in the rules' order (dependents first, so foreign
    keys hold), inside the caller's transaction. `keep` locations are legal obligations: untouched."""
    if not keys:
        return
    tables = existing_tables(cur)
    for loc in where.database:
        if loc.action == "keep":
            continue
        if loc.table not in tables:
            erased.skipped.append(f"postgresql:{loc.table}")
            continue
        count = _erase_rows(cur, loc, keys, dry_run)
        if count:
            erased.database[loc.table] = erased.database.get(loc.table, 0) + count


def path_component(key: str) -> str | None:
    """`key` when it is ONE safe path component, else None. A person key fills object prefixes and
    application-data paths: `.` would name the parent (`contatos/.` is `contatos`: everybody's),
    `/`, `..`, an empty key, NUL or another control character would name something else."""
    if not key or key in (".", "..") or any(ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return None
    return key


def glob_escaped(key: str) -> str:
    """`key` as a literal inside a Redis MATCH pattern (`*`, `?`, `[`, `]`, `\\` escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", key)


# --- patterns: a rule's `contato:{contato_id}` read backwards, to recognise keys in data --------

def pattern_regex(pattern: str, key_name: str, whole: bool) -> re.Pattern:
    """`contato:{contato_id}` -> a regex capturing the key (globs `*` allowed in patterns)."""
    placeholder = "{" + key_name + "}"
    parts = [re.escape(part).replace(r"\*", ".*") for part in pattern.split(placeholder)]
    body = r"(?P<key>[^/:*?\[\]]+)".join(parts)
    return re.compile("^" + body + ("$" if whole else ""))


def key_in(text: str, pattern: str, key_name: str, whole: bool) -> str | None:
    found = pattern_regex(pattern, key_name, whole).match(text)
    return found.group("key") if found else None


# --- Redis ------------------------------------------------------------------------------------

def erase_redis(client, names: TenantNames, patterns: list[str], key_name: str, keys: list[str],
                dry_run: bool, erased: Erased) -> None:
    found: set[bytes] = set()
    for key in keys:
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):  # the rule's own glob; the key itself is escaped
                match = glob_escaped(names.redis_prefix) + fill(pattern, key_name, glob_escaped(key))
                found.update(client.scan_iter(match=match, count=1000))
            else:
                full = names.redis_prefix + fill(pattern, key_name, key)
                if client.exists(full):
                    found.add(full.encode())
    if found and not dry_run:
        client.delete(*found)
    erased.redis += len(found)


# --- objects ----------------------------------------------------------------------------------

def _versioned(client, bucket: str) -> bool:
    return client.get_bucket_versioning(Bucket=bucket).get("Status") in ("Enabled", "Suspended")


def erase_object_prefix(client, bucket: str, prefix: str, dry_run: bool) -> int:
    """Every object under `prefix`, every version and delete marker when the bucket is versioned."""
    keys: set[str] = set()
    if _versioned(client, bucket):
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                keys.add(item["Key"])
                if not dry_run:
                    client.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
    else:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                keys.add(item["Key"])
                if not dry_run:
                    client.delete_object(Bucket=bucket, Key=item["Key"])
    return len(keys)


def erase_objects(client, names: TenantNames, prefixes: list[ObjectPrefix], key_name: str, keys: list[str],
                  dry_run: bool, erased: Erased, bucket_exists) -> None:
    for rule in prefixes:
        bucket = names.bucket(rule.bucket)
        if not bucket_exists(client, bucket):
            erased.skipped.append(f"object_storage:{bucket}")
            continue
        for key in filter(path_component, keys):  # a key that is not one component names no prefix
            count = erase_object_prefix(client, bucket, fill(rule.prefix, key_name, key), dry_run)
            if count:
                erased.objects[bucket] = erased.objects.get(bucket, 0) + count


# --- application data -------------------------------------------------------------------------

def _inside(root: Path, relative: str) -> Path | None:
    """`root/relative` if no component is `..`/absolute and no directory on the way is a link."""
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or ".." in parts:
        return None
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):  # a link or a file: never followed
                return None
        except FileNotFoundError:
            return None
    return root / Path(*parts)


def remove_nofollow(path: Path, dry_run: bool) -> int:
    """Remove a file, a link (not what it points to) or a folder tree; the number of entries."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        if not dry_run:
            path.unlink()
        return 1
    count = sum(len(files) + sum(1 for d in dirs if (Path(top) / d).is_symlink())
                for top, dirs, files in os.walk(path, followlinks=False))
    if not dry_run:
        shutil.rmtree(path)  # rmtree never follows links inside the tree
    return max(count, 1)


def erase_appdata(root: Path, paths: list[str], key_name: str, keys: list[str], dry_run: bool,
                  erased: Erased) -> None:
    try:
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            erased.skipped.append(f"appdata:{root.name} (not a folder)")
            return
    except FileNotFoundError:
        erased.skipped.append(f"appdata:{root.name}")
        return
    for key in filter(path_component, keys):  # `.` would be the parent folder: never a person's
        for pattern in paths:
            target = _inside(root, fill(pattern, key_name, key))
            if target is not None:
                erased.appdata += remove_nofollow(target, dry_run)
