"""The whole tenants' cluster back from pgBackRest after it is lost (runbook scenario 6).

Works without the cluster (and so without the main database, which may live in it): where the
cluster lives (data directory, port, owner, the postmaster's options) comes from the record
`pitr setup` wrote as the product's own user (cluster_record.py), never from the pgBackRest config
file, which the cluster's owner can edit. The rule that keeps a live cluster safe: refuse while a
postmaster runs on the data directory (a live pid in postmaster.pid) or anything answers on
KRYONIX_PG_DSN. What is left of the data directory is moved aside, never deleted (pgBackRest
restores into an empty directory; `--delta` over it only when it cannot be moved). A restored
server that stops during recovery fails the command at once with its log's FATAL line. Once the
restored server is up, what the main database lost by going back in time is put back from the
stashes beside the repositories, and every tenant's erasure ledger is re-applied to its live
database (cluster_merge.py); a restore that comes back writes a cluster-wide audit row
(cliente_id `*`) into the restored main database, saying what was put back.
"""
from __future__ import annotations

import configparser
import os
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg2

from .. import audit, pg, procs
from ..config import Settings
from ..errors import BadInput, OperationFailed, one_line
from ..pgbackrest import PgBackRest, as_user, owner_ids
from ..reporting import NullReporter, Reporter
from . import cluster_record
from .cluster_merge import ClusterMerge, merge_after_cluster_restore
from .cluster import LOCAL_HOSTS, debian_cluster_of, run_detached
from .config import PitrConfig, load_pitr_config

CLUSTER_AUDIT_ID = "*"  # backup_audit.cliente_id of a cluster-wide operation (never a tenant id)
OPERATION = "restore-cluster"


@dataclass(frozen=True)
class LostCluster:
    """Where the cluster lived, from what `pitr setup` recorded (cluster_record.py)."""

    data_dir: Path
    port: int
    owner: str
    options: tuple[str, ...] = ()  # the postmaster's options but -D/-p, for `pg_ctl -o`


@dataclass
class ClusterRestore:
    stanza: str
    data_dir: str
    target: str | None  # ISO-8601 UTC, or None: the end of the archive
    port: int | None = None
    log: str | None = None
    moved_aside: str | None = None
    delta: bool = False
    started_with: str = ""
    timeline: int | None = None
    archive_checked: bool = False
    audited: bool = False
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    merged: ClusterMerge | None = None  # what the stashes and ledgers put back (cluster_merge.py)

    def to_json(self) -> dict:
        return {"success": True, "stanza": self.stanza, "data_dir": self.data_dir, "port": self.port,
                "log": self.log, "target": self.target, "moved_aside": self.moved_aside, "delta": self.delta,
                "started_with": self.started_with, "timeline": self.timeline,
                "archive_checked": self.archive_checked, "audited": self.audited, "warnings": self.warnings,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "merged": self.merged.to_json() if self.merged else None}


def lost_cluster(settings: Settings, cfg: PitrConfig) -> LostCluster:
    host = pg.parse(settings.pg_dsn).get("host", "")
    if not (host in LOCAL_HOSTS or host.startswith("/")):
        raise BadInput(f"PostgreSQL {pg.server_label(settings.pg_dsn)} is not on this machine: "
                       "run `pitr restore-cluster` on the database host")
    if not cfg.config_path.is_file():
        raise BadInput(f"no pgBackRest config {cfg.config_path}: `pitr setup` never ran here "
                       f"(KRYONIX_PITR_WORK_DIR / KRYONIX_PITR_STANZA), nothing to restore from")
    record = cluster_record.read(settings, cfg.stanza)
    # The restored cluster archives through the config file (archive_command runs as its owner):
    # one whose pg1-path was changed since setup would leave it unarchived, and says someone edited it.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(cfg.config_path)
        configured = parser.get(cfg.stanza, "pg1-path", fallback=None)
    except (OSError, configparser.Error):
        configured = None
    if configured is None or Path(configured) != record.data_dir:
        raise BadInput(f"{cfg.config_path} says pg1-path={configured}, but `pitr setup` recorded {record.data_dir} "
                       f"({cluster_record.record_path(settings, cfg.stanza)}): the config file was changed since; "
                       f"put pg1-path={record.data_dir} back (nothing was touched)")
    return LostCluster(record.data_dir, record.port, record.owner, record.options)


def _live_postmaster(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def _answers(settings: Settings) -> bool:
    """Anything listening on the DSN that speaks PostgreSQL (even 'starting up' or an auth error)."""
    try:
        psycopg2.connect(settings.pg_dsn, connect_timeout=3, application_name="kryonix-backup").close()
        return True
    except psycopg2.OperationalError as exc:
        text = str(exc)
        return not ("Connection refused" in text or "No such file or directory" in text
                    or "could not connect" in text or "timeout expired" in text)


def refuse_if_live(settings: Settings, lost: LostCluster) -> None:
    pid = _live_postmaster(lost.data_dir)
    if pid is not None:
        raise BadInput(f"a postmaster (pid {pid}) is running on {lost.data_dir}: restore-cluster never replaces a "
                       "running cluster; stop it first if it is really lost")
    if _answers(settings):
        raise BadInput(f"PostgreSQL {pg.server_label(settings.pg_dsn)} answers: restore-cluster never replaces a "
                       "live cluster; stop it first if it is really lost")


def _prepare_data_dir(lost: LostCluster, result: ClusterRestore) -> None:
    """An empty data directory owned by the cluster's owner; what was there is moved aside."""
    data = lost.data_dir
    if data.is_dir() and any(data.iterdir()):
        aside = data.with_name(f"{data.name}.lost-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
        try:
            data.rename(aside)
            result.moved_aside = str(aside)
        except OSError:  # a mount point, or no right on the parent: restore over it
            result.delta = True
            return
    if not data.parent.is_dir():
        raise BadInput(f"{data.parent} does not exist: recreate the cluster's volume first")
    data.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(data, *owner_ids(lost.owner))
    data.chmod(0o700)


def _restore_args(target: datetime | None, delta: bool) -> list[str]:
    args = ["--delta"] if delta else []
    if target is None:
        return args + ["--type=default"]
    stamp = target.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return args + ["--type=time", f"--target={stamp}+00", "--target-action=promote"]


@dataclass(frozen=True)
class ServerLog:
    """The restored server's log file, and where this start's lines begin in it."""

    path: Path
    offset: int

    @classmethod
    def before_start(cls, path: Path) -> "ServerLog":
        try:
            return cls(path, path.stat().st_size)
        except OSError:
            return cls(path, 0)

    def fatal_line(self) -> str | None:
        """The first FATAL or PANIC line this start wrote (the log belongs to the cluster's owner:
        never followed through a symbolic link, read in a bounded amount)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(self.offset if size >= self.offset else 0)  # a shorter log was started anew
            text = handle.read(4 << 20).decode(errors="replace")
        found = [line for line in text.splitlines() if "FATAL:" in line or "PANIC:" in line]
        return one_line(found[0], 300) if found else None

    def explain(self) -> str:
        line = self.fatal_line()
        return (f"{line!r} (log {self.path})" if line
                else f"no FATAL line in its log {self.path} (read it for the cause)")


def _debian_log(version: str, name: str) -> Path:
    out = procs.run(["pg_lsclusters", "--no-header", version, name], capture_output=True, text=True)
    fields = out.stdout.split()
    if len(fields) >= 7 and fields[6].startswith("/"):
        return Path(fields[6])
    return Path(f"/var/log/postgresql/postgresql-{version}-{name}.log")


def _start(cfg: PitrConfig, lost: LostCluster, result: ClusterRestore, timeout: float) -> ServerLog:
    """Start the restored cluster as it ran before: pg_ctlcluster for a Debian cluster (its port and
    options live in /etc/postgresql), else pg_ctl with the recorded options and port."""
    debian = debian_cluster_of(str(lost.data_dir))
    if debian:
        log = ServerLog.before_start(_debian_log(*debian))
        cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", debian[0], debian[1], "start"]
        result.started_with = "pg_ctlcluster"
    else:
        major = (lost.data_dir / "PG_VERSION").read_text().strip()
        pg_ctl = Path(f"/usr/lib/postgresql/{major}/bin/pg_ctl")
        log = ServerLog.before_start(cfg.work_dir / "log" / f"postgresql-{cfg.stanza}.log")
        options = shlex.join([*lost.options, "-p", str(lost.port)])
        cmd = as_user(lost.owner, [str(pg_ctl) if pg_ctl.exists() else "pg_ctl", "-D", str(lost.data_dir),
                                   "-l", str(log.path), "-o", options, "-w", "-t", str(int(timeout)), "start"])
        result.started_with = f"pg_ctl -o {options}"
    result.log = str(log.path)
    code, output = run_detached(cmd, timeout + 30)
    if code != 0:
        raise OperationFailed(f"starting the restored cluster in {lost.data_dir} ({result.started_with}) failed: "
                              f"{log.explain()}; pg_ctl said: {one_line(output, 200)}")
    return log


def _postmaster_gone(data_dir: Path) -> bool:
    """True once the postmaster has stopped (no postmaster.pid, or its pid is dead); False while it
    runs or when we may not look inside the data directory (then the connection polling decides)."""
    return os.access(data_dir, os.R_OK | os.X_OK) and _live_postmaster(data_dir) is None


def _wait_promoted(settings: Settings, data_dir: Path, log: ServerLog, timeout: float) -> int:
    """Until the cluster accepts connections out of recovery; its timeline. Fails at once when
    the postmaster stops on the way (recovery ended before its target, a bad setting …)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_control_checkpoint())")
                in_recovery, timeline = cur.fetchone()
            if not in_recovery:
                return int(timeline)
        except OperationFailed:
            pass
        if _postmaster_gone(data_dir):
            raise OperationFailed(f"the restored cluster in {data_dir} stopped during recovery: {log.explain()}; "
                                  "its data directory is left as it is (the next restore-cluster moves it aside)")
        if time.monotonic() > deadline:
            raise OperationFailed(f"the restored cluster did not leave recovery within {timeout:.0f}s "
                                  f"(log {log.path})")
        time.sleep(0.3)


def _audit(settings: Settings, result: ClusterRestore, started: datetime, error: str | None,
           report: Reporter) -> None:
    """The cluster-wide audit row, in the restored main database (the restore's own outcome
    stands when it cannot be written: a warning says so)."""
    details = {k: v for k, v in result.to_json().items() if k not in ("success", "audited")}
    rec = audit.AuditRecord(CLUSTER_AUDIT_ID, OPERATION, started, error is None,
                            finished_at=datetime.now(timezone.utc), error=error,
                            duration_seconds=round(sum(result.seconds.values()), 2), details=details)
    try:
        audit.record(settings, rec)
        result.audited = True
    except Exception as exc:  # noqa: BLE001 - see the docstring
        result.warnings.append(f"audit row not written: {type(exc).__name__}: {one_line(str(exc), 200)}")
        report.warn(result.warnings[-1])


def restore_cluster(settings: Settings, at: datetime | None = None, confirm=lambda _q: None,
                    report: Reporter | None = None, timeout: float = 900) -> ClusterRestore:
    """Refuse (BadInput) unless the cluster is local and nothing runs on it, ask `confirm`, then
    restore it from pgBackRest, start it, wait for it and check that archiving works again."""
    report = report or NullReporter()
    cfg = load_pitr_config(settings)
    lost = lost_cluster(settings, cfg)
    refuse_if_live(settings, lost)
    confirm(f"Replace the PostgreSQL cluster in {lost.data_dir} with the pgBackRest restore "
            f"({'as of ' + at.isoformat() if at else 'end of the archive'})?")
    started = datetime.now(timezone.utc)
    result = ClusterRestore(cfg.stanza, str(lost.data_dir), at.astimezone(timezone.utc).isoformat() if at else None,
                            port=lost.port)
    pgbr = PgBackRest(cfg.config_path, cfg.stanza, lost.owner)
    pg1_path = f"--pg1-path={lost.data_dir}"  # the record's, even should the config file change meanwhile
    clock = time.monotonic()
    _prepare_data_dir(lost, result)
    if result.moved_aside:
        report.info(f"moved what was left of the data directory to {result.moved_aside}")
    report.info(f"pgbackrest restore of stanza {cfg.stanza} into {lost.data_dir}"
                + (" (--delta)" if result.delta else "") + (f", to {result.target}" if at else ", to the archive's end"))
    pgbr.run("restore", pg1_path, *_restore_args(at, result.delta), timeout=timeout)
    result.seconds["restore"] = time.monotonic() - clock
    clock = time.monotonic()
    report.info("starting the restored cluster and waiting for the end of recovery")
    log = _start(cfg, lost, result, timeout)
    result.timeline = _wait_promoted(settings, lost.data_dir, log, timeout)
    result.seconds["recovery"] = time.monotonic() - clock
    clock = time.monotonic()
    report.info("merging the newest stashes (keys, erasure ledgers) and re-applying every tenant's erasure ledger")
    result.merged = merge_after_cluster_restore(settings, report)
    result.seconds["merge"] = time.monotonic() - clock
    if result.merged.changed:
        report.warn(f"the restore had rolled back keys or erasures: {result.merged.describe()}")
    clock = time.monotonic()
    report.info(f"timeline {result.timeline}: checking that WAL reaches the repository")
    try:
        pgbr.run("check", pg1_path, f"--pg1-port={lost.port}", timeout=120)
    except OperationFailed as exc:
        _audit(settings, result, started, str(exc), report)
        raise
    result.archive_checked = True
    result.seconds["check"] = time.monotonic() - clock
    if result.merged.problems:  # the cluster is up, but what it rolled back is not all put back
        error = (f"cluster {lost.data_dir} restored and archiving, but not everything the restore rolled back was "
                 f"put back: {'; '.join(result.merged.problems)}")
        _audit(settings, result, started, error, report)
        raise OperationFailed(one_line(error, 1000))
    _audit(settings, result, started, None, report)
    return result
