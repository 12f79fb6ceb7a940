"""Repository statistics in the main database (`tenants.repository_stats`): restore points,
snapshots and bytes per tenant, kept current by sessions, forget and verify so the fleet's
status never has to open a repository."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from . import pg, services
from .config import Settings
from .manifest import KIND_MANIFEST, RestorePoint
from .naming import names_for
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


def count_session(settings: Settings, tenant_id: str, session_id: str, snapshots_written: int) -> None:
    """After a session: one more restore point, without opening the repository with restic (a
    restic call costs ~0.5 s of key derivation; its size is summed from the storage's listing);
    forget and verify recount restore points from the repository itself."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO tenants.repository_stats AS s (cliente_id, restore_points, snapshots, repo_bytes, latest_session) "
            "VALUES (%s, 1, %s, %s, %s) ON CONFLICT (cliente_id) DO UPDATE SET "
            "restore_points = s.restore_points + 1, snapshots = s.snapshots + EXCLUDED.snapshots, "
            "repo_bytes = EXCLUDED.repo_bytes, latest_session = EXCLUDED.latest_session, updated_at = now()",
            (tenant_id, snapshots_written, repository_bytes(settings, tenant_id), session_id),
        )


def refresh_repository_stats(settings: Settings, tenant_id: str, repo: Restic) -> None:
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
