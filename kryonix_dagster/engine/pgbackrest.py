"""The pgBackRest wrapper: our own config file, commands as the cluster's owner, `--output=json`
parsed into dataclasses here and nowhere else.

The config file (written by `write_config`, mode 0600, owned by the cluster's owner) holds the
repository's cipher passphrase: `archive_command` runs inside the postmaster, as its owner,
and can only read a secret from a file. The work folder (`PitrConfig.work_dir`) holds
pgBackRest's lock and log folders and the scratch clusters of point-in-time restores.
"""
from __future__ import annotations

import json
import os
import pwd
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence
from urllib.parse import parse_qs, urlparse

from . import procs
from .errors import OperationFailed, one_line

PGBACKREST = "pgbackrest"
DB_MISSING = 80  # pgBackRest's DbMissingError: `--db-include` names a database the backup does not hold


class PgBackRestFailed(OperationFailed):
    """A pgBackRest command that exited non-zero; `code` is pgBackRest's own error code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class RepoLocation:
    """Where the repository is: a local folder, or an S3 bucket and prefix.

    S3 is `s3:https://host[:port]/bucket[/prefix][?ca-file=PATH]`: pgBackRest speaks S3 over TLS
    only, and verifies the endpoint's certificate; `ca-file` names the CA bundle that signs it
    when that is a private CA (a MinIO of one's own), readable by the cluster's owner."""

    kind: str  # posix | s3
    path: str
    bucket: str | None = None
    endpoint: str | None = None  # the host, without the port
    port: int | None = None
    ca_file: str | None = None

    @property
    def endpoint_url(self) -> str | None:
        """The S3 endpoint as a URL, for an S3 client of our own (boto3: verify with `ca_file`)."""
        if self.kind != "s3":
            return None
        host = f"[{self.endpoint}]" if self.endpoint and ":" in self.endpoint else self.endpoint
        return f"https://{host}" + (f":{self.port}" if self.port else "")

    @classmethod
    def parse(cls, raw: str) -> "RepoLocation":
        if raw.startswith("s3:"):
            expected = f"KRYONIX_PITR_REPO {raw!r}: expected s3:https://host[:port]/bucket[/prefix][?ca-file=PATH]"
            url = urlparse(raw[3:])
            parts = url.path.strip("/").split("/", 1)
            if not url.hostname or not parts[0]:
                raise ValueError(expected)
            if url.scheme != "https":
                raise ValueError(f"{expected}: pgBackRest reaches S3 over TLS only, not {url.scheme or 'no'} scheme")
            try:
                port = url.port
            except ValueError:
                raise ValueError(f"{expected}: bad port") from None
            options = parse_qs(url.query, keep_blank_values=True)
            if set(options) - {"ca-file"}:
                raise ValueError(f"{expected}: unknown option(s) {', '.join(sorted(set(options) - {'ca-file'}))}")
            ca_file = options.get("ca-file", [None])[-1]
            if ca_file is not None and not Path(ca_file).is_absolute():
                raise ValueError(f"{expected}: ca-file must be an absolute path")
            return cls("s3", "/" + (parts[1] if len(parts) > 1 else ""), parts[0], url.hostname, port, ca_file)
        return cls("posix", str(Path(raw.removeprefix("file://")).expanduser()))


@dataclass(frozen=True)
class ConfigFile:
    """What goes into the config file; `cipher_pass` never leaves it."""

    path: Path
    stanza: str
    pg_path: str
    pg_port: int
    pg_socket_dir: str | None
    pg_user: str
    repo: RepoLocation
    cipher_pass: str = field(repr=False)
    retention_full_days: int
    work_dir: Path
    s3_key: str | None = field(default=None, repr=False)
    s3_key_secret: str | None = field(default=None, repr=False)

    def text(self) -> str:
        lines = ["[global]",
                 f"repo1-path={self.repo.path}",
                 "repo1-cipher-type=aes-256-cbc",
                 f"repo1-cipher-pass={self.cipher_pass}",
                 "repo1-retention-full-type=time",
                 f"repo1-retention-full={max(1, self.retention_full_days)}",
                 "start-fast=y", "archive-async=n", "compress-type=zst", "process-max=1",
                 f"lock-path={self.work_dir / 'lock'}", f"log-path={self.work_dir / 'log'}",
                 "log-level-file=off", "log-level-console=warn", "log-level-stderr=off"]
        if self.repo.kind == "s3":
            # bundle=y: small files share one object, so a base backup is a few requests, not
            # one per file (a cluster is thousands of files of a few kB)
            lines += ["repo1-type=s3", "repo1-bundle=y", f"repo1-s3-bucket={self.repo.bucket}",
                      f"repo1-s3-endpoint={self.repo.endpoint}", "repo1-s3-region=us-east-1",
                      "repo1-s3-uri-style=path", f"repo1-s3-key={self.s3_key or ''}",
                      f"repo1-s3-key-secret={self.s3_key_secret or ''}"]
            if self.repo.port:
                lines.append(f"repo1-storage-port={self.repo.port}")
            if self.repo.ca_file:
                lines.append(f"repo1-storage-ca-file={self.repo.ca_file}")
        lines += ["", f"[{self.stanza}]", f"pg1-path={self.pg_path}", f"pg1-port={self.pg_port}",
                  f"pg1-user={self.pg_user}"]
        if self.pg_socket_dir:
            lines.append(f"pg1-socket-path={self.pg_socket_dir}")
        return "\n".join(lines) + "\n"


def owner_ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def as_user(user: str, cmd: Sequence[str]) -> list[str]:
    """`cmd` run as `user` (runuser when we are root and `user` is someone else)."""
    if os.geteuid() == 0 and user != "root":
        return ["runuser", "-u", user, "--", *cmd]
    return list(cmd)


def write_config(config: ConfigFile, owner: str) -> None:
    """Write the config file atomically, 0600, owned by the cluster's owner (who runs archive_command)."""
    uid, gid = owner_ids(owner) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    owned = [config.work_dir, config.work_dir / "lock", config.work_dir / "log"]
    if config.repo.kind == "posix":
        owned.append(Path(config.repo.path))
    for folder in owned:
        folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        os.chown(folder, uid, gid)
    # A config folder apart from the work folder (/etc/pgbackrest/conf.d) stays its creator's:
    # the owner only needs to read the file, never to add one beside it.
    config.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = config.path.with_name(f".{config.path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(config.text())
    os.chown(tmp, uid, gid)
    os.replace(tmp, config.path)


# --- output of `pgbackrest info --output=json` -----------------------------------------------

def _utc(epoch: int | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(int(epoch), timezone.utc)


@dataclass(frozen=True)
class BaseBackup:
    label: str
    type: str  # full | diff | incr
    started: datetime
    stopped: datetime
    wal_start: str | None
    wal_stop: str | None
    size_bytes: int | None
    repo_bytes: int | None

    @classmethod
    def from_json(cls, raw: dict) -> "BaseBackup":
        info = raw.get("info", {})
        return cls(raw["label"], raw["type"], _utc(raw["timestamp"]["start"]), _utc(raw["timestamp"]["stop"]),
                   (raw.get("archive") or {}).get("start"), (raw.get("archive") or {}).get("stop"),
                   info.get("size"), (info.get("repository") or {}).get("delta"))

    def to_json(self) -> dict:
        return {"label": self.label, "type": self.type, "started": self.started.isoformat(),
                "stopped": self.stopped.isoformat(), "wal_start": self.wal_start, "wal_stop": self.wal_stop,
                "size_bytes": self.size_bytes, "repo_bytes": self.repo_bytes}


def backup_before(backups, target: datetime) -> BaseBackup | None:
    """The base backup a recovery to `target` starts from: the newest one that stopped before
    `target`'s whole second (pgBackRest's rule, archive.earliest_target)."""
    whole = target.replace(microsecond=0)
    return max((b for b in backups if b.stopped.replace(microsecond=0) < whole),
               key=lambda b: b.stopped, default=None)


@dataclass(frozen=True)
class StanzaInfo:
    name: str
    status_code: int
    status_message: str
    backups: tuple[BaseBackup, ...]
    wal_min: str | None
    wal_max: str | None

    @classmethod
    def from_json(cls, raw: dict) -> "StanzaInfo":
        archives = raw.get("archive") or []
        return cls(raw["name"], int(raw.get("status", {}).get("code", 99)), raw.get("status", {}).get("message", ""),
                   tuple(BaseBackup.from_json(b) for b in raw.get("backup") or []),
                   min((a.get("min") for a in archives if a.get("min")), default=None),
                   max((a.get("max") for a in archives if a.get("max")), default=None))


@dataclass
class PgBackRest:
    """pgBackRest on one stanza, through our config file, as the cluster's owner."""

    config_path: Path
    stanza: str
    owner: str

    def command(self, verb: str, *args: str, stanza: bool = True) -> list[str]:
        cmd = [PGBACKREST, f"--config={self.config_path}"]
        if stanza:
            cmd.append(f"--stanza={self.stanza}")
        return as_user(self.owner, [*cmd, *args, verb])

    def run(self, verb: str, *args: str, timeout: float | None = None) -> str:
        proc = procs.run(self.command(verb, *args), capture_output=True, timeout=timeout,
                         env={k: v for k, v in os.environ.items() if not k.startswith("PGBACKREST_")})
        if proc.returncode != 0:
            raise PgBackRestFailed(f"pgBackRest {verb} (stanza {self.stanza}) failed with exit code "
                                   f"{proc.returncode}: {self._error(proc)}", proc.returncode)
        return proc.stdout.decode(errors="replace")

    @staticmethod
    def _error(proc: subprocess.CompletedProcess) -> str:
        text = (proc.stderr or b"").decode(errors="replace") + (proc.stdout or b"").decode(errors="replace")
        lines = [line for line in text.splitlines() if "ERROR" in line or "WARN" in line] or text.splitlines()[-3:]
        return one_line(" ".join(lines), 400)

    def info(self) -> StanzaInfo | None:
        out = self.run("info", "--output=json")
        try:
            stanzas = json.loads(out)
        except ValueError:
            raise OperationFailed(f"pgBackRest info (stanza {self.stanza}): output is not JSON") from None
        found = [StanzaInfo.from_json(s) for s in stanzas if s.get("name") == self.stanza]
        return found[0] if found else None

    def stanza_create(self) -> None:
        self.run("stanza-create", timeout=300)

    def check(self) -> None:
        self.run("check", timeout=120)

    def backup(self, backup_type: str) -> None:
        self.run("backup", f"--type={backup_type}")

    def expire(self) -> None:
        self.run("expire", timeout=600)

    def backup_databases(self, label: str) -> frozenset[str] | None:
        """The databases base backup `label` holds (`info --set`'s `database-ref`); None when
        pgBackRest does not say."""
        out = self.run("info", f"--set={label}", "--output=json")
        try:
            stanzas = json.loads(out)
        except ValueError:
            raise OperationFailed(f"pgBackRest info --set={label} (stanza {self.stanza}): output is not JSON") from None
        for stanza in stanzas:
            for backup in stanza.get("backup") or []:
                refs = backup.get("database-ref")
                if backup.get("label") == label and isinstance(refs, list):
                    return frozenset(ref["name"] for ref in refs if isinstance(ref, dict) and "name" in ref)
        return None

    def restore_database(self, data_dir: Path, database: str | None, target: datetime,
                         backup_set: str | None = None) -> None:
        """Restore `database` only (the others come back zeroed), or the whole cluster when
        `database` is None, into `data_dir`, from `backup_set` (pgBackRest's choice when None),
        recovering to `target` and promoting; archiving stays off in the copy."""
        self.run("restore", f"--pg1-path={data_dir}", *([f"--db-include={database}"] if database else []),
                 *([f"--set={backup_set}"] if backup_set else []), "--type=time",
                 f"--target={target.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f')}+00",
                 "--target-action=promote", "--archive-mode=off")

    def archive_command(self) -> str:
        return f"{PGBACKREST} --config={self.config_path} --stanza={self.stanza} archive-push %p"
