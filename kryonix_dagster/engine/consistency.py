"""Cross-service consistency of what a session captured (the seed's four checks).

The rules are declared data (`consistency_rules.json`, or the file named by
KRYONIX_CONSISTENCY_RULES): each names a set of references and the set they must resolve
into, each set taken from one tier's capture: rows of a SQL query run in the PostgreSQL
tier's own snapshot, captured object keys (`bucket-suffix/key`), Redis key names matched by
a pattern, vhost queue names, application files, or a list inside a JSON config file.
A rule's score is the share of its references that resolve; the session's score is the
mean over the rules that could be evaluated (none evaluable: no score, not inconsistent);
below the threshold the session is inconsistent. A rule with any missing reference fails, naming what is missing.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

RULES_FILE = Path(__file__).with_name("consistency_rules.json")
MAX_LISTED = 50


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
            elif not r.evaluated:
                out.append(f"{r.name}: not evaluated ({r.reason})")
        return out

    def to_json(self) -> dict:
        return {"score": self.score, "threshold": self.threshold, "consistent": self.consistent,
                "problems": self.problems, "rules": [asdict(r) for r in self.rules]}


def load_rules(path: str | Path | None = None) -> dict:
    source = Path(path or os.environ.get("KRYONIX_CONSISTENCY_RULES") or RULES_FILE)
    return json.loads(source.read_text())


def database_queries(rules: dict) -> dict[str, str]:
    """SQL the PostgreSQL tier runs in its dump's snapshot: query text → same key."""
    queries = {}
    for rule in rules["rules"]:
        for side in ("references", "targets"):
            spec = rule[side]
            if spec["tier"] == "postgresql":
                queries[spec["query"]] = spec["query"]
    return queries


class _Unavailable(Exception):
    pass


def _values(spec: dict, captured: dict) -> set[str]:
    tier = spec["tier"]
    if tier not in captured:
        raise _Unavailable(f"tier {tier} was not captured")
    data = captured[tier]
    if tier == "postgresql":
        result = data.get(spec["query"])
        if isinstance(result, str) or result is None:
            raise _Unavailable(f"query failed: {result}")
        return set(result)
    if "key_pattern" in spec:
        pattern = re.compile(spec["key_pattern"])
        return {m.group(1) for key in data for m in [pattern.search(key)] if m}
    if "json_file" in spec:
        root = data.get("root")
        if not root:
            raise _Unavailable("no application folder")
        try:
            doc = json.loads((Path(root) / spec["json_file"]).read_text())
        except (OSError, ValueError) as exc:
            raise _Unavailable(f"{spec['json_file']}: {exc}") from None
        value = doc.get(spec["json_key"], [])
        return {str(v) for v in value} if isinstance(value, list) else set()
    if tier == "appdata":
        return set(data.get("files", []))
    return set(data)


def _sample(values: set[str]) -> list[str]:
    return sorted(values)[:MAX_LISTED]


def evaluate(captured: dict, rules: dict | None = None) -> ConsistencyReport:
    rules = rules or load_rules()
    results = []
    for rule in rules["rules"]:
        base = {"name": rule["name"], "description": rule.get("description", "")}
        try:
            refs = _values(rule["references"], captured)
            targets = _values(rule["targets"], captured)
        except _Unavailable as exc:
            results.append(RuleResult(**base, evaluated=False, passed=False, score=None, reason=str(exc)))
            continue
        missing = refs - targets
        orphans = (targets - refs) if rule.get("report_orphans") else set()
        score = 100.0 * (len(refs) - len(missing)) / len(refs) if refs else 100.0
        results.append(RuleResult(**base, evaluated=True, passed=not missing, score=round(score, 2),
                                  references=len(refs), missing=_sample(missing), orphans=_sample(orphans),
                                  missing_count=len(missing), orphan_count=len(orphans)))
    scores = [r.score for r in results if r.score is not None]
    overall = round(sum(scores) / len(scores), 2) if scores else None
    threshold = float(rules.get("threshold_percent", 95))
    # with no rule applicable (a tenant without those tables or files) there is nothing inconsistent
    return ConsistencyReport(overall, threshold, overall is None or overall >= threshold, results)
