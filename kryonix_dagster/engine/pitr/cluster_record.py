"""What `pitr setup` saw of the cluster (data directory, port, owner, the postmaster's options),
kept where `pitr restore-cluster` can trust it after the cluster is gone.

The pgBackRest config file belongs to the cluster's owner (archive_command runs as it), so the
owner can change its pg1-path; restore-cluster, often run as root, renames and recreates that
folder. The record is written by the product's own user (0600, in KRYONIX_STATE_DIR) and read
back only when that user still owns it and nobody else can write it: a file the cluster's owner
put in its place is refused.
"""
from __future__ import annotations

import json
import os
import shlex
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import pg
from ..config import Settings
from ..errors import BadInput
from .cluster import Cluster


@dataclass(frozen=True)
class ClusterRecord:
    stanza: str
    data_dir: Path
    port: int
    owner: str
    # the postmaster's command-line options as it ran at setup (postmaster.opts), without -D and -p
    options: tuple[str, ...] = ()
    recorded_at: str = ""

    def start_options(self) -> list[str]:
        """What `pg_ctl -o` gets: the options the cluster ran with, on its own port."""
        return [*self.options, "-p", str(self.port)]

    def to_json(self) -> dict:
        return {"stanza": self.stanza, "data_dir": str(self.data_dir), "port": self.port, "owner": self.owner,
                "options": list(self.options), "recorded_at": self.recorded_at}


def record_path(settings: Settings, stanza: str) -> Path:
    return Path(settings.state_dir) / "pitr-clusters" / f"{stanza}.json"


def postmaster_options(opts_text: str) -> tuple[str, ...]:
    """The options of a postmaster.opts line (`/…/postgres "-D" "/data" "-p" "5433"`), without
    the binary, the data directory and the port (both come from the record itself)."""
    try:
        words = shlex.split(opts_text.strip())[1:]
    except ValueError:
        return ()
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in ("-D", "-p"):
            skip = True
        elif not (word.startswith("--port=") or (word.startswith("-p") and word[2:].isdigit())
                  or (word.startswith("-D") and len(word) > 2)):
            kept.append(word)
    return tuple(kept)


def _read_postmaster_opts(settings: Settings) -> str:
    """postmaster.opts of the running cluster, through the server (a superuser may read its
    data directory's files; the product's user often cannot). '' when it cannot be read."""
    try:
        with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_read_file('postmaster.opts', 0, 65536, true)")
            row = cur.fetchone()
    except Exception:  # noqa: BLE001 - no right to read it: the port alone still comes back
        return ""
    return (row[0] or "") if row else ""


def write(settings: Settings, stanza: str, cluster: Cluster) -> ClusterRecord:
    """Record the running cluster (called by `pitr setup`, atomically, 0600, our own user's)."""
    record = ClusterRecord(stanza, Path(cluster.data_dir), int(cluster.port), cluster.owner,
                           postmaster_options(_read_postmaster_opts(settings)),
                           datetime.now(timezone.utc).isoformat())
    path = record_path(settings, stanza)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record.to_json(), handle, indent=1)
    os.replace(tmp, path)
    return record


def read(settings: Settings, stanza: str) -> ClusterRecord:
    """The record `pitr setup` wrote; BadInput when it is missing or anyone else could have written it."""
    path = record_path(settings, stanza)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise BadInput(f"no record of the cluster from `pitr setup` ({path}): run `kryonix-backup pitr setup` "
                       "once on the live cluster (or set KRYONIX_STATE_DIR to where it ran)") from None
    except OSError as exc:  # a symbolic link (ELOOP) or no right to read it
        raise BadInput(f"the cluster record {path} cannot be trusted ({exc.strerror}): "
                       "run `kryonix-backup pitr setup` again on the live cluster") from None
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise BadInput(f"the cluster record {path} is not a file only this user ({os.geteuid()}) can write: "
                           "it is not trusted; run `kryonix-backup pitr setup` again on the live cluster")
        try:
            raw = json.load(handle)
            if raw["stanza"] != stanza:
                raise ValueError(raw["stanza"])
            return ClusterRecord(str(raw["stanza"]), Path(raw["data_dir"]), int(raw["port"]), str(raw["owner"]),
                                 tuple(str(o) for o in raw.get("options") or ()), str(raw.get("recorded_at", "")))
        except (ValueError, KeyError, TypeError):
            raise BadInput(f"the cluster record {path} is unreadable: run `kryonix-backup pitr setup` again "
                           "on the live cluster") from None
