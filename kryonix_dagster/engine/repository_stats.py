"""Repository statistics in the main database (`tenants.repository_stats`): restore points,
snapshots, bytes and the newest session per tenant, read from the repository itself by every
operation that lists it (a session's first count, forget, verify, `keys recover`) and counted
on by later sessions, so the fleet's status never has to open a repository. Whether the
repository is still there is a separate, cheap look at its storage (`repository_states`)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from . import locations, pg, services
from .config import Settings
from .manifest import KIND_MANIFEST, RestorePoint
from .locations import Location
from .naming import names_for, repository_in
from .repository import Restic


def repository_bytes(settings: Settings, tenant_id: str) -> int | None:
    """Bytes the tenant's repository occupies in its storage (local folder or S3 prefix)."""
    location = names_for(settings, tenant_id).repository
    if location.startswith("file://") or location.startswith("/"):
        root = Path(location.removeprefix("file://"))
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    if location.startswith("s3:"):
        url = urlparse(location[3:])
        bucket, _, prefix = url.path.lstrip("/").partition("/")
        client = services.client_for(f"{url.scheme}://{url.netloc}", settings.repo_access_key,
                                     settings.repo_secret_key, settings.s3_region)
        total = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
            total += sum(item["Size"] for item in page.get("Contents", []))
        return total
    return None


def count_session(settings: Settings, tenant_id: str, session_id: str, snapshots_written: int,
                  repo: Restic | None = None) -> None:
    """After a session: one more restore point on top of a row read from the repository, without
    opening it again (a restic call costs ~0.5 s of key derivation; its size is summed from the
    storage's listing). With no row yet (a first session, or a main database rebuilt by `keys
    recover` from an older release) a count of one would be a guess: the repository is listed
    (`repo`) instead."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE tenants.repository_stats SET restore_points = restore_points + 1, "
            "snapshots = snapshots + %s, repo_bytes = %s, latest_session = %s, updated_at = now() "
            "WHERE cliente_id = %s",
            (snapshots_written, repository_bytes(settings, tenant_id), session_id, tenant_id),
        )
        counted = cur.rowcount == 1
    if not counted and repo is not None:
        refresh_repository_stats(settings, tenant_id, repo)
    elif not counted:  # no repository at hand: this session's restore point is all that is known
        with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO tenants.repository_stats (cliente_id, restore_points, snapshots, repo_bytes, "
                "latest_session) VALUES (%s, 1, %s, %s, %s) ON CONFLICT (cliente_id) DO NOTHING",
                (tenant_id, snapshots_written, repository_bytes(settings, tenant_id), session_id))


def refresh_repository_stats(settings: Settings, tenant_id: str, repo: Restic) -> int:
    """The row rewritten from the repository's own listing; returns its restore points."""
    snapshots = repo.snapshots()
    points = sorted((RestorePoint.from_snapshot(s) for s in snapshots if KIND_MANIFEST in s.tags),
                    key=lambda p: p.time, reverse=True)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO tenants.repository_stats (cliente_id, restore_points, snapshots, repo_bytes, latest_session) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (cliente_id) DO UPDATE SET restore_points = EXCLUDED.restore_points, "
            "snapshots = EXCLUDED.snapshots, repo_bytes = EXCLUDED.repo_bytes, "
            "latest_session = EXCLUDED.latest_session, updated_at = now()",
            (tenant_id, len(points), len(snapshots), repository_bytes(settings, tenant_id),
             points[0].session_id if points else None),
        )
    return len(points)


def repository_states(settings: Settings, tenant_ids: list[str], where: Location | None = None) -> dict[str, str]:
    """Per tenant, whether its repository (the primary's, or at `where`) is in its storage:
    "present", "missing" (no `config` or no key file) or "unknown" (storage unreachable, or a
    REST endpoint). For local folders two stats a tenant; for S3 one listing of the repositories'
    folders per 1,000 tenants, not a request per tenant, so it stays cheap at 10,000+ tenants."""
    if not tenant_ids:
        return {}
    where = where or locations.location(settings, locations.PRIMARY)
    root = where.root
    if root.startswith("file://") or root.startswith("/"):
        out = {}
        for tid in tenant_ids:
            folder = Path(repository_in(root, tid).removeprefix("file://"))
            keys = folder / "keys"
            try:
                present = (folder / "config").is_file() and keys.is_dir() and any(keys.iterdir())
            except OSError:
                out[tid] = "unknown"
                continue
            out[tid] = "present" if present else "missing"
        return out
    if root.startswith("s3:"):
        url = urlparse(root[3:])
        bucket, _, prefix = url.path.lstrip("/").partition("/")
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        try:
            client = services.client_for(f"{url.scheme}://{url.netloc}", where.access_key, where.secret_key,
                                         settings.s3_region)
            folders = set()
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                folders |= {p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])}
        except Exception:  # unreachable storage says nothing about the repositories
            return {tid: "unknown" for tid in tenant_ids}
        return {tid: "present" if f"cliente_{tid}" in folders else "missing" for tid in tenant_ids}
    return {tid: "unknown" for tid in tenant_ids}
