"""The whole tenants' cluster back from pgBackRest after it is lost (runbook scenario 6).

Works without the cluster (and so without the main database, which may live in it): where the
cluster lives comes from our pgBackRest config file, written by `pitr setup` (data directory,
port, socket folder; its owner owns the file). The rule that keeps a live cluster safe: refuse
while a postmaster runs on the data directory (a live pid in postmaster.pid) or anything answers
on KRYONIX_PG_DSN. What is left of the data directory is moved aside, never deleted (pgBackRest
restores into an empty directory; `--delta` over it only when it cannot be moved).
"""
from __future__ import annotations

import configparser
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from pwd import getpwuid

import psycopg2

from .. import pg
from ..config import Settings
from ..errors import BadInput, OperationFailed, one_line
from ..pgbackrest import PgBackRest, as_user, owner_ids
from ..reporting import NullReporter, Reporter
from .cluster import LOCAL_HOSTS, debian_cluster_of, run_detached
from .config import PitrConfig, load_pitr_config


@dataclass(frozen=True)
class LostCluster:
    """Where the cluster lived, from the config file `pitr setup` wrote."""

    data_dir: Path
    port: int
    owner: str


@dataclass
class ClusterRestore:
    stanza: str
    data_dir: str
    target: str | None  # ISO-8601 UTC, or None: the end of the archive
    moved_aside: str | None = None
    delta: bool = False
    started_with: str = ""
    timeline: int | None = None
    archive_checked: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"success": True, "stanza": self.stanza, "data_dir": self.data_dir, "target": self.target,
                "moved_aside": self.moved_aside, "delta": self.delta, "started_with": self.started_with,
                "timeline": self.timeline, "archive_checked": self.archive_checked,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


def lost_cluster(settings: Settings, cfg: PitrConfig) -> LostCluster:
    host = pg.parse(settings.pg_dsn).get("host", "")
    if not (host in LOCAL_HOSTS or host.startswith("/")):
        raise BadInput(f"PostgreSQL {pg.server_label(settings.pg_dsn)} is not on this machine: "
                       "run `pitr restore-cluster` on the database host")
    if not cfg.config_path.is_file():
        raise BadInput(f"no pgBackRest config {cfg.config_path}: `pitr setup` never ran here "
                       f"(KRYONIX_PITR_WORK_DIR / KRYONIX_PITR_STANZA), nothing to restore from")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(cfg.config_path)
    section = parser[cfg.stanza] if parser.has_section(cfg.stanza) else None
    if section is None or "pg1-path" not in section:
        raise BadInput(f"{cfg.config_path} has no [{cfg.stanza}] pg1-path: run `pitr setup` again")
    return LostCluster(Path(section["pg1-path"]), int(section.get("pg1-port", "5432")),
                       getpwuid(cfg.config_path.stat().st_uid).pw_name)


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


def _start(cfg: PitrConfig, lost: LostCluster, timeout: float) -> str:
    debian = debian_cluster_of(str(lost.data_dir))
    if debian:
        cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", debian[0], debian[1], "start"]
        how = "pg_ctlcluster"
    else:
        major = (lost.data_dir / "PG_VERSION").read_text().strip()
        pg_ctl = Path(f"/usr/lib/postgresql/{major}/bin/pg_ctl")
        log = cfg.work_dir / "log" / f"postgresql-{cfg.stanza}.log"
        cmd = as_user(lost.owner, [str(pg_ctl) if pg_ctl.exists() else "pg_ctl", "-D", str(lost.data_dir),
                                   "-l", str(log), "-w", "-t", str(int(timeout)), "start"])
        how = "pg_ctl"
    code, output = run_detached(cmd, timeout + 30)
    if code != 0:
        raise OperationFailed(f"starting the restored cluster in {lost.data_dir} ({how}) failed: {one_line(output)}")
    return how


def _wait_promoted(settings: Settings, timeout: float) -> int:
    """Until the cluster accepts connections out of recovery; its timeline."""
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
        if time.monotonic() > deadline:
            raise OperationFailed(f"the restored cluster did not leave recovery within {timeout:.0f}s")
        time.sleep(0.3)


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
    result = ClusterRestore(cfg.stanza, str(lost.data_dir), at.astimezone(timezone.utc).isoformat() if at else None)
    pgbr = PgBackRest(cfg.config_path, cfg.stanza, lost.owner)
    clock = time.monotonic()
    _prepare_data_dir(lost, result)
    if result.moved_aside:
        report.info(f"moved what was left of the data directory to {result.moved_aside}")
    report.info(f"pgbackrest restore of stanza {cfg.stanza} into {lost.data_dir}"
                + (" (--delta)" if result.delta else "") + (f", to {result.target}" if at else ", to the archive's end"))
    pgbr.run("restore", *_restore_args(at, result.delta), timeout=timeout)
    result.seconds["restore"] = time.monotonic() - clock
    clock = time.monotonic()
    report.info("starting the restored cluster and waiting for the end of recovery")
    result.started_with = _start(cfg, lost, timeout)
    result.timeline = _wait_promoted(settings, timeout)
    result.seconds["recovery"] = time.monotonic() - clock
    clock = time.monotonic()
    report.info(f"timeline {result.timeline}: checking that WAL reaches the repository")
    pgbr.check()
    result.archive_checked = True
    result.seconds["check"] = time.monotonic() - clock
    return result
