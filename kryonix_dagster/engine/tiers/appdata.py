"""Application data tier: `$KRYONIX_APP_DATA_DIR/cliente_{id}/` (config, media, mobile data).

Biometric templates are never backed up: restic excludes them, and every session lists
its snapshot afterwards and refuses (forgets it, fails the tier) if one slipped through.

The inventory (relative path → size, sha256) describes what restic stored, not what the
folder held a moment earlier: files are hashed before restic scans them, and every file
that may have changed since (it changed while hashed, its lstat differs after the backup,
restic saw another size, it was modified within RACY_SECONDS of being hashed, or restic
stored a file the hashing did not see) is hashed again from the snapshot itself, in one
`restic restore` of just those files. Unchanged files, the usual case, cost no extra read.

Restore builds the folder beside the current one, verifies every file against the
manifest, carries the device-local biometric templates over without ever following a
symbolic link (a link where templates hang is refused), gives the folder its recorded
mode and owner, and swaps by rename (live → previous, restored → live, previous removed), so
a kill at any moment is undone or finished by `heal_interrupted_swap`, which every backup and
restore of the tenant runs first: like the PostgreSQL tier's, it rolls back to previous while
the live folder is missing.

An empty tier (no folder, or no files) is status `empty`/0 items, not a failure; the session
warns when the previous restore point had items.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import OperationFailed, one_line
from ..fsutil import fsync_dir
from ..manifest import STATUS_EMPTY, STATUS_OK, TierResult, tier_tags
from ..naming import TenantNames
from ..repository import Restic, SnapshotNode
from .base import BackupContext, RestoreContext, RestoreOutcome, TierSpec
from ..reporting import NullReporter, Reporter, Stopwatch

TIER = "appdata"
BIOMETRIC_TEMPLATES = "biometric/templates"
EXCLUDES = (BIOMETRIC_TEMPLATES,)  # restic matches a relative pattern at any depth
RACY_SECONDS = 2  # a file modified this recently may change again without its ctime moving
MAX_INCLUDES = 200  # beyond this many files to re-read, restore the whole snapshot instead
NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def is_biometric_template(relative: str) -> bool:
    return f"/{BIOMETRIC_TEMPLATES}/" in f"/{relative.strip('/')}/"


def _is_template_root(relative: str) -> bool:
    return relative == BIOMETRIC_TEMPLATES or relative.endswith(f"/{BIOMETRIC_TEMPLATES}")


# --- walking without following links ----------------------------------------------------------

def regular_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every regular file under root that a backup takes; links are
    neither followed nor listed (restic stores them as links)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if not is_biometric_template(rel) and stat.S_ISREG(os.lstat(path).st_mode):
                yield rel, path


def _sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_nofollow(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    try:
        return _sha256_fd(fd)
    finally:
        os.close(fd)


def inventory(root: Path) -> dict[str, list]:
    """relative path → [size, sha256] of every file that a backup takes."""
    files = {}
    for rel, path in regular_files(root):
        files[rel] = [os.lstat(path).st_size, sha256_nofollow(path)]
    return files


@dataclass(frozen=True)
class FileState:
    """What lstat says about a file; any write or replacement changes it (but see RACY_SECONDS)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileState":
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class HashedFile:
    size: int
    sha256: str
    state: FileState
    stable: bool  # the file did not change while it was read
    hashed_at_ns: int

    @property
    def racy(self) -> bool:
        return self.state.ctime_ns >= self.hashed_at_ns - RACY_SECONDS * 1_000_000_000


def _hash_live_file(path: Path) -> HashedFile | None:
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except OSError:
        return None  # gone or became a link since the walk: restic decides what it stores
    try:
        hashed_at = time.time_ns()
        before = FileState.of(os.fstat(fd))
        digest = _sha256_fd(fd)
    finally:
        os.close(fd)
    try:
        after = FileState.of(os.lstat(path))
    except OSError:
        after = None
    return HashedFile(before.size, digest, before, after == before, hashed_at)


def _hash_live_tree(root: Path) -> dict[str, HashedFile]:
    hashed = {}
    for rel, path in regular_files(root):
        entry = _hash_live_file(path)
        if entry is not None:
            hashed[rel] = entry
    return hashed


def _current_state(path: Path) -> FileState | None:
    try:
        return FileState.of(os.lstat(path))
    except OSError:
        return None


# --- what restic stored ---------------------------------------------------------------------

def _restic_include(relative: str) -> str:
    """An exact path as a restic include pattern (glob characters escaped)."""
    escaped = "".join("\\" + ch if ch in "\\*?[]" else ch for ch in relative)
    return "/" + escaped


def hash_from_snapshot(repo: Restic, snapshot_id: str, relatives: list[str], scratch_root: Path,
                       label: str) -> dict[str, list]:
    """[size, sha256] of some files as restic stored them, read back in one restore."""
    scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(scratch_root, 0o700)
    with tempfile.TemporaryDirectory(prefix="appdata-reread-", dir=scratch_root) as tmp:
        includes = [_restic_include(r) for r in relatives] if len(relatives) <= MAX_INCLUDES else []
        repo.restore(snapshot_id, Path(tmp), includes=includes)
        files = {}
        for rel in relatives:
            path = Path(tmp) / rel
            try:
                files[rel] = [os.lstat(path).st_size, sha256_nofollow(path)]
            except OSError:
                raise OperationFailed(f"{label}, tier appdata: {rel} is listed in snapshot {snapshot_id[:8]} "
                                      f"but could not be read back from it") from None
        return files


def settle_inventory(repo: Restic, root: Path, hashed: dict[str, HashedFile], nodes: list[SnapshotNode],
                     snapshot_id: str, scratch_root: Path, label: str) -> tuple[dict[str, list], int]:
    """The inventory of what the snapshot holds, and how many files had to be re-read from it."""
    stored = {n.path.lstrip("/"): n.size for n in nodes if n.type == "file"}
    files, unsure = {}, []
    for rel, size in stored.items():
        entry = hashed.get(rel)
        if (entry is None or not entry.stable or entry.racy or entry.size != size
                or _current_state(root / rel) != entry.state):
            unsure.append(rel)
        else:
            files[rel] = [entry.size, entry.sha256]
    if unsure:
        files.update(hash_from_snapshot(repo, snapshot_id, sorted(unsure), scratch_root, label))
    return dict(sorted(files.items())), len(unsure)


# --- backup -----------------------------------------------------------------------------------

def _folder_attributes(root: Path) -> dict:
    st = os.lstat(root)
    return {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def _forget_leak(repo: Restic, snapshot_id: str) -> str:
    """Forget the snapshot first (so nothing references the leaked data even if prune fails),
    waiting out a competing lock, then prune. Returns what could not be done."""
    deadline = time.monotonic() + 60
    while True:
        try:
            repo.forget_ids([snapshot_id])
            break
        except OperationFailed as exc:
            if time.monotonic() > deadline:
                return (f"; the snapshot could NOT be forgotten ({one_line(str(exc), 200)}): run "
                        f"`restic forget --prune {snapshot_id[:8]}` on the repository")
            time.sleep(2)
    try:
        repo.prune()
    except OperationFailed as exc:
        return f"; snapshot forgotten, but prune failed ({one_line(str(exc), 200)}): the next forget prunes it"
    return "; snapshot removed"


def backup(ctx: BackupContext) -> TierResult:
    watch = Stopwatch()
    names = ctx.names
    label = f"tenant {names.tenant_id}"
    healed = heal_interrupted_swap(names, ctx.report)
    root = names.app_data_dir
    if root.is_symlink():
        raise OperationFailed(f"{label}, tier appdata: {root} is a symbolic link; refusing to back up through it")
    if not root.is_dir():
        ctx.captured[TIER] = {"files": [], "root": None}
        return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds,
                          details={"folder": None, "healed": healed})
    if not any(root.iterdir()):  # restic refuses an empty snapshot
        ctx.captured[TIER] = {"files": [], "root": str(root)}
        return TierResult(TIER, STATUS_EMPTY, duration_seconds=watch.seconds,
                          details={"folder": _folder_attributes(root), "healed": healed})
    hashed = _hash_live_tree(root)
    previous = ctx.previous_tier(TIER)
    parent = previous.snapshots.get("files") if previous else None
    summary = ctx.repo.backup_directory(root, tier_tags(ctx.session_id, TIER, "files", ctx.backup_type),
                                       ctx.session_time, parent=parent, excludes=EXCLUDES,
                                       force=ctx.backup_type == "full", progress=ctx.restic_progress("app data"))
    nodes = ctx.repo.list_nodes(summary.snapshot_id)
    leaked = [n.path for n in nodes if is_biometric_template(n.path)]
    if leaked:
        outcome = _forget_leak(ctx.repo, summary.snapshot_id)
        raise OperationFailed(f"{label}, tier appdata: biometric template(s) reached the snapshot ({leaked[0]})"
                              f"{outcome}")
    files, reread = settle_inventory(ctx.repo, root, hashed, nodes, summary.snapshot_id,
                                     Path(ctx.settings.state_dir) / "scratch" / names.local_name, label)
    ctx.captured[TIER] = {"files": sorted(files), "root": str(root)}
    return TierResult(
        TIER, STATUS_OK, snapshots={"files": summary.snapshot_id}, bytes_processed=summary.total_bytes_processed,
        bytes_added=summary.data_added, items=len(files), duration_seconds=watch.seconds,
        checksums={"files": files},
        details={"files": len(files), "files_new": summary.files_new, "files_changed": summary.files_changed,
                 "files_unmodified": summary.files_unmodified, "files_reread_from_snapshot": reread,
                 "folder": _folder_attributes(root), "healed": healed},
    )


# --- restore ----------------------------------------------------------------------------------

def restore(ctx: RestoreContext) -> RestoreOutcome:
    outcome = RestoreOutcome(tier=TIER)
    label = f"tenant {ctx.target.tenant_id}"
    healed = heal_interrupted_swap(ctx.target, ctx.report)
    if healed:
        outcome.details["healed"] = healed
    target = ctx.target.app_data_dir
    if target.is_symlink():
        raise OperationFailed(f"{label}, tier appdata: {target} is a symbolic link; the current folder was kept")
    target.parent.mkdir(parents=True, exist_ok=True)
    attributes = _restored_attributes(ctx, target)
    staging = Path(tempfile.mkdtemp(prefix=ctx.target.app_data_staging_prefix, dir=target.parent))
    try:
        ctx.repo.restore(ctx.result.snapshots["files"], staging)
        expected = ctx.result.checksums.get("files", {})
        restored = inventory(staging)
        if restored != expected:
            wrong = sorted(k for k in set(restored) | set(expected) if restored.get(k) != expected.get(k))[:3]
            raise OperationFailed(f"{label}, tier appdata: restored files do not match the "
                                  f"backup ({', '.join(wrong)}); the current folder was kept")
        outcome.details.update(ctx.reapply(TIER, staging))  # the erasure ledger, before the swap
        carry_templates(target, staging, outcome, label)
        _apply_attributes(staging, attributes, outcome)
        removed = len(_entries(target) - _entries(staging))  # the live folder's files the restore point lacks
        swap_into_place(ctx.target, staging)
        outcome.removed = removed
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    outcome.restored = len(expected)
    return outcome


def _entries(folder: Path) -> set[str]:
    """Relative paths of everything but folders under `folder`, links not followed."""
    if not folder.is_dir() or folder.is_symlink():
        return set()
    found = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath).relative_to(folder)
        found.update((base / name).as_posix() for name in filenames)
        found.update((base / name).as_posix() for name in dirnames if (Path(dirpath) / name).is_symlink())
    return found


def _restored_attributes(ctx: RestoreContext, target: Path) -> dict | None:
    """The folder's recorded mode and owner; restoring into another tenant keeps the target's own."""
    if ctx.into_other and target.is_dir():
        return _folder_attributes(target)
    recorded = ctx.result.details.get("folder")
    if isinstance(recorded, dict) and {"mode", "uid", "gid"} <= recorded.keys():
        return recorded
    return _folder_attributes(target) if target.is_dir() else None  # restore point older than the record


def _apply_attributes(folder: Path, attributes: dict | None, outcome: RestoreOutcome) -> None:
    if attributes is None:
        os.chmod(folder, 0o777 & ~_umask())
        return
    try:
        os.chown(folder, int(attributes["uid"]), int(attributes["gid"]), follow_symlinks=False)
    except PermissionError:
        outcome.warnings.append(f"folder owner {attributes['uid']}:{attributes['gid']} not restored (not root)")
    os.chmod(folder, int(attributes["mode"]) & 0o7777)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- biometric templates: carried over, never through a link ----------------------------------

def _refuse_link(label: str, where: str, relative: str) -> OperationFailed:
    return OperationFailed(f"{label}, tier appdata: {relative} is a symbolic link in the {where}; biometric "
                           f"templates are never carried through links (the current folder was kept)")


def carry_templates(current: Path, staging: Path, outcome: RestoreOutcome, label: str = "") -> None:
    """Biometric templates live only on the tenant's machine: a restore must not delete them.
    Nothing is read or written through a symbolic link."""
    if not current.is_dir() or current.is_symlink():
        return
    kept = 0
    for dirpath, dirnames, filenames in os.walk(current, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = path.relative_to(current).as_posix()
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) and (name == "biometric" or _is_template_root(rel)):
                raise _refuse_link(label, "live folder", rel)
            if not _is_template_root(rel):
                continue
            if name in dirnames:
                dirnames.remove(name)  # copied whole below, not walked again
            dest = _staging_parent(staging, rel, label) / name
            kept += _copy_nofollow(path, dest, rel, label)
    if kept:
        outcome.details["biometric_templates_kept"] = kept


def _staging_parent(staging: Path, relative: str, label: str) -> Path:
    """The folder in staging that receives `relative`, created as needed; refused if any part of
    it is a link (the snapshot may hold links) or not a folder."""
    folder = staging
    for part in Path(relative).parts[:-1]:
        folder = folder / part
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            os.mkdir(folder, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise _refuse_link(label, "restored snapshot", folder.relative_to(staging).as_posix())
        if not stat.S_ISDIR(st.st_mode):
            raise OperationFailed(f"{label}, tier appdata: {folder.relative_to(staging).as_posix()} is not a folder "
                                  f"in the restored snapshot; templates not carried (the current folder was kept)")
    return folder


def _copy_nofollow(source: Path, dest: Path, relative: str, label: str) -> int:
    """Copy a file, link or folder tree; links are copied as links, never followed. Number of files."""
    st = os.lstat(source)
    if os.path.lexists(dest):
        raise OperationFailed(f"{label}, tier appdata: {relative} already exists in the restored snapshot; "
                              f"templates not carried (the current folder was kept)")
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), dest)
        os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
        return 0
    if stat.S_ISREG(st.st_mode):
        _copy_file_nofollow(source, dest, st)
        return 1
    if not stat.S_ISDIR(st.st_mode):
        return 0  # sockets, fifos, devices: not data
    os.mkdir(dest, 0o700)
    count = 0
    with os.scandir(source) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            count += _copy_nofollow(Path(entry.path), dest / entry.name, f"{relative}/{entry.name}", label)
    os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(dest, stat.S_IMODE(st.st_mode))
    return count


def _copy_file_nofollow(source: Path, dest: Path, st: os.stat_result) -> None:
    src = os.open(source, os.O_RDONLY | NOFOLLOW)
    try:
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
        try:
            while chunk := os.read(src, 1 << 20):
                os.write(dst, chunk)
            os.fchown(dst, st.st_uid, st.st_gid)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


# --- the swap ----------------------------------------------------------------------------------

def swap_into_place(names: TenantNames, staging: Path) -> None:
    """live → previous, staging → live, previous removed last. A kill at any point leaves a state
    `heal_interrupted_swap` undoes (live missing: previous back) or finishes (live present:
    previous removed). `staging` must be complete and verified."""
    target, previous = names.app_data_dir, names.previous_app_data_dir
    if os.path.lexists(previous):  # heal ran first: only a finished swap's leftover can be here
        if not os.path.lexists(target):  # never remove the only copy
            raise OperationFailed(f"tenant {names.tenant_id}, tier appdata: {target} is missing and {previous} "
                                  f"holds its data; run the restore again to put it back")
        shutil.rmtree(previous)
    if os.path.lexists(target):
        os.replace(target, previous)
    os.replace(staging, target)
    fsync_dir(target.parent)
    shutil.rmtree(previous, ignore_errors=True)
    fsync_dir(target.parent)


def heal_interrupted_swap(names: TenantNames, report: Reporter | None = None) -> list[str]:
    """Undo or finish a restore swap a kill interrupted, in the same direction as the PostgreSQL
    tier's heal (so a killed full restore never leaves old data in one tier and new in another):

    live missing, previous present → roll back: previous becomes the live folder again (it is
      never deleted while the live folder is missing);
    live and previous present → the swap finished, its cleanup did not: previous is removed;
    any unfinished restore folder beside them is discarded, and so is a journal earlier
    versions wrote. Returns what was done."""
    report = report or NullReporter()
    target, previous = names.app_data_dir, names.previous_app_data_dir
    parent = target.parent
    if not parent.is_dir():
        return []
    actions: list[str] = []
    if os.path.lexists(previous):
        if os.path.lexists(target):
            shutil.rmtree(previous, ignore_errors=True)
            actions.append("removed the previous folder of a finished swap")
        else:
            os.replace(previous, target)
            fsync_dir(parent)
            actions.append("swap was interrupted: rolled back to the previous folder")
    for leftover in sorted(parent.glob(f"{names.app_data_staging_prefix}*")):
        shutil.rmtree(leftover, ignore_errors=True)
        actions.append(f"removed the unfinished restore folder {leftover.name}")
    journal = names.app_data_journal
    for stale in (journal, journal.with_name(journal.name + ".tmp")):
        stale.unlink(missing_ok=True)
    if actions:
        fsync_dir(parent)
        for action in actions:
            report.warn(f"tenant {names.tenant_id}, tier appdata: {action}")
    return actions


# The tier as one unit: what the session, the restore, the drill and the Dagster layer know
# about it (listed in tiers.TIERS).

SPEC = TierSpec(
    TIER, "application", False, "appdata", backup, restore,
    asset_key="app_data_backup", kinds=("restic",),
    description="The tenant's application folder (config, media, mobile data); biometric templates are never taken.",
)  # drill: the restore itself verifies every file against the manifest's inventory
