"""The one typed wrapper around restic. No other module runs restic or parses its output.

Each tenant has its own repository and password; the password travels in the process
environment (RESTIC_PASSWORD), never on a command line, in a log line or in an exception.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

from . import procs
from .errors import OperationFailed, one_line

HOST = "kryonix"  # fixed, so snapshots group and find parents whatever machine ran them
# Reads take no restic lock. restic 0.14 waits 200 ms after writing a lock file (to see a
# competing exclusive lock) and each read is its own process, so locks made every dump, listing
# and restore cost ≥ 0.2 s of wall time. A lock would only protect a read from a concurrent
# prune, and every prune here (forget, the LGPD rewrite, offboarding) runs under the tenant's
# lease, which a session, a restore, a verify or a drill of that tenant holds too. Writes
# (backup, forget, prune, copy, key changes) and `check` still lock.
NO_LOCK = ("--no-lock",)
Progress = Callable[["BackupProgress"], None]


@dataclass(frozen=True)
class BackupProgress:
    bytes_done: int
    total_bytes: int | None
    files_done: int
    percent: float | None


@dataclass(frozen=True)
class BackupSummary:
    snapshot_id: str
    files_new: int
    files_changed: int
    files_unmodified: int
    data_added: int
    total_files_processed: int
    total_bytes_processed: int
    total_duration: float

    @classmethod
    def from_json(cls, doc: dict) -> "BackupSummary":
        return cls(
            snapshot_id=doc["snapshot_id"],
            files_new=doc.get("files_new", 0),
            files_changed=doc.get("files_changed", 0),
            files_unmodified=doc.get("files_unmodified", 0),
            data_added=doc.get("data_added", 0),
            total_files_processed=doc.get("total_files_processed", 0),
            total_bytes_processed=doc.get("total_bytes_processed", 0),
            total_duration=doc.get("total_duration", 0.0),
        )


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: datetime
    tags: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    hostname: str = ""
    original: str | None = None  # in a `restic copy` target: the source snapshot's id

    @classmethod
    def from_json(cls, doc: dict) -> "Snapshot":
        return cls(
            id=doc["id"],
            short_id=doc.get("short_id", doc["id"][:8]),
            time=parse_restic_time(doc["time"]),
            tags=tuple(doc.get("tags") or ()),
            paths=tuple(doc.get("paths") or ()),
            hostname=doc.get("hostname", ""),
            original=doc.get("original"),
        )

    def tag(self, key: str) -> str | None:
        prefix = f"{key}="
        for tag in self.tags:
            if tag.startswith(prefix):
                return tag[len(prefix):]
        return None


@dataclass(frozen=True)
class SnapshotNode:
    path: str
    type: str  # file | dir | symlink | …
    size: int


@dataclass(frozen=True)
class ForgetGroup:
    keep: tuple[Snapshot, ...]
    remove: tuple[Snapshot, ...]
    reasons: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    output: str

    @property
    def problems(self) -> list[str]:
        """What `restic check` found, without its progress and step lines."""
        lines = (part.strip() for line in self.output.splitlines() for part in line.split("\r"))
        return [line for line in lines if line and not _CHECK_PROGRESS.match(line)
                and not line.startswith(_CHECK_STEPS) and "returned error, retrying after" not in line]


_CHECK_PROGRESS = re.compile(r"^\[\d+:\d+(:\d+)?\]")
_CHECK_STEPS = ("using temporary cache", "create exclusive lock", "load indexes", "check all packs",
                "check snapshots, trees and blobs", "read all data", "read group", "no errors were found",
                "created new cache", "Fatal: repository contains errors")


# What restic says when a repository is not where it was (restic 0.14 and later)
MISSING_REPOSITORY = ("Is there a repository at the following location?", "unable to open config file")


def parse_restic_time(text: str) -> datetime:
    """restic prints RFC 3339 with nanoseconds; Python takes microseconds."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        frac, tz = "", ""
        for i, ch in enumerate(rest):
            if not ch.isdigit():
                frac, tz = rest[:i], rest[i:]
                break
        else:
            frac = rest
        text = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def restic_location(repo: str) -> str:
    """KRYONIX_REPO accepts file:///path; restic wants a plain path for local repositories."""
    return repo[len("file://"):] if repo.startswith("file://") else repo


def shown_location(location: str) -> str:
    """A repository location fit for a message: without the user and password a URL may carry
    (`rest:http://USER:PASSWORD@host:port/…`, the off-site endpoint's client credentials)."""
    return re.sub(r"^([a-z0-9+]+:(?:[a-z0-9+]+:)?//)[^/@]*@", r"\1", location)


def restic_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def restic_version() -> str:
    try:
        out = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise OperationFailed("restic is not installed (apt-get install restic)") from None
    return out.split()[1] if len(out.split()) > 1 else out.strip()


class Restic:
    """A restic repository opened with its password."""

    def __init__(self, repo: str, password: str, label: str, cache_dir: Path,
                 access_key: str | None = None, secret_key: str | None = None, key_hint: str | None = None):
        self.location = restic_location(repo)
        self.key_hint = key_hint  # id of the key file restic tries first (RESTIC_KEY_HINT)
        self.label = label  # e.g. "tenant 42", used in every error message
        self.is_copy = False  # the off-site copy: manifests name the primary's snapshot ids (manifest.py)
        self._password = password
        self._cache_dir = cache_dir
        self._access_key = access_key
        self._secret_key = secret_key

    def __repr__(self) -> str:
        return f"Restic({self.label}, {shown_location(self.location)})"

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def credentials(self) -> tuple[str | None, str | None]:
        return self._access_key, self._secret_key

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
        env.update(
            RESTIC_REPOSITORY=self.location,
            RESTIC_PASSWORD=self._password,
            RESTIC_CACHE_DIR=str(self._cache_dir),
            RESTIC_PROGRESS_FPS="0.5",
            TZ="UTC",
        )
        if self.key_hint:
            env["RESTIC_KEY_HINT"] = self.key_hint
        if self._access_key:
            env["AWS_ACCESS_KEY_ID"] = self._access_key
        if self._secret_key:
            env["AWS_SECRET_ACCESS_KEY"] = self._secret_key
        return env

    def _fail(self, action: str, stderr: str) -> OperationFailed:
        if any(sign in stderr for sign in MISSING_REPOSITORY):
            return OperationFailed(self.missing_message())
        return OperationFailed(f"{self.label}: restic {action} failed: {one_line(stderr, 300)}")

    @property
    def _tenant(self) -> str:
        words = self.label.split()
        return words[1] if len(words) > 1 and words[0] == "tenant" else "ID"

    def missing_message(self) -> str:
        """One line for a repository that is not there (deleted, or its storage unreachable):
        what is missing and what to run, never restic's own text."""
        where = shown_location(self.location)
        if getattr(self, "is_copy", False):
            return (f"{self.label}: the off-site copy has no repository at {where} (deleted, or the endpoint does not "
                    f"serve it): `kryonix-backup copy {self._tenant}` writes it again from the primary; restores need the "
                    "primary (without --from secondary)")
        return (f"{self.label}: its repository is missing at {where} (deleted, or the storage cannot be reached): "
                f"restore from the off-site copy with `kryonix-backup restore {self._tenant} --from secondary` "
                "(docs/runbook.md, section 2), then back up to build a new primary")

    def run(self, args: Sequence[str], action: str, stdin: bytes | None = None, cwd: Path | None = None,
            ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        proc = procs.run(["restic", *args], input=stdin, capture_output=True, env=self.env(), cwd=cwd)
        if proc.returncode not in ok_codes:
            raise self._fail(action, proc.stderr.decode(errors="replace"))
        return proc

    def run_json(self, args: Sequence[str], action: str):
        out = self.run([*args, "--json"], action).stdout.decode()
        return json.loads(out) if out.strip() else None

    # -- repository lifecycle ----------------------------------------------------------------

    def exists(self) -> bool:
        if "://" not in self.location and ":" not in self.location.split("/")[0]:
            return (Path(self.location) / "config").exists()
        proc = subprocess.run(["restic", "cat", "config"], capture_output=True, env=self.env())
        if proc.returncode == 0:
            return True
        err = proc.stderr.decode(errors="replace")
        if "Is there a repository at the following location?" in err:
            return False
        raise self._fail("cat config", err)

    def init(self) -> None:
        self.run(["init", "--repository-version", "2"], "init")

    def init_copy_of(self, source: "Restic") -> None:
        """A new repository with `source`'s chunker parameters (and the same password), so
        `restic copy` from it deduplicates."""
        self._run_with_source(source, ["init", "--repository-version", "2", "--copy-chunker-params"], "init")

    def copy_from(self, source: "Restic", snapshot_ids: Sequence[str]) -> None:
        """`restic copy` of the given snapshots of `source` into this repository; snapshots already
        here are skipped by restic itself."""
        if snapshot_ids:
            self._run_with_source(source, ["copy", *snapshot_ids], "copy")

    def _run_with_source(self, source: "Restic", args: list[str], action: str) -> None:
        env = self.env()
        env.update(RESTIC_FROM_REPOSITORY=source.location, RESTIC_FROM_PASSWORD=source._password)
        if source.key_hint:
            env["RESTIC_FROM_KEY_HINT"] = source.key_hint
        for name, value in zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), source.credentials):
            if value and name not in env:  # restic 0.14 has one set of S3 credentials for both
                env[name] = value
        proc = procs.run(["restic", *args], capture_output=True, env=env)
        if proc.returncode != 0:
            raise self._fail(action, proc.stderr.decode(errors="replace"))

    def current_key_id(self) -> str:
        """Short id of the key file restic opened the repository with (the hinted one if it
        opens with the password). Takes no lock."""
        keys = self.run_json(["--no-lock", "key", "list"], "key list") or []
        return next((k["id"] for k in keys if k.get("current")), "")

    def unlock(self) -> None:
        """Remove stale locks only (a killed session's); live ones stay."""
        self.run(["unlock"], "unlock")

    # -- backup --------------------------------------------------------------------------------

    def _backup(self, args: list[str], tags: Iterable[str], time: datetime | None, feed, cwd: Path | None,
                progress: Progress | None, action: str) -> BackupSummary:
        cmd = ["restic", "backup", "--json", "--host", HOST]
        for tag in tags:
            cmd += ["--tag", tag]
        if time is not None:
            cmd += ["--time", restic_time(time)]
        cmd += args
        with tempfile.TemporaryFile() as errfile:
            proc = procs.popen(cmd, stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=errfile, env=self.env(), cwd=cwd)
            feeder_error: list[BaseException] = []
            feeder = None
            if feed:
                feeder = threading.Thread(target=_pump, args=(feed, proc, feeder_error), daemon=True)
                feeder.start()
            summary = None
            for line in proc.stdout:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                kind = doc.get("message_type")
                if kind == "summary":
                    summary = BackupSummary.from_json(doc)
                elif kind == "status" and progress:
                    progress(BackupProgress(
                        bytes_done=doc.get("bytes_done", 0), total_bytes=doc.get("total_bytes"),
                        files_done=doc.get("files_done", 0), percent=doc.get("percent_done")))
            code = proc.wait()
            if feeder:
                feeder.join()
            errfile.seek(0)
            stderr = errfile.read().decode(errors="replace")
        if feeder_error:
            if summary:  # restic finished before the kill: a truncated stream must not stay
                self.forget_ids([summary.snapshot_id])
            raise feeder_error[0]
        if code not in (0, 3) or summary is None:  # 3: some source files unreadable (reported)
            raise self._fail(action, stderr or f"exit code {code}")
        if code == 3:
            raise self._fail(action, f"some files could not be read: {stderr}")
        return summary

    def backup_stream(self, chunks: Iterable[bytes], filename: str, tags: Iterable[str],
                      time: datetime | None = None, progress: Progress | None = None) -> BackupSummary:
        """Store a byte stream as one file of a new snapshot (`restic backup --stdin`)."""
        return self._backup(["--stdin", "--stdin-filename", filename], tags, time, chunks, None, progress,
                            f"backup of {filename}")

    def backup_bytes(self, data: bytes, filename: str, tags: Iterable[str], time: datetime | None = None) -> BackupSummary:
        return self.backup_stream([data], filename, tags, time)

    def backup_directory(self, directory: Path, tags: Iterable[str], time: datetime | None = None,
                         parent: str | None = None, excludes: Iterable[str] = (), force: bool = False,
                         progress: Progress | None = None, mtime_and_size_only: bool = False) -> BackupSummary:
        """Back up a directory's contents; the snapshot's root is the directory itself, so a
        restore can target any folder (another tenant's included). `mtime_and_size_only`: a
        file whose mtime and size equal the parent's is unchanged, whatever its inode and ctime
        (a folder rebuilt for each session), and restic reuses the parent's content unread."""
        args = []
        if parent:
            args += ["--parent", parent]
        if force:
            args.append("--force")
        if mtime_and_size_only:
            args += ["--ignore-inode", "--ignore-ctime"]
        for pattern in excludes:
            args += ["--exclude", pattern]
        args.append(".")
        return self._backup(args, tags, time, None, Path(directory), progress, f"backup of {directory}")

    # -- reading -------------------------------------------------------------------------------

    def snapshots(self, tags: Sequence[str] = ()) -> list[Snapshot]:
        args = [*NO_LOCK, "snapshots"]
        if tags:
            args += ["--tag", ",".join(tags)]
        docs = self.run_json(args, "snapshots") or []
        return sorted((Snapshot.from_json(d) for d in docs), key=lambda s: s.time)

    def dump_to(self, snapshot_id: str, path: str, out: IO[bytes]) -> None:
        with tempfile.TemporaryFile() as errfile:
            proc = procs.run(["restic", *NO_LOCK, "dump", snapshot_id, path], stdout=out, stderr=errfile, env=self.env())
            if proc.returncode != 0:
                errfile.seek(0)
                raise self._fail(f"dump {snapshot_id[:8]}:{path}", errfile.read().decode(errors="replace"))

    def dump_chunks(self, snapshot_id: str, path: str, size: int = 1 << 20) -> Iterator[bytes]:
        """A file of a snapshot as a stream of chunks (`restic dump`), for a reader that checks
        or copies it as it comes; raises at the end if restic failed. A reader that stops early
        closes the pipe and restic exits."""
        with tempfile.TemporaryFile() as errfile:
            proc = procs.popen(["restic", *NO_LOCK, "dump", snapshot_id, path], stdout=subprocess.PIPE, stderr=errfile,
                               env=self.env())
            try:
                while chunk := proc.stdout.read(size):
                    yield chunk
            finally:
                proc.stdout.close()
                code = proc.wait()
            if code != 0:
                errfile.seek(0)
                raise self._fail(f"dump {snapshot_id[:8]}:{path}", errfile.read().decode(errors="replace"))

    def read_through(self, snapshot_id: str) -> None:
        """Read and authenticate every blob of a snapshot (`restic dump ID /`, discarded): a
        damaged or missing pack fails here, before anything live is replaced."""
        with open(os.devnull, "wb") as sink:
            self.dump_to(snapshot_id, "/", sink)

    def dump_latest(self, path: str, tags: Sequence[str]) -> bytes | None:
        """A file of the newest snapshot carrying all `tags`, in one restic call; None if none."""
        proc = procs.run(["restic", *NO_LOCK, "dump", "latest", path, "--tag", ",".join(tags)], capture_output=True, env=self.env())
        if proc.returncode == 0:
            return proc.stdout
        err = proc.stderr.decode(errors="replace")
        if "no snapshot found" in err:
            return None
        raise self._fail(f"dump latest:{path}", err)

    def dump_bytes(self, snapshot_id: str, path: str) -> bytes:
        return self.run([*NO_LOCK, "dump", snapshot_id, path], f"dump {snapshot_id[:8]}:{path}").stdout

    def restore(self, snapshot_id: str, target: Path, includes: Iterable[str] = ()) -> None:
        args = [*NO_LOCK, "restore", snapshot_id, "--target", str(target)]
        for pattern in includes:
            args += ["--include", pattern]
        self.run(args, f"restore {snapshot_id[:8]}")

    def list_nodes(self, snapshot_id: str) -> list["SnapshotNode"]:
        """Every node inside a snapshot (`restic ls --json`): path, type, size."""
        out = self.run([*NO_LOCK, "ls", "--json", snapshot_id], f"ls {snapshot_id[:8]}").stdout.decode()
        nodes = []
        for line in out.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("struct_type") == "node":
                nodes.append(SnapshotNode(doc["path"], doc.get("type", ""), int(doc.get("size") or 0)))
        return nodes

    def forget_ids(self, snapshot_ids: Sequence[str], prune: bool = False) -> None:
        if snapshot_ids:
            self.run(["forget", *(["--prune"] if prune else []), *snapshot_ids], "forget")

    def forget_policy(self, policy_args: Sequence[str], tags: Sequence[str] = (), group_by: str = "host,tags",
                      dry_run: bool = False) -> list[ForgetGroup]:
        args = ["forget", "--group-by", group_by, *policy_args]
        if tags:
            args += ["--tag", ",".join(tags)]
        if dry_run:  # a judgement only: no lock, so it never collides with a running session
            args = ["--no-lock", *args, "--dry-run"]
        docs = self.run_json(args, "forget") or []
        groups = []
        for doc in docs:
            keep = doc.get("keep") or []
            # restic lists one reason per kept snapshot, in the same order (the reason's copy has no id)
            reasons = {snap["id"]: reason.get("matches", []) for snap, reason in zip(keep, doc.get("reasons") or [])}
            groups.append(ForgetGroup(
                keep=tuple(Snapshot.from_json(s) for s in keep),
                remove=tuple(Snapshot.from_json(s) for s in doc.get("remove") or []),
                reasons=reasons,
            ))
        return groups

    def prune(self, max_unused: str | None = None) -> None:
        """`max_unused="0"`: every partly used pack is repacked, so no blob that nothing
        references stays readable (restic's default tolerates 5% unused data)."""
        self.run(["prune", *(["--max-unused", max_unused] if max_unused is not None else [])], "prune")

    def check(self, read_data: bool = False, subset: str | None = None) -> CheckResult:
        self.unlock()  # check locks exclusively: clear what a killed session left
        args = ["check"]
        if read_data:
            args.append("--read-data")
        elif subset:
            args.append(f"--read-data-subset={subset}")
        proc = procs.run(["restic", *args], capture_output=True, env=self.env())
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        return CheckResult(ok=proc.returncode == 0, output=output)

    def passthrough(self, args: Sequence[str]) -> int:
        """Run restic with the operator's arguments, output straight to the terminal."""
        return subprocess.run(["restic", *args], env=self.env()).returncode


def _pump(chunks: Iterable[bytes], proc: subprocess.Popen, errors: list[BaseException]) -> None:
    """Feed restic's stdin. If the producer fails, kill restic before it sees EOF, so a
    truncated stream never becomes a snapshot."""
    pipe = proc.stdin
    try:
        for chunk in chunks:
            pipe.write(chunk)
    except BrokenPipeError as exc:
        errors.append(OperationFailed(f"restic stopped reading its input: {exc}"))
    except BaseException as exc:
        proc.kill()
        errors.append(exc)
    finally:
        try:
            pipe.close()
        except OSError:
            pass
