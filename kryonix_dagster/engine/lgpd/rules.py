"""The LGPD rules, declared as data and validated on load.

One file (`rules.json` beside this module, or the file named by KRYONIX_LGPD_RULES) holds:
- `retention`: per table, an age column and a period after which rows are deleted or have
  columns anonymised, optionally unless the row's subject has an active consent elsewhere;
- `subjects`: the kinds of identifier a data subject is named by (`email=...`, `telefone=...`,
  `contato_id=...`), each with the `format` its values must have (`email`, `phone`, `contact_id`:
  checked before anything runs) and resolved to the person's key (e.g. `contato_id`) by one
  column lookup;
- `person`: for each key, where the person lives: database tables (delete the rows, anonymise
  columns, or keep them with a legal reason), Redis key patterns inside the tenant's namespace,
  object key prefixes inside the tenant's buckets, application-data paths. Patterns name the key
  as `{contato_id}`.

Errors name the file and the field. Tables a tenant does not have are the caller's to skip and
report, not errors here.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import BadInput, OperationFailed

RULES_FILE = Path(__file__).with_name("rules.json")
ENV_VAR = "KRYONIX_LGPD_RULES"

_IDENT = r"[a-z_][a-z0-9_]*"
_TABLE = re.compile(rf"^{_IDENT}\.{_IDENT}$")
_COLUMN = re.compile(rf"^{_IDENT}$")
_PERIOD = re.compile(r"^([1-9][0-9]{0,3}) (day|month|year)s?$")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def _table(value: str) -> str:
    if not _TABLE.match(value):
        raise ValueError(f"{value!r} is not schema.table (lower-case identifiers)")
    return value


def _column(value: str) -> str:
    if not _COLUMN.match(value):
        raise ValueError(f"{value!r} is not a lower-case column name")
    return value


def _columns(values: dict[str, str | None]) -> dict[str, str | None]:
    if not values:
        raise ValueError("anonymise needs at least one column in `set`")
    for name in values:
        _column(name)
    return values


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsentGuard(Strict):
    """Rows are kept while `table.column` references them (`references`) with `flag` true."""

    table: str
    column: str
    references: str
    flag: str

    _t = field_validator("table")(_table)
    _c = field_validator("column", "references", "flag")(_column)


class RetentionRule(Strict):
    name: str = Field(pattern=rf"^{_IDENT}$")
    description: str = ""
    table: str
    age_column: str
    period: str
    action: Literal["delete", "anonymise"]
    set: dict[str, str | None] = Field(default_factory=dict)
    unless_consent: ConsentGuard | None = None

    _t = field_validator("table")(_table)
    _c = field_validator("age_column")(_column)

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        if not _PERIOD.match(value):
            raise ValueError(f"{value!r} is not a period like '3 years', '18 months' or '30 days'")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> "RetentionRule":
        if self.action == "anonymise":
            _columns(self.set)
        elif self.set:
            raise ValueError("`set` is only for action anonymise")
        return self

    @property
    def schema(self) -> str:
        return self.table.split(".", 1)[0]

    @property
    def table_name(self) -> str:
        return self.table.split(".", 1)[1]


class Resolve(Strict):
    """How a subject's value becomes the person's key: `SELECT key FROM table WHERE column = value`."""

    table: str
    column: str
    key: str
    as_: str = Field(alias="as")

    _t = field_validator("table")(_table)
    _c = field_validator("column", "key", "as_")(_column)


class SubjectKind(Strict):
    description: str = ""
    format: Literal["email", "phone", "contact_id"]  # what a value of this kind must look like
    resolve: Resolve


class DatabaseLocation(Strict):
    """Rows of `table` whose `match` column equals the person's key."""

    table: str
    match: str
    action: Literal["delete", "anonymise", "keep"]
    set: dict[str, str | None] = Field(default_factory=dict)
    reason: str = ""

    _t = field_validator("table")(_table)
    _c = field_validator("match")(_column)

    @model_validator(mode="after")
    def _coherent(self) -> "DatabaseLocation":
        if self.action == "anonymise":
            _columns(self.set)
        elif self.set:
            raise ValueError("`set` is only for action anonymise")
        if self.action == "keep" and not self.reason:
            raise ValueError("action keep needs the legal `reason`")
        return self


class ObjectPrefix(Strict):
    """Objects of the tenant's bucket `cliente-{id}-{bucket}` under `prefix` (with placeholders)."""

    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    prefix: str = Field(min_length=1)


class PersonLocations(Strict):
    database: list[DatabaseLocation] = Field(default_factory=list)
    redis: list[str] = Field(default_factory=list)
    objects: list[ObjectPrefix] = Field(default_factory=list)
    appdata: list[str] = Field(default_factory=list)


class LgpdRules(Strict):
    version: Literal[1]
    retention: list[RetentionRule] = Field(default_factory=list)
    subjects: dict[str, SubjectKind] = Field(default_factory=dict)
    person: dict[str, PersonLocations] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keys_declared(self) -> "LgpdRules":
        names = [rule.name for rule in self.retention]
        if len(names) != len(set(names)):
            raise ValueError("retention rule names must be unique")
        for kind, subject in self.subjects.items():
            if not _COLUMN.match(kind):
                raise ValueError(f"subject kind {kind!r} is not a lower-case name")
            if subject.resolve.as_ not in self.person:
                raise ValueError(f"subjects.{kind}.resolve.as: no `person` entry for {subject.resolve.as_!r}")
        for key, where in self.person.items():
            patterns = where.redis + [o.prefix for o in where.objects] + where.appdata
            for pattern in patterns:
                unknown = set(_PLACEHOLDER.findall(pattern)) - {key}
                if unknown:
                    raise ValueError(f"person.{key}: pattern {pattern!r} names unknown {sorted(unknown)}")
        return self

    def subject(self, kind: str) -> SubjectKind:
        if kind not in self.subjects:
            raise BadInput(f"unknown subject kind {kind!r}; the rules know: {', '.join(sorted(self.subjects))}")
        return self.subjects[kind]

    def locations(self, kind: str) -> PersonLocations:
        return self.person[self.subject(kind).resolve.as_]


def fill(pattern: str, key_name: str, key_value: object) -> str:
    """A pattern with the person's key put in: `contato:{contato_id}` -> `contato:42`."""
    return pattern.replace("{" + key_name + "}", str(key_value))


# What a subject value may be, per format. Deliberately narrow: no wildcard (`*?[]%`), no path
# separator, no control character, no leading dot, so a value used as a Redis key, an object
# prefix, a path component or an SQL parameter names exactly one person's things.
_EMAIL = re.compile(r"^[A-Za-z0-9_+-]+(\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$")
_PHONE = re.compile(r"^\+?[0-9]{6,15}$")  # E.164: up to 15 digits, as stored (no spaces or dashes)
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_FORMAT_HELP = {"email": "an e-mail address (name@domain.tld)",
                "phone": "a phone number of 6 to 15 digits, optionally after a + (no spaces)",
                "contact_id": "a contact id: digits or a UUID"}


def canonical_value(fmt: str, value: str) -> str | None:
    """The value in its one canonical form for `fmt`, or None when it is not such a value."""
    if fmt == "email":
        return value if len(value) <= 254 and _EMAIL.fullmatch(value) else None
    if fmt == "phone":
        return value if _PHONE.fullmatch(value) else None
    if _DIGITS.fullmatch(value):
        return str(int(value))  # `007` and `7` are one contact
    if _UUID.fullmatch(value):
        return value.lower()  # uuid::text is lower case
    return None


def parse_subject(text: str, rules: LgpdRules) -> tuple[str, str]:
    """`KIND=VALUE` -> (kind, canonical value), validated for the kind's format. The value is
    never echoed back in an error."""
    kind, sep, value = text.partition("=")
    kind, value = kind.strip(" "), value.strip(" ")  # spaces only: any other control character refuses
    if not sep or not kind or not value:
        raise BadInput("--subject takes KIND=VALUE, e.g. email=pessoa@exemplo.com")
    fmt = rules.subject(kind).format
    canonical = canonical_value(fmt, value)
    if canonical is None:
        raise BadInput(f"the {kind} value is not {_FORMAT_HELP[fmt]}; nothing was touched")
    return kind, canonical


def rules_source(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get(ENV_VAR) or RULES_FILE)


def load_rules(path: str | Path | None = None) -> LgpdRules:
    source = rules_source(path)
    try:
        return LgpdRules.model_validate(json.loads(source.read_text()))
    except OSError as exc:
        raise OperationFailed(f"LGPD rules {source}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise OperationFailed(f"LGPD rules {source}: not JSON: {exc.msg} at line {exc.lineno}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise OperationFailed(f"LGPD rules {source}: field {where}: {first['msg']}") from None
