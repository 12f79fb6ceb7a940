"""What a restore point is: a session manifest stored as the session's last snapshot.

A session writes one or more tier snapshots tagged `session=SID`, then the manifest
(`manifest.json`, tagged `kind=manifest`). Only sessions with a manifest are restore points:
a session that dies before writing it leaves tier snapshots that nothing lists and that
`forget` removes.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import StringConstraints, TypeAdapter, ValidationError

from .repository import Restic, Snapshot

MANIFEST_FORMAT = 1
MANIFEST_FILE = "manifest.json"
KIND_MANIFEST = "kind=manifest"
KIND_TIER = "kind=tier"
EMPTIED = "emptied"  # manifest tag emptied=TIER

STATUS_OK = "ok"
STATUS_EMPTY = "empty"  # the tenant has no such resource (no bucket, no vhost): nothing to back up
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"  # not run because a critical tier failed before it


SESSION_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")
# What restore hands to tools must have the shape this code writes (never an option or a path).
SessionId = Annotated[str, StringConstraints(pattern=rf"^{SESSION_ID.pattern}$")]
SnapshotId = Annotated[str, StringConstraints(pattern=rf"^{SNAPSHOT_ID.pattern}$")]


def new_session_id(now: datetime | None = None) -> str:
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class TierResult:
    tier: str
    status: str
    snapshots: dict[str, SnapshotId] = field(default_factory=dict)  # part name → restic snapshot id
    bytes_processed: int = 0
    bytes_added: int = 0
    items: int = 0  # rows, objects, keys, messages or files
    duration_seconds: float = 0.0
    checksums: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status in (STATUS_OK, STATUS_EMPTY)


@dataclass
class SessionManifest:
    tenant_id: str
    session_id: SessionId
    backup_type: str
    started_at: str
    finished_at: str
    status: str  # complete | partial
    tiers: dict[str, TierResult]
    tools: dict[str, str] = field(default_factory=dict)
    restore_point: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    consistency: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. a tier empty after a non-empty one
    # tiers that came out with no items while the previous restore point had some: a silent loss
    # until someone says otherwise (tagged on the manifest snapshot, so listings show it)
    emptied: list[str] = field(default_factory=list)
    format: int = MANIFEST_FORMAT

    def to_json(self) -> bytes:
        doc = asdict(self)
        return json.dumps(doc, indent=2, sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "SessionManifest":
        """Validated against the model (types, session and snapshot ids); raises a one-line
        ValueError naming the field for anything that is not a manifest this code wrote."""
        try:
            return _MANIFEST.validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(document)"
            value = str(first.get("input", ""))[:40] if first["type"] != "missing" else ""
            raise ValueError(f"malformed manifest: field {where}: {first['msg']}"
                             + (f" ({value!r})" if value else "")) from None

    def tags(self) -> list[str]:
        consistent = "yes" if self.consistency.get("consistent") else "no"
        return [KIND_MANIFEST, f"session={self.session_id}", f"type={self.backup_type}", f"status={self.status}",
                f"consistent={consistent}", *(f"{EMPTIED}={name}" for name in self.emptied)]


_MANIFEST = TypeAdapter(SessionManifest)


@dataclass(frozen=True)
class RestorePoint:
    """A session with a manifest, as listed from the repository's snapshot tags."""

    session_id: str
    time: datetime
    backup_type: str
    status: str
    consistent: str
    manifest_snapshot: str
    emptied: tuple[str, ...] = ()  # tiers empty here that held items in the point before

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> "RestorePoint":
        emptied = tuple(t[len(EMPTIED) + 1:] for t in snap.tags if t.startswith(f"{EMPTIED}="))
        return cls(snap.tag("session") or "?", snap.time, snap.tag("type") or "?", snap.tag("status") or "?",
                   snap.tag("consistent") or "?", snap.id, emptied)

    def to_json(self) -> dict:
        return {"session": self.session_id, "time": self.time.isoformat(), "type": self.backup_type,
                "status": self.status, "consistent": self.consistent, "manifest_snapshot": self.manifest_snapshot[:8],
                "emptied": list(self.emptied)}


def tier_tags(session_id: str, tier: str, part: str, backup_type: str) -> list[str]:
    return [KIND_TIER, f"session={session_id}", f"tier={tier}", f"part={part}", f"type={backup_type}"]


def restore_points(repo: Restic) -> list[RestorePoint]:
    """Newest first."""
    points = [RestorePoint.from_snapshot(s) for s in repo.snapshots([KIND_MANIFEST])]
    return sorted(points, key=lambda p: (p.time, p.session_id), reverse=True)


def read_manifest(repo: Restic, point: RestorePoint) -> SessionManifest:
    return _as_stored(repo, SessionManifest.from_json(repo.dump_bytes(point.manifest_snapshot, f"/{MANIFEST_FILE}")))


def copy_ids(snapshots: list[Snapshot]) -> dict[str, str]:
    """In a `restic copy` target: the source's snapshot id (also short) → the copy's id."""
    found: dict[str, str] = {}
    for snap in snapshots:
        if snap.original:
            found[snap.original] = found[snap.original[:8]] = snap.id
    return found


def _as_stored(repo: Restic, manifest: SessionManifest) -> SessionManifest:
    """A manifest names the primary's snapshot ids; read from the off-site copy, where `restic
    copy` gave every snapshot a new id (keeping the source's in `original`), its ids are
    translated to the copy's. An id with no copy is left as it is (verify reports it missing)."""
    if not getattr(repo, "is_copy", False):
        return manifest
    ids = copy_ids(repo.snapshots())
    for result in manifest.tiers.values():
        result.snapshots = {part: ids.get(sid, ids.get(sid[:8], sid)) for part, sid in result.snapshots.items()}
    return manifest


def point_details(repo: Restic, point: RestorePoint) -> dict:
    """A restore point as `snapshots --json` lists it: the tags' summary plus, from its manifest,
    each tier's status, bytes, items and warnings, and the session's warnings."""
    manifest = read_manifest(repo, point)
    tiers = {name: {"status": t.status, "bytes": t.bytes_processed, "items": t.items,
                    "warnings": list(t.details.get("warnings") or []), "error": t.error}
             for name, t in manifest.tiers.items()}
    return {**point.to_json(), "tiers": tiers, "warnings": manifest.warnings}


def newest_with_data(repo: Restic, tier: str, points: list[RestorePoint], limit: int = 30) -> RestorePoint | None:
    """The newest of `points` (newest first) whose manifest has items in `tier`; reads at most
    `limit` manifests (one restic process each, no lock)."""
    for point in points[:limit]:
        result = read_manifest(repo, point).tiers.get(tier)
        if result is not None and result.items > 0:
            return point
    return None


def find_manifest(repo: Restic, snapshot: str) -> SessionManifest | None:
    """The manifest of `latest`, of a session id, or of a manifest snapshot id (one restic call)."""
    if snapshot == "latest":
        raw = repo.dump_latest(f"/{MANIFEST_FILE}", [KIND_MANIFEST])
    elif SESSION_ID.fullmatch(snapshot):
        raw = repo.dump_latest(f"/{MANIFEST_FILE}", [KIND_MANIFEST, f"session={snapshot}"])
    else:
        matches = [s for s in repo.snapshots([KIND_MANIFEST]) if s.id.startswith(snapshot)]
        raw = repo.dump_bytes(matches[0].id, f"/{MANIFEST_FILE}") if len(matches) == 1 else None
    return _as_stored(repo, SessionManifest.from_json(raw)) if raw is not None else None


def write_manifest(repo: Restic, manifest: SessionManifest, time: datetime) -> str:
    summary = repo.backup_bytes(manifest.to_json(), MANIFEST_FILE, manifest.tags(), time)
    return summary.snapshot_id
