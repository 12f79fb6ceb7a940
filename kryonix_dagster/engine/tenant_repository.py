"""Open a tenant's own restic repository with its own password from the key vault.

Each repository is opened through a key file with cheap scrypt parameters (restic_key.py):
a new repository gets one right after `init`, an existing one is migrated on its next open.
The migration never leaves a repository keyless and removes only key files it proved
replaceable: the cheap key wraps the same master key as each removed one, and the stock
restic binary opened the repository with it. The cheap key's id is remembered in a marker
under the state folder, so later opens cost no restic process and no storage request.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from . import keys, restic_key
from .config import Settings
from .errors import OperationFailed
from . import locations
from .naming import names_for, repository_in
from .repository import Restic

log = logging.getLogger(__name__)


def open_repository(settings: Settings, tenant_id: str, create: bool = False,
                    repository: str = locations.PRIMARY) -> Restic | None:
    """The tenant's repository (the primary, or the off-site copy: `repository`); None when it
    has never been backed up (unless `create`). A new primary repository's wrapped password is
    stashed beside it (key_stash.py); a new copy is initialised with the primary's chunker
    parameters and a replacement primary with the copy's, so copies deduplicate."""
    names = names_for(settings, tenant_id)
    where = locations.location(settings, repository)
    if keys.wrapped_key(settings, tenant_id) is None:
        # a repository with no key row is not "never backed up": its key row was lost, and a new
        # password would never open it (a backup would poison the vault with one)
        location = repository_in(where.root, tenant_id) if where.is_copy else names.repository
        if _has_key_files(settings, location, where):
            hint = " --from secondary" if where.is_copy else ""
            raise OperationFailed(f"tenant {tenant_id}: its repository exists ({where.kind}) but the key vault holds no "
                                  f"password for it (its key row was lost?): run `kryonix-backup keys recover{hint}`")
    password = keys.repository_password(settings, tenant_id, create=create and not where.is_copy)
    if password is None:
        return None
    repo = Restic(
        repository_in(where.root, tenant_id) if where.is_copy else names.repository, password,
        label=f"tenant {tenant_id}" + (f" ({where.kind})" if where.is_copy else ""),
        cache_dir=settings.state_dir / "restic-cache",
        access_key=where.access_key, secret_key=where.secret_key,
    )
    repo.is_copy = where.is_copy
    repo.key_hint = remembered_cheap_key(settings, repo.location)
    if create and not repo.exists():
        if where.is_copy:
            source = open_repository(settings, tenant_id)
            if source is None:
                raise OperationFailed(f"tenant {tenant_id}: no primary repository to copy from")
            repo.init_copy_of(source)
        else:
            _init_primary(settings, tenant_id, repo)
        repo.key_hint = None
    if repo.key_hint is None:
        repo.key_hint = ensure_cheap_key(settings, repo, password)
    if create:
        from .key_stash import ensure_stashed
        ensure_stashed(settings, tenant_id, where)
    return repo


def _init_primary(settings: Settings, tenant_id: str, repo: Restic) -> None:
    """A new primary. When the off-site copy already holds the tenant's repository (the old
    primary was lost, runbook section 2), the new one takes the copy's chunker parameters: with
    its own, every blob of the next `copy` would be chunked anew and the copy would stop
    deduplicating. An unreachable copy does not stop the backup (a warning says what it costs)."""
    copy = None
    if locations.secondary_configured(settings):
        try:
            copy = open_repository(settings, tenant_id, repository=locations.SECONDARY)
            if copy is not None and not copy.exists():
                copy = None
        except OperationFailed as exc:
            log.warning("%s: could not read the off-site copy (%s); the new primary gets its own chunker "
                        "parameters, so the next copy will not deduplicate against it", repo.label, exc)
            copy = None
    if copy is None:
        repo.init()
    else:
        repo.init_copy_of(copy)


def _has_key_files(settings: Settings, location: str, where) -> bool:
    """True when a repository is there (it has key files); unreachable storage says nothing."""
    try:
        folder = key_folder(settings, location, where.access_key, where.secret_key)
        return folder is not None and bool(folder.names())
    except OSError:
        return False


# -- where a repository's key files live -------------------------------------------------------

class KeyFolder(Protocol):
    """A repository's `keys/` folder in its storage. Errors surface as OSError."""

    def names(self) -> list[str]: ...
    def read(self, name: str) -> bytes: ...
    def write(self, name: str, raw: bytes) -> None: ...
    def remove(self, name: str) -> None: ...


@dataclass(frozen=True)
class LocalKeyFolder:
    root: Path  # the repository's folder

    @property
    def folder(self) -> Path:
        return self.root / "keys"

    def names(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir()) if self.folder.is_dir() else []

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def make_folder(self) -> None:
        """keys/ and the folders above it that are missing; group-readable (and setgid kept)
        where the nearest existing folder is, as restic does for a repository shared with a group."""
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        shared = _shared_with_group(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in missing if shared else ():
            os.chmod(path, 0o750 | (path.stat().st_mode & 0o2000))

    def write(self, name: str, raw: bytes) -> None:
        """Atomic and durable, read-only like restic's own files (group-readable when the folder
        is: the off-site endpoint's own user must read what the admin path writes as root); the
        temporary file sits outside keys/ so restic never lists a partial key."""
        tmp = self.root / f".kryonix-key-{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            os.fchmod(fd, 0o440 if _shared_with_group(self.folder) else 0o400)
            with os.fdopen(fd, "wb") as out:
                out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.folder / name)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.folder)

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)
        _fsync_dir(self.folder)


@dataclass(frozen=True)
class S3KeyFolder:
    client: object
    bucket: str
    prefix: str  # the repository's prefix inside the bucket, "" for the bucket's root

    def _key(self, name: str) -> str:
        return f"{self.prefix}keys/{name}"

    def names(self) -> list[str]:
        found = []
        with _as_oserror():
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(""))
            for page in pages:
                found += [item["Key"].rsplit("/", 1)[-1] for item in page.get("Contents", [])]
        return sorted(found)

    def read(self, name: str) -> bytes:
        with _as_oserror():
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()

    def write(self, name: str, raw: bytes) -> None:
        with _as_oserror():
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=raw)

    def remove(self, name: str) -> None:
        with _as_oserror():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(name))


class _as_oserror:
    """boto3's errors as OSError, so callers handle one kind of storage failure."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError
        if isinstance(exc, (BotoCoreError, ClientError)):
            raise OSError(f"S3: {type(exc).__name__}: {exc}") from None
        return False


def _shared_with_group(path: Path) -> bool:
    """Is the nearest existing folder at or above `path` readable by its group?"""
    for folder in (path, *path.parents):
        if folder.exists():
            return bool(folder.stat().st_mode & 0o040)
    return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def local_root(location: str) -> Path | None:
    """The folder of a local repository; None for remote ones."""
    if location.startswith("file://"):
        return Path(location[len("file://"):])
    return Path(location) if location.startswith("/") else None


@dataclass(frozen=True)
class RestKeyFolder:
    """The keys/ folder of a repository behind restic's REST protocol (`rclone serve restic`).
    Behind an append-only endpoint, `write` of an existing name and `remove` are refused."""

    url: str  # the repository's URL, without `rest:`

    def _url(self, name: str = "") -> str:
        return f"{self.url.rstrip('/')}/keys/{name}"

    def _call(self, method: str, name: str = "", **kwargs):
        import requests
        try:
            response = requests.request(method, self._url(name), timeout=30, **kwargs)
        except requests.RequestException as exc:
            raise OSError(f"REST: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise FileNotFoundError(name)
        if response.status_code >= 300:
            raise OSError(f"REST: {method} keys/{name}: HTTP {response.status_code}")
        return response

    def names(self) -> list[str]:
        try:
            docs = self._call("GET", headers={"Accept": "application/vnd.x.restic.rest.v2"}).json()
        except FileNotFoundError:
            return []
        return sorted(doc["name"] if isinstance(doc, dict) else doc for doc in docs or [])

    def read(self, name: str) -> bytes:
        return self._call("GET", name).content

    def write(self, name: str, raw: bytes) -> None:
        self._call("POST", name, data=raw)

    def remove(self, name: str) -> None:
        self._call("DELETE", name)


def key_folder(settings: Settings, location: str, access_key: str | None = None,
               secret_key: str | None = None) -> KeyFolder | None:
    """The keys/ folder of a file, S3 or REST repository (credentials: the primary's unless
    given); None for backends we do not write to."""
    root = local_root(location)
    if root is not None:
        return LocalKeyFolder(root)
    if location.startswith("rest:"):
        return RestKeyFolder(location[len("rest:"):])
    if not location.startswith("s3:"):
        return None
    rest = location[len("s3:"):]
    url = urlparse(rest if "://" in rest else f"https://{rest}")
    bucket, _, prefix = url.path.lstrip("/").partition("/")
    prefix = prefix.strip("/")
    from .services import client_for
    client = client_for(f"{url.scheme}://{url.netloc}", access_key or settings.repo_access_key,
                        secret_key or settings.repo_secret_key, settings.s3_region)
    return S3KeyFolder(client, bucket, f"{prefix}/" if prefix else "")


# -- the marker: which cheap key a repository opens with -----------------------------------------

def _marker_path(settings: Settings, location: str) -> Path:
    digest = hashlib.sha256(location.encode()).hexdigest()[:32]
    return settings.state_dir / "restic-keys" / digest


def remembered_cheap_key(settings: Settings, location: str) -> str | None:
    """The cheap key this machine migrated the repository to, if still there. For a local
    repository the key file's presence is checked (a recreated repository is inspected again);
    for a remote one the marker is trusted: a stale hint only costs restic a key search."""
    try:
        name = _marker_path(settings, location).read_text().strip()
    except OSError:
        return None
    root = local_root(location)
    if not name or (root is not None and not (root / "keys" / name).is_file()):
        return None
    return name


def _remember(settings: Settings, location: str, name: str) -> None:
    path = _marker_path(settings, location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(name)
    os.replace(tmp, path)


# -- the migration ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Opened:
    key_file: restic_key.KeyFile
    master: bytes


def _open_with(key_file: restic_key.KeyFile, password: str) -> _Opened | None:
    try:
        return _Opened(key_file, restic_key.open_master_key(key_file, password))
    except (restic_key.WrongPassword, restic_key.KeyFileError):
        return None


def _read_key_files(folder: KeyFolder) -> list[restic_key.KeyFile]:
    found = []
    for name in folder.names():
        try:
            key_file = restic_key.parse_key_file(folder.read(name))
        except (restic_key.KeyFileError, FileNotFoundError):
            continue  # not ours to judge: restic decides what to make of it
        if key_file.name == name:
            found.append(key_file)
    return found


def _restic_opens_with(repo: Restic, key_file: restic_key.KeyFile) -> bool:
    """The stock restic binary opens the repository with this key file (hinted, then reported
    as the current key by `key list`), and reads its config with it."""
    repo.key_hint = key_file.name
    try:
        current = repo.current_key_id()
    except OperationFailed:
        return False
    return bool(current) and key_file.name.startswith(current)


def ensure_cheap_key(settings: Settings, repo: Restic, password: str) -> str | None:
    """The id of a cheap key file that opens `repo` with `password`, after replacing every
    expensive key file it wraps the same master key as; None if the repository has no key we
    can open or its storage refused (the repository then stays as it was)."""
    try:
        folder = key_folder(settings, repo.location, *repo.credentials)
        name = _migrate(folder, repo, password) if folder is not None else None
    except OSError as exc:
        log.warning("%s: could not give the repository a cheap key (%s)", repo.label, exc)
        name = None
    if name:
        _remember(settings, repo.location, name)
    repo.key_hint = name
    return name


def _migrate(folder: KeyFolder, repo: Restic, password: str) -> str | None:
    files = _read_key_files(folder)
    cheap = next(filter(None, (_open_with(f, password) for f in files if f.is_cheap)), None)
    expensive = [f for f in files if not f.is_cheap]
    if not expensive:
        return cheap.key_file.name if cheap else None
    ours = [opened for f in expensive if (opened := _open_with(f, password))]
    if cheap is None and not ours:
        return None  # not our password's repository: leave it alone
    target = cheap or _write_cheap_key(folder, ours[0].master, password)
    if not _restic_opens_with(repo, target.key_file):
        log.warning("%s: restic did not open the repository with the new key %s; keeping the old keys",
                    repo.label, target.key_file.name[:8])
        if cheap is None:
            folder.remove(target.key_file.name)
        return None
    for old in ours:  # proven replaceable: same master key, and restic opened with the cheap one
        if restic_key.same_master_key(old.master, target.master):
            try:
                folder.remove(old.key_file.name)
            except OSError as exc:  # an append-only endpoint: the hint still makes restic try the cheap key first
                log.info("%s: expensive key %s stays (%s)", repo.label, old.key_file.name[:8], exc)
    return target.key_file.name


def _write_cheap_key(folder: KeyFolder, master: bytes, password: str) -> _Opened:
    key_file = restic_key.new_key_file(master, password)
    folder.write(key_file.name, key_file.raw)
    return _Opened(key_file, master)
