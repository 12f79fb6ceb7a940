"""Dagster metadata for people: numbers become plots, tables are Markdown, never a secret."""
from __future__ import annotations

from datetime import datetime

from dagster import AssetCheckSeverity, MetadataValue
from tabulate import tabulate

from ..engine.manifest import TierResult
from ..engine.session import SessionResult
from ..engine.tiers import TIERS, TierSpec


def tier_assets(tiers: tuple[TierSpec, ...] = TIERS) -> dict[str, str]:
    """tier name → its asset key, from the tiers' own specs."""
    return {t.name: t.asset_key for t in tiers}


TIER_ASSETS = tier_assets()
RESTORE_POINT_ASSET = "restore_point"


def tier_metadata(session: SessionResult, tier: TierResult) -> dict:
    meta = {
        "session": session.session_id,
        "backup_type": session.backup_type,
        "status": tier.status,
        "snapshot_id": ", ".join(f"{part}={sid[:8]}" for part, sid in tier.snapshots.items()) or "-",
        "bytes_processed": MetadataValue.int(tier.bytes_processed),
        "bytes_added": MetadataValue.int(tier.bytes_added),
        "items": MetadataValue.int(tier.items),
        "duration_seconds": MetadataValue.float(float(tier.duration_seconds)),
    }
    tables = tier.checksums.get("tables")
    if tables:
        meta["rows"] = MetadataValue.int(sum(count for count, _ in tables.values()))
        meta["tables"] = MetadataValue.md(markdown_table(
            [(t, c) for t, (c, _h) in sorted(tables.items())], ["table", "rows"]))
    for key, value in tier.details.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            meta[key] = value
    return meta


def session_metadata(session: SessionResult) -> dict:
    rows = [(name, t.status, t.bytes_processed, t.bytes_added, f"{t.duration_seconds:.1f}")
            for name, t in session.tiers.items()]
    return {
        "session": session.session_id,
        "backup_type": session.backup_type,
        "status": session.status,
        "manifest_snapshot": (session.manifest_snapshot or "")[:8] or "-",
        "bytes_processed": MetadataValue.int(session.bytes_processed),
        "bytes_added": MetadataValue.int(session.bytes_added),
        "duration_seconds": MetadataValue.float(float(session.duration_seconds)),
        "tiers": MetadataValue.md(markdown_table(rows, ["tier", "status", "bytes read", "bytes added", "seconds"])),
        "consistency_score": MetadataValue.float(float(session.consistency.get("score") or 0.0)),
        "consistent": session.consistent,
        **pitr_window_metadata(session.pg_restore_point),
    }


def pitr_window_metadata(point: dict) -> dict:
    """The tenant's point-in-time recoverable window (pgBackRest), when PITR is set up."""
    if not point.get("pitr_earliest"):
        return {}
    earliest, latest = point["pitr_earliest"], point["pitr_latest"]
    hours = (_parse_iso(latest) - _parse_iso(earliest)).total_seconds() / 3600
    return {"pitr_earliest": earliest, "pitr_latest": latest, "pitr_window_hours": MetadataValue.float(round(hours, 2))}


def _parse_iso(raw: str) -> datetime:
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


def consistency_table(report: dict) -> str:
    rows = [(r["name"], "yes" if r["passed"] else "no", "-" if r["score"] is None else r["score"], r["references"],
             r["missing_count"], r["orphan_count"], r.get("reason") or "")
            for r in report.get("rules", [])]
    return markdown_table(rows, ["rule", "passed", "score %", "references", "missing", "orphans", "note"])


def markdown_table(rows: list[tuple], headers: list[str]) -> str:
    """A Markdown table for the UI (cells escaped: a `|` in a value never breaks the table)."""
    escaped = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    return tabulate(escaped, headers=headers, tablefmt="github", disable_numparse=True)


def consistency_evaluation(session: SessionResult) -> dict:
    """passed/severity/metadata of the consistency check: fails on any missing reference,
    ERROR when the score is under the threshold, WARN otherwise."""
    report = session.consistency
    missing = {r["name"]: r["missing"] for r in report.get("rules", []) if r["missing"]}
    return {
        "passed": session.consistent and not missing,
        "severity": AssetCheckSeverity.WARN if session.consistent else AssetCheckSeverity.ERROR,
        "metadata": {
            "score": MetadataValue.float(float(report.get("score") or 0.0)),
            "threshold": MetadataValue.float(float(report.get("threshold", 95))),
            "session": session.session_id,
            "rules": MetadataValue.md(consistency_table(report)),
            "missing": MetadataValue.json(missing),
            "orphans": MetadataValue.json({r["name"]: r["orphans"] for r in report.get("rules", []) if r["orphans"]}),
        },
    }


TIER_DATA_CHECK = "tier_data_kept"


def tier_data_evaluation(session: SessionResult) -> dict:
    """passed/severity/metadata of the silent-loss check: ERROR when a tier came out with no
    items while the previous restore point had some (a wiped Redis namespace, say)."""
    emptied = session.emptied
    return {
        "passed": not emptied,
        "severity": AssetCheckSeverity.ERROR,
        "description": None if not emptied else "emptied since the previous restore point: " + ", ".join(
            f"{name} (had {count} item(s))" for name, count in sorted(emptied.items())),
        "metadata": {
            "session": session.session_id,
            "emptied_tiers": MetadataValue.int(len(emptied)),
            "items_lost": MetadataValue.int(sum(emptied.values())),
            "emptied": MetadataValue.json(emptied),
            "items": MetadataValue.json({n: t.items for n, t in session.tiers.items()}),
        },
    }
