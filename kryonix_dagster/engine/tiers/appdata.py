"""Application data tier: `$KRYONIX_APP_DATA_DIR/cliente_{id}/` (config, media, mobile data).

Biometric templates are never backed up: restic excludes them, and every session lists
its snapshot afterwards and refuses (forgets it, fails the tier) if one slipped through.
Restore builds the folder beside the current one, verifies every file against the
manifest, carries the device-local biometric templates over, and swaps by rename.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import OperationFailed
from ..manifest import STATUS_EMPTY, STATUS_OK, TierResult, tier_tags
from .base import BackupContext, RestoreContext, RestoreOutcome, Stopwatch

TIER = "appdata"
BIOMETRIC_TEMPLATES = "biometric/templates"
EXCLUDES = (BIOMETRIC_TEMPLATES,)  # restic matches a relative pattern at any depth


def is_biometric_template(relative: str) -> bool:
    return f"/{BIOMETRIC_TEMPLATES}/" in f"/{relative.strip('/')}/"


def inventory(root: Path) -> dict[str, list]:
    """relative path → [size, sha256] of every file that a backup takes."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and not is_biometric_template(rel):
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            files[rel] = [path.stat().st_size, digest.hexdigest()]
    return files


def backup(ctx: BackupContext) -> TierResult:
    watch = Stopwatch()
    root = ctx.names.app_data_dir
    if not root.is_dir():
        ctx.captured[TIER] = {"files": [], "root": None}
        return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds, details={"folder": None})
    files = inventory(root)
    ctx.captured[TIER] = {"files": sorted(files), "root": str(root)}
    previous = ctx.previous_tier(TIER)
    parent = previous.snapshots.get("files") if previous else None
    summary = ctx.repo.backup_directory(root, tier_tags(ctx.session_id, TIER, "files", ctx.backup_type),
                                       ctx.session_time, parent=parent, excludes=EXCLUDES,
                                       force=ctx.backup_type == "full", progress=ctx.restic_progress("app data"))
    leaked = [p for p in ctx.repo.list_files(summary.snapshot_id) if is_biometric_template(p)]
    if leaked:
        ctx.repo.forget_ids([summary.snapshot_id], prune=True)
        raise OperationFailed(f"tenant {ctx.names.tenant_id}, tier appdata: biometric template(s) reached the "
                              f"snapshot ({leaked[0]}); snapshot removed")
    return TierResult(
        TIER, STATUS_OK, snapshots={"files": summary.snapshot_id}, bytes_processed=summary.total_bytes_processed,
        bytes_added=summary.data_added, items=len(files), duration_seconds=watch.seconds,
        checksums={"files": files},
        details={"files": len(files), "files_new": summary.files_new, "files_changed": summary.files_changed,
                 "files_unmodified": summary.files_unmodified},
    )


def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    target = ctx.target.app_data_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring-", dir=target.parent))
    previous = target.parent / f".{target.name}.previous"
    try:
        ctx.repo.restore(ctx.result.snapshots["files"], staging)
        expected = ctx.result.checksums.get("files", {})
        restored = inventory(staging)
        if restored != expected:
            wrong = sorted(k for k in set(restored) | set(expected) if restored.get(k) != expected.get(k))[:3]
            raise OperationFailed(f"tenant {ctx.target.tenant_id}, tier appdata: restored files do not match the "
                                  f"backup ({', '.join(wrong)}); the current folder was kept")
        _carry_templates(target, staging, outcome)
        shutil.rmtree(previous, ignore_errors=True)
        if target.exists():
            os.replace(target, previous)
        os.replace(staging, target)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    outcome.restored = len(expected)
    return outcome


def _carry_templates(current: Path, staging: Path, outcome: RestoreOutcome) -> None:
    """Biometric templates live only on the tenant's machine: a restore must not delete them."""
    if not current.is_dir():
        return
    for folder in current.rglob(BIOMETRIC_TEMPLATES.split("/")[-1]):
        rel = folder.relative_to(current).as_posix()
        if folder.is_dir() and is_biometric_template(rel + "/x"):
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder, dest, dirs_exist_ok=True)
            outcome.details["biometric_templates_kept"] = outcome.details.get("biometric_templates_kept", 0) + \
                sum(1 for p in folder.rglob("*") if p.is_file())


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS). Imported here, not at the top, only so this block stays
# an append to the module.
from .base import TierSpec  # noqa: E402

SPEC = TierSpec(
    TIER, "application", False, "appdata", backup, restore,
    asset_key="app_data_backup", kinds=("restic",),
    description="The tenant's application folder (config, media, mobile data); biometric templates are never taken.",
)  # drill: the restore itself verifies every file against the manifest's inventory
