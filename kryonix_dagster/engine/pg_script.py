"""Pure helpers around pg_restore: TOC selection for one schema, the foreign keys touching it,
role renaming in SQL scripts, and statements wrapped so one unrestorable foreign key warns
instead of aborting."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Iterable, Iterator

# pg_restore -l types, longest first so "FK CONSTRAINT" wins over "CONSTRAINT".
_TOC_TYPES = sorted((
    "TABLE DATA", "TABLE", "SEQUENCE SET", "SEQUENCE OWNED BY", "SEQUENCE", "FK CONSTRAINT", "CONSTRAINT",
    "INDEX ATTACH", "INDEX", "DEFAULT ACL", "DEFAULT", "ACL", "COMMENT", "SCHEMA", "VIEW", "MATERIALIZED VIEW DATA",
    "MATERIALIZED VIEW", "FUNCTION", "PROCEDURE", "AGGREGATE", "TYPE", "DOMAIN", "TRIGGER", "RULE", "POLICY",
    "ROW SECURITY", "EXTENSION", "COLLATION", "CONVERSION", "OPERATOR", "STATISTICS", "PUBLICATION",
    "PUBLICATION TABLE", "SUBSCRIPTION", "EVENT TRIGGER", "FOREIGN TABLE", "SERVER", "USER MAPPING",
    "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "CAST", "ENCODING", "STDSTRINGS", "SEARCHPATH",
    "DATABASE", "DATABASE PROPERTIES", "LARGE OBJECT", "BLOBS", "BLOB",
), key=len, reverse=True)

_ENTRY = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class TocEntry:
    line: str
    kind: str
    namespace: str
    name: str


def parse_toc(listing: str) -> list[TocEntry]:
    entries = []
    for line in listing.splitlines():
        match = _ENTRY.match(line)
        if not match:
            continue
        rest = match.group(4)
        kind = next((t for t in _TOC_TYPES if rest.startswith(t + " ")), rest.split(" ", 1)[0])
        tokens = rest[len(kind):].strip().split(" ")
        namespace = tokens[0] if tokens else "-"
        name = " ".join(tokens[1:-1]) if len(tokens) > 2 else (tokens[1] if len(tokens) > 1 else "")
        entries.append(TocEntry(line, kind, namespace, name))
    return entries


def schema_entries(entries: Iterable[TocEntry], schema: str) -> tuple[list[TocEntry], list[TocEntry]]:
    """(everything of `schema` except its foreign keys, its foreign keys)."""
    main, fks = [], []
    for e in entries:
        own = e.namespace == schema
        about_schema = e.namespace == "-" and (
            (e.kind == "SCHEMA" and e.name == schema) or (e.kind in ("ACL", "COMMENT") and e.name == f"SCHEMA {schema}")
        )
        if own and e.kind == "FK CONSTRAINT":
            fks.append(e)
        elif own or about_schema:
            main.append(e)
    return main, fks


_IDENT = r'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_FOREIGN_KEY = re.compile(
    rf'^ALTER TABLE (?:ONLY )?(?P<table>{_IDENT}\.{_IDENT})\s+ADD CONSTRAINT (?P<name>{_IDENT})\s+FOREIGN KEY\b'
    rf'.*?\bREFERENCES (?P<ref>{_IDENT}\.{_IDENT})\(', re.S)


@dataclass(frozen=True)
class ForeignKey:
    table: str  # as pg_dump and format('%I.%I') write it
    name: str  # the constraint's name, unquoted
    statement: str  # pg_restore's ALTER TABLE … ADD CONSTRAINT …, without the semicolon

    @property
    def label(self) -> str:
        return f"{self.table}.{self.name}"


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def _schema_of(qualified: str) -> str:
    return _unquote(re.match(_IDENT, qualified).group(0))


def foreign_keys_touching(script_statements: Iterable[str], schema: str) -> list[ForeignKey]:
    """The foreign keys among pg_restore's statements that are on a table of `schema` or reference
    one (outbound and inbound: `DROP SCHEMA … CASCADE` drops both kinds)."""
    found = []
    for statement in script_statements:
        match = _FOREIGN_KEY.match(statement)
        if match and schema in (_schema_of(match["table"]), _schema_of(match["ref"])):
            found.append(ForeignKey(match["table"], _unquote(match["name"]), statement.rstrip(";").strip()))
    return found


def ddl_label(statement: str) -> str:
    """A short name for a DDL statement in an error message."""
    match = _FOREIGN_KEY.match(statement)
    if match:
        return f"foreign key {match['table']}.{_unquote(match['name'])}"
    return " ".join(statement.split())[:120]


def rename_roles(lines: Iterable[str], source_prefix: str, target_prefix: str) -> Iterator[str]:
    """Rewrite the source tenant's role names to the target's, outside COPY data only."""
    pattern = re.compile(r"(?<![A-Za-z0-9_])" + re.escape(source_prefix) + r"(?=[a-z0-9_])")
    in_copy = False
    for line in lines:
        if in_copy:
            if line.rstrip("\n") == "\\.":
                in_copy = False
            yield line
            continue
        if line.startswith("COPY ") and line.rstrip().endswith("FROM stdin;"):
            in_copy = True
            yield line
            continue
        yield pattern.sub(target_prefix, line)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def statements(script: str) -> list[str]:
    """Split a pg_restore script that holds only DDL statements (no COPY). Comments and psql
    meta-commands (pg_restore's \\restrict guards) are dropped."""
    body = "\n".join(line for line in script.splitlines()
                     if line.strip() and not line.startswith(("--", "\\")))
    parts = (part.strip() for part in re.split(r";[ \t]*(?:\n|$)", body))
    return [p for p in parts if p and not p.startswith(("SET ", "SELECT pg_catalog.set_config"))]


def dollar_tag(*texts: str) -> str:
    """A dollar-quote tag found in none of `texts`: tenant text can never end the quote early."""
    while True:
        tag = f"$kryonix_{secrets.token_hex(8)}$"
        if not any(tag in text for text in texts):
            return tag


def guarded_foreign_key(statement: str, label: str) -> str:
    """Add a foreign key; rows that violate it make it NOT VALID (with a warning), a missing
    referenced table skips it (with a warning). Nothing here aborts the restore."""
    stmt = statement.rstrip(";").strip()
    tag = dollar_tag(stmt, label)
    return (
        f"DO {tag}\nBEGIN\n"
        f"  EXECUTE {_literal(stmt)};\n"
        "EXCEPTION\n"
        "  WHEN foreign_key_violation THEN\n"
        f"    EXECUTE {_literal(stmt + ' NOT VALID')};\n"
        f"    RAISE WARNING 'kryonix: foreign key % added NOT VALID: existing rows reference missing rows', {_literal(label)};\n"
        "  WHEN undefined_table OR undefined_column OR invalid_schema_name THEN\n"
        f"    RAISE WARNING 'kryonix: foreign key % skipped: %', {_literal(label)}, SQLERRM;\n"
        f"END\n{tag};\n"
    )


# Row hashes render every row as text: fix every setting that changes that text, so a hash taken
# in the tenant's database (with its own TimeZone, DateStyle, ...) matches one taken in a staging
# database. Manifests record HASH_RENDERING; older ones were hashed in the database's defaults.
HASH_RENDERING = "fixed-v1"
FIXED_RENDERING = (
    "SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 3", "SET bytea_output = 'hex'", "SET lc_monetary = 'C'",
    "SET search_path = pg_catalog",
)


def fixed_rendering_script() -> str:
    return "".join(f"{statement};\n" for statement in FIXED_RENDERING)


def table_checksum_sql(table: str) -> str:
    """Row count and an order-independent hash of a table's rows (same SQL at backup and restore)."""
    return (f"SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text "
            f"FROM {table} t")


def checksum_assertion(table: str, count: int, digest: str) -> str:
    """A DO block that aborts the restore's transaction if the table does not match."""
    tag = dollar_tag(table, digest)
    return (
        f"DO {tag}\nDECLARE c bigint; h text;\nBEGIN\n"
        f"  {table_checksum_sql(table)} INTO c, h;\n"
        f"  IF c <> {int(count)} OR h <> {_literal(digest)} THEN\n"
        f"    RAISE EXCEPTION 'kryonix: % restored % rows that do not match the backup ({int(count)} rows)', "
        f"{_literal(table)}, c;\n"
        f"  END IF;\nEND\n{tag};\n"
    )


def outside_dependents_sql(schema: str) -> str:
    """Objects outside `schema` that `DROP SCHEMA … CASCADE` would drop with it (columns of its
    types, views over its tables, defaults using its sequences, functions, extensions…), named
    by pg_describe_object. Foreign keys are left out: the schema restore adds them back."""
    s = _literal(schema)
    relation_schema = ("(SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE c.oid = (SELECT {col} FROM {cat} x WHERE x.oid = d.objid))")
    return (
        "SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d "
        "CROSS JOIN LATERAL pg_identify_object(d.refclassid, d.refobjid, 0) AS ref "
        "CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, 0) AS dep "
        "WHERE d.deptype IN ('n', 'a') "
        f"AND ((d.refclassid = 'pg_namespace'::regclass AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = {s})) "
        f"OR ref.schema = {s}) "
        "AND coalesce(CASE d.classid "
        f"WHEN 'pg_attrdef'::regclass THEN {relation_schema.format(col='adrelid', cat='pg_attrdef')} "
        f"WHEN 'pg_rewrite'::regclass THEN {relation_schema.format(col='ev_class', cat='pg_rewrite')} "
        f"WHEN 'pg_trigger'::regclass THEN {relation_schema.format(col='tgrelid', cat='pg_trigger')} "
        f"WHEN 'pg_policy'::regclass THEN {relation_schema.format(col='polrelid', cat='pg_policy')} "
        f"ELSE dep.schema END, '') <> {s} "
        "AND NOT (d.classid = 'pg_constraint'::regclass "
        "AND EXISTS (SELECT 1 FROM pg_constraint c WHERE c.oid = d.objid AND c.contype = 'f')) "
        "ORDER BY 1"
    )


def outside_dependents_guard(schema: str) -> str:
    """A DO block that aborts the schema restore's transaction if objects outside the schema
    depend on it (the same check as before the restore, now under the restore's transaction)."""
    query = outside_dependents_sql(schema)
    tag = dollar_tag(query)
    return (
        f"DO {tag}\nDECLARE found text;\nBEGIN\n"
        f"  SELECT string_agg(x, ', ') INTO found FROM ({query}) AS q(x);\n"
        "  IF found IS NOT NULL THEN\n"
        f"    RAISE EXCEPTION 'kryonix: objects in other schemas depend on schema %: %', {_literal(schema)}, found;\n"
        f"  END IF;\nEND\n{tag};\n"
    )
