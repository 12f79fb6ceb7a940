"""Cross-service consistency of what a session captured (the seed's four checks).

The rules are declared data (`consistency_rules.json`, or the file named by
KRYONIX_CONSISTENCY_RULES), validated on load (an error names the file and the field):
each names a set of references and the set they must resolve into, each set taken from
one tier's capture: rows of a SQL query run in the PostgreSQL tier's own snapshot, captured
object keys (`bucket-suffix/key`), Redis key names matched by a pattern, vhost queue names,
application files, or a list inside a JSON config file.

Scoring follows the seed: a rule's ratio is 1 − (missing + counted orphans) / references
(orphans count only where the rule says `orphans_fail`, as the seed's database ↔ storage
check does); a rule passes at the threshold (95%). The session's score is the share of
evaluated rules that passed, and the session is consistent at or above the threshold, so
one failing rule of four (75%) makes it inconsistent. Rules that cannot be evaluated (a
tenant without those tables or files) are left out of the score; with none evaluable there
is no score and nothing inconsistent.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import OperationFailed

RULES_FILE = Path(__file__).with_name("consistency_rules.json")
MAX_LISTED = 50


class Side(BaseModel):
    """One side of a rule: which tier's capture, and how to read values out of it."""

    model_config = ConfigDict(extra="forbid")
    tier: Literal["postgresql", "object_storage", "redis", "rabbitmq", "appdata"]
    query: str | None = None
    key_pattern: str | None = None
    json_file: str | None = None
    json_key: str | None = None

    @model_validator(mode="after")
    def _coherent(self) -> "Side":
        if (self.tier == "postgresql") != (self.query is not None):
            raise ValueError("a query is required for the postgresql tier, and only there")
        if (self.json_file is None) != (self.json_key is None):
            raise ValueError("json_file and json_key go together")
        if self.key_pattern is not None:
            try:
                if re.compile(self.key_pattern).groups < 1:
                    raise ValueError("key_pattern needs one capture group")
            except re.error as exc:
                raise ValueError(f"key_pattern is not a regular expression: {exc}") from None
        return self


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    references: Side
    targets: Side
    report_orphans: bool = False
    orphans_fail: bool = False


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold_percent: float = 95.0
    rules: list[Rule]


@dataclass
class RuleResult:
    name: str
    description: str
    evaluated: bool
    passed: bool
    score: float | None  # 0..100
    references: int = 0
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    missing_count: int = 0
    orphan_count: int = 0
    reason: str | None = None


@dataclass
class ConsistencyReport:
    score: float | None
    threshold: float
    consistent: bool
    rules: list[RuleResult]

    @property
    def problems(self) -> list[str]:
        out = []
        for r in self.rules:
            if r.missing_count:
                out.append(f"{r.name}: {r.missing_count} missing ({', '.join(r.missing[:5])})")
            elif not r.passed and r.evaluated:
                out.append(f"{r.name}: {r.orphan_count} orphan(s) ({', '.join(r.orphans[:5])})")
            elif not r.evaluated:
                out.append(f"{r.name}: not evaluated ({r.reason})")
        return out

    def to_json(self) -> dict:
        return {"score": self.score, "threshold": self.threshold, "consistent": self.consistent,
                "problems": self.problems, "rules": [asdict(r) for r in self.rules]}


def _field_path(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def load_rules(path: str | Path | None = None) -> RuleSet:
    source = Path(path or os.environ.get("KRYONIX_CONSISTENCY_RULES") or RULES_FILE)
    try:
        return RuleSet.model_validate(json.loads(source.read_text()))
    except OSError as exc:
        raise OperationFailed(f"consistency rules {source}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise OperationFailed(f"consistency rules {source}: not JSON: {exc.msg} at line {exc.lineno}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise OperationFailed(f"consistency rules {source}: field {_field_path(first)}: {first['msg']}") from None


def database_queries(rules: RuleSet) -> dict[str, str]:
    """SQL the PostgreSQL tier runs in its dump's snapshot: query text → same key."""
    return {side.query: side.query for rule in rules.rules for side in (rule.references, rule.targets)
            if side.query is not None}


class _Unavailable(Exception):
    pass


def _values(spec: Side, captured: dict) -> set[str]:
    if spec.tier not in captured:
        raise _Unavailable(f"tier {spec.tier} was not captured")
    data = captured[spec.tier]
    if spec.query is not None:
        result = data.get(spec.query)
        if isinstance(result, str) or result is None:
            raise _Unavailable(f"query failed: {result}")
        return set(result)
    if spec.key_pattern is not None:
        pattern = re.compile(spec.key_pattern)
        return {m.group(1) for key in data for m in [pattern.search(key)] if m}
    if spec.json_file is not None:
        return _json_list(spec, data.get("root"))
    if spec.tier == "appdata":
        return set(data.get("files", []))
    return set(data)


def _json_list(spec: Side, root: str | None) -> set[str]:
    if not root:
        raise _Unavailable("no application folder")
    try:
        doc = json.loads((Path(root) / spec.json_file).read_text())
    except (OSError, ValueError) as exc:
        raise _Unavailable(f"{spec.json_file}: {exc}") from None
    value = doc.get(spec.json_key, []) if isinstance(doc, dict) else []
    return {str(v) for v in value} if isinstance(value, list) else set()


def _sample(values: set[str]) -> list[str]:
    return sorted(values)[:MAX_LISTED]


def _judge(rule: Rule, captured: dict, threshold: float) -> RuleResult:
    base = {"name": rule.name, "description": rule.description}
    try:
        refs = _values(rule.references, captured)
        targets = _values(rule.targets, captured)
    except _Unavailable as exc:
        return RuleResult(**base, evaluated=False, passed=False, score=None, reason=str(exc))
    missing = refs - targets
    orphans = (targets - refs) if (rule.report_orphans or rule.orphans_fail) else set()
    failures = len(missing) + (len(orphans) if rule.orphans_fail else 0)
    score = max(0.0, 100.0 * (1 - failures / max(len(refs), 1))) if failures else 100.0
    return RuleResult(**base, evaluated=True, passed=score >= threshold, score=round(score, 2),
                      references=len(refs), missing=_sample(missing), orphans=_sample(orphans),
                      missing_count=len(missing), orphan_count=len(orphans))


def evaluate(captured: dict, rules: RuleSet | None = None) -> ConsistencyReport:
    rules = rules or load_rules()
    threshold = float(rules.threshold_percent)
    results = [_judge(rule, captured, threshold) for rule in rules.rules]
    evaluated = [r for r in results if r.evaluated]
    overall = round(100.0 * sum(r.passed for r in evaluated) / len(evaluated), 2) if evaluated else None
    return ConsistencyReport(overall, threshold, overall is None or overall >= threshold, results)
