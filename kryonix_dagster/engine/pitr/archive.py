"""Set up WAL archiving, take base backups, and say how healthy archiving is and which window
of time can be recovered."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import psycopg2
from psycopg2 import sql

from .. import pg, procs
from ..config import Settings
from ..errors import BadInput, OperationFailed, one_line
from ..pgbackrest import BaseBackup, ConfigFile, PgBackRest, as_user, write_config
from ..plans import PLANS
from ..reporting import NullReporter, Reporter
from . import cluster as clusters
from . import cluster_record, passphrase_stash
from .config import PitrConfig, load_pitr_config, repository_passphrase

MAX_LAG_SECONDS = 300  # the archiving check's promise: WAL lag under 5 minutes
BACKUP_TYPES = ("full", "diff", "incr")


def longest_promise_days() -> int:
    """pgBackRest's retention follows the longest PITR promise of the plan table."""
    return max((plan.pitr_days for plan in PLANS.values()), default=0)


def engine_for(settings: Settings, cfg: PitrConfig | None = None,
               cluster: clusters.Cluster | None = None) -> tuple[PgBackRest, clusters.Cluster, PitrConfig]:
    cfg = cfg or load_pitr_config(settings)
    cluster = cluster or clusters.discover(settings)
    return PgBackRest(cfg.config_path, cfg.stanza, cluster.owner), cluster, cfg


def _require_setup(cfg: PitrConfig) -> None:
    if not cfg.config_path.exists():
        raise OperationFailed(f"point-in-time recovery is not configured (stanza {cfg.stanza}: no {cfg.config_path}): "
                              "run `kryonix-backup pitr setup` first, or restore a restore point with --snapshot")


# --- setup ---------------------------------------------------------------------------------

@dataclass
class SetupResult:
    stanza: str
    archive_command_set: bool
    restarted: bool
    needs_restart: list[str] = field(default_factory=list)
    checked: bool = False

    def to_json(self) -> dict:
        return {"stanza": self.stanza, "archive_command_set": self.archive_command_set, "restarted": self.restarted,
                "needs_restart": self.needs_restart, "checked": self.checked}


def _alter_system(settings: Settings, name: str, value: str) -> bool:
    """ALTER SYSTEM SET name = value unless it already is; True when it changed."""
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,))
        if cur.fetchone()[0] == value:
            return False
        cur.execute(sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)), (value,))
        cur.execute("SELECT pg_reload_conf()")
    return True


def _owner_can_read(owner: str, path) -> bool:
    return procs.run(as_user(owner, ["test", "-r", str(path)])).returncode == 0


def setup(settings: Settings, restart: bool = False, report: Reporter | None = None) -> SetupResult:
    """Configure archiving through pgBackRest and create the stanza; idempotent. Exits 1 (via
    OperationFailed) when archive_mode/wal_level need a restart that was not allowed."""
    report = report or NullReporter()
    pgbr, cluster, cfg = engine_for(settings)
    if not cluster.local:
        raise OperationFailed(f"PostgreSQL {pg.server_label(settings.pg_dsn)} is not on this machine (data directory "
                              f"{cluster.data_dir} not found here): run `pitr setup` on the database host")
    passphrase = repository_passphrase(settings, cfg.stanza)
    if passphrase is None:  # a new one only for a repository without this stanza: never orphan an archive
        if passphrase_stash.stanza_in_repository(settings, cfg):
            raise OperationFailed(f"the pgBackRest repository {cfg.repo.path} already holds stanza {cfg.stanza}, but the "
                                  f"main database has no passphrase for it: run `kryonix-backup keys recover` (it "
                                  f"brings the stashed passphrase back); a new passphrase would lose that archive")
        passphrase = repository_passphrase(settings, cfg.stanza, create=True)
    passphrase_stash.stash_all(settings, cfg.stanza)  # beside the repositories: survives the main database
    write_config(ConfigFile(cfg.config_path, cfg.stanza, cluster.data_dir, cluster.port, cluster.socket_dir,
                            cluster.superuser, cfg.repo, passphrase, longest_promise_days(), cfg.work_dir,
                            cfg.access_key, cfg.secret_key), cluster.owner)
    if not _owner_can_read(cluster.owner, cfg.config_path):
        raise OperationFailed(f"the cluster's owner {cluster.owner} cannot read {cfg.config_path}: set "
                              "KRYONIX_PITR_WORK_DIR to a folder it can reach")
    if cfg.repo.ca_file and not _owner_can_read(cluster.owner, cfg.repo.ca_file):
        raise OperationFailed(f"the cluster's owner {cluster.owner} cannot read the CA file {cfg.repo.ca_file} of "
                              "KRYONIX_PITR_REPO (archive_command verifies the S3 endpoint with it)")
    cluster_record.write(settings, cfg.stanza, cluster)  # what restore-cluster trusts, not the config file
    result = SetupResult(cfg.stanza, False, False)
    result.archive_command_set = _alter_system(settings, "archive_command", pgbr.archive_command())
    if cluster.wal_level == "minimal":
        _alter_system(settings, "wal_level", "replica")
    if cluster.archive_mode not in ("on", "always"):
        _alter_system(settings, "archive_mode", "on")
    report.info(f"creating stanza {cfg.stanza}")
    pgbr.stanza_create()
    result.needs_restart = clusters.pending_restart(settings, "archive_mode", "wal_level")
    if result.needs_restart:
        if not restart:
            raise OperationFailed(f"archiving is configured but {', '.join(result.needs_restart)} needs a restart of "
                                  f"PostgreSQL {pg.server_label(settings.pg_dsn)}: restart it, or run "
                                  "`kryonix-backup pitr setup --restart`")
        report.info(f"restarting PostgreSQL {pg.server_label(settings.pg_dsn)} for {', '.join(result.needs_restart)}")
        clusters.restart(settings, cluster)
        result.restarted = True
        result.needs_restart = clusters.pending_restart(settings, "archive_mode", "wal_level")
    report.info("checking that WAL reaches the repository")
    pgbr.check()
    result.checked = True
    return result


# --- base backups --------------------------------------------------------------------------

def base_backup(settings: Settings, backup_type: str = "full", report: Reporter | None = None) -> BaseBackup:
    if backup_type not in BACKUP_TYPES:
        raise BadInput(f"invalid --type {backup_type!r}: expected one of {', '.join(BACKUP_TYPES)}")
    report = report or NullReporter()
    pgbr, _, cfg = engine_for(settings)
    _require_setup(cfg)
    report.info(f"pgBackRest {backup_type} backup of stanza {cfg.stanza}")
    pgbr.backup(backup_type)
    info = pgbr.info()
    if info is None or not info.backups:
        raise OperationFailed(f"pgBackRest backup of stanza {cfg.stanza} finished but `info` lists no backup")
    return info.backups[-1]


# --- status --------------------------------------------------------------------------------

@dataclass
class Archiving:
    archive_mode: str
    configured: bool  # archive_command is ours
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    pending_segments: int
    lag_seconds: float
    problem: str | None = None

    @property
    def healthy(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict:
        return {"healthy": self.healthy, "problem": self.problem, "archive_mode": self.archive_mode,
                "configured": self.configured, "archived_count": self.archived_count,
                "last_archived_wal": self.last_archived_wal, "last_archived_time": _iso(self.last_archived_time),
                "failed_count": self.failed_count, "last_failed_wal": self.last_failed_wal,
                "last_failed_time": _iso(self.last_failed_time), "pending_segments": self.pending_segments,
                "lag_seconds": round(self.lag_seconds, 1)}


@dataclass
class Window:
    earliest: datetime | None
    latest: datetime | None

    def covers(self, moment: datetime) -> bool:
        return self.earliest is not None and self.earliest <= moment

    def days(self, now: datetime | None = None) -> float:
        if self.earliest is None:
            return 0.0
        return ((now or datetime.now(timezone.utc)) - self.earliest).total_seconds() / 86400

    def describe(self) -> str:
        if self.earliest is None:
            return "no recoverable window yet (no base backup: run `kryonix-backup pitr backup`)"
        return f"recoverable window {_iso(self.earliest)} .. {_iso(self.latest) or 'now'}"

    def to_json(self) -> dict:
        return {"earliest": _iso(self.earliest), "latest": _iso(self.latest)}


@dataclass(frozen=True)
class TenantWindow:
    """One tenant's own window: it starts at the later of the cluster's window start and the
    moment its database exists (`database_created`)."""

    tenant_id: str
    database: str
    earliest: datetime | None
    database_created: datetime | None  # None: the database does not exist, or the cluster cannot say
    starts_with: str  # "window" | "database" | "no database"

    def to_json(self) -> dict:
        return {"tenant": self.tenant_id, "database": self.database, "earliest": _iso(self.earliest),
                "database_created": _iso(self.database_created), "starts_with": self.starts_with}


@dataclass
class PitrStatus:
    stanza: str
    repository: str
    archiving: Archiving
    backups: list[BaseBackup]
    window: Window
    tenants: list[TenantWindow] = field(default_factory=list)
    tenants_problem: str | None = None  # why the tenants' windows are missing, when they are

    def to_json(self) -> dict:
        return {"stanza": self.stanza, "repository": self.repository, "archiving": self.archiving.to_json(),
                "backups": [b.to_json() for b in self.backups], "window": self.window.to_json(),
                "tenants": [t.to_json() for t in self.tenants], "tenants_problem": self.tenants_problem}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def archiving(settings: Settings, expected_command: str | None) -> Archiving:
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('archive_mode'), current_setting('archive_command'), archived_count, "
                    "last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time, now() "
                    "FROM pg_stat_archiver")
        mode, command, archived, last_wal, last_time, failed, failed_wal, failed_time, now = cur.fetchone()
        cur.execute("SELECT count(*), min(modification) FROM pg_ls_archive_statusdir() WHERE name LIKE '%%.ready'")
        pending, oldest_pending = cur.fetchone()
    lag = (now - oldest_pending).total_seconds() if oldest_pending else 0.0
    state = Archiving(mode, expected_command is not None and command == expected_command, archived, last_wal,
                      last_time, failed, failed_wal, failed_time, int(pending), max(0.0, lag))
    if mode not in ("on", "always"):
        state.problem = f"archive_mode is {mode}"
    elif not state.configured:
        state.problem = "archive_command is not pgBackRest's for this stanza (run `kryonix-backup pitr setup`)"
    elif failed_time is not None and (last_time is None or failed_time > last_time):
        state.problem = f"archiving is failing: {failed_wal} failed at {_iso(failed_time)}, {failed} failure(s)"
    elif lag > MAX_LAG_SECONDS:
        state.problem = f"WAL archive lag {lag:.0f}s is over {MAX_LAG_SECONDS}s ({pending} segment(s) waiting)"
    return state


def earliest_target(backups) -> datetime | None:
    """The first moment pgBackRest can recover to: it picks a backup whose stop time (whole
    seconds) is strictly before the target's whole second, so one second after the first stop."""
    first = min((b.stopped for b in backups), default=None)
    return None if first is None else first + timedelta(seconds=1)


def databases_created(settings: Settings, databases: list[str]) -> dict[str, datetime]:
    """When each existing database of `databases` was created, as the cluster can tell: CREATE
    DATABASE writes the database folder's PG_VERSION file once, just before it commits, and
    nothing rewrites it; its modification time, rounded up to the next whole second plus one
    (the commit comes after the write; pgBackRest targets whole seconds), is the first moment
    a recovery can find the database. Conservative: a restore's swap (a new database renamed
    into place) and WAL replay (restore-cluster) write the file anew, so the start shown is then
    later than the first recoverable moment, never earlier. Needs pg_stat_file (superuser or
    pg_read_server_files)."""
    if not databases:
        return {}
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname, (pg_stat_file('base/' || oid || '/PG_VERSION', true)).modification "
                    "FROM pg_database WHERE datname = ANY(%s)", (databases,))
        rows = cur.fetchall()
    return {name: modified.replace(microsecond=0) + timedelta(seconds=2 if modified.microsecond else 1)
            for name, modified in rows if modified is not None}


def tenant_windows(settings: Settings, window: Window) -> list[TenantWindow]:
    """Every registered (not off-boarded) tenant's own window start (one query for the fleet)."""
    from .. import registry
    from ..naming import names_for

    databases = {tid: names_for(settings, tid).database for tid in registry.list_tenant_ids(settings)}
    created = databases_created(settings, sorted(databases.values()))
    found = []
    for tid, database in databases.items():
        moment = created.get(database)
        if moment is None:
            found.append(TenantWindow(tid, database, None, None, "no database"))
        elif window.earliest is not None and moment <= window.earliest:
            found.append(TenantWindow(tid, database, window.earliest, moment, "window"))
        else:
            found.append(TenantWindow(tid, database, moment if window.earliest else None, moment, "database"))
    return found


def status(settings: Settings) -> PitrStatus:
    pgbr, _, cfg = engine_for(settings)
    configured = cfg.config_path.exists()
    state = archiving(settings, pgbr.archive_command() if configured else None)
    backups: list[BaseBackup] = []
    if configured:
        info = pgbr.info()
        backups = list(info.backups) if info else []
    earliest = earliest_target(backups)
    latest = state.last_archived_time if earliest and state.last_archived_time else earliest
    repository = cfg.repo.path if cfg.repo.kind == "posix" else f"s3 bucket {cfg.repo.bucket}{cfg.repo.path}"
    result = PitrStatus(cfg.stanza, repository, state, backups, Window(earliest, latest))
    try:
        result.tenants = tenant_windows(settings, result.window)
    except (OperationFailed, psycopg2.Error) as exc:  # no registry yet, or pg_stat_file not allowed
        result.tenants_problem = f"the tenants' own windows are unknown: {one_line(str(exc), 200)}"
    return result


def switch_and_wait(settings: Settings, timeout: float = 120) -> str:
    """Write a commit, close the current WAL segment, and wait until the archiver has it: every
    moment until now is then recoverable. Returns the segment's name."""
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT txid_current()")  # a commit record after any target up to now
        cur.execute("SELECT pg_walfile_name(pg_switch_wal())")
        segment = cur.fetchone()[0]
        deadline = time.monotonic() + timeout
        while True:
            cur.execute("SELECT last_archived_wal, last_failed_wal, last_failed_time > "
                        "coalesce(last_archived_time, '-infinity') FROM pg_stat_archiver")
            last, failed_wal, failing = cur.fetchone()
            if last is not None and last >= segment:
                return segment
            if time.monotonic() > deadline:
                why = f" (archiving {failed_wal} is failing)" if failing else ""
                raise OperationFailed(f"WAL segment {segment} was not archived within {timeout:.0f}s{why}; "
                                      "nothing was touched")
            time.sleep(0.2)


def window_fields(settings: Settings) -> dict:
    """The recoverable window for a restore point's metadata ({} when PITR is not set up or
    pgBackRest cannot say): a bonus on top of the session, never a reason to fail it."""
    try:
        cfg = load_pitr_config(settings)
        if not cfg.config_path.exists():
            return {}
        pgbr = PgBackRest(cfg.config_path, cfg.stanza, clusters.discover(settings).owner)
        info = pgbr.info()
        earliest = earliest_target(info.backups) if info else None
        if earliest is None:
            return {}
        with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT last_archived_time FROM pg_stat_archiver")
            latest = cur.fetchone()[0]
        return {"pitr_earliest": _iso(earliest), "pitr_latest": _iso(latest or earliest)}
    except Exception:  # noqa: BLE001 - see the docstring
        return {}


# --- how long the repository still holds a database that is gone ---------------------------

def _retention_setting(cfg: PitrConfig) -> tuple[str, int, str]:
    """(retention type, value, cipher type) as the stanza's config file says; where the file
    cannot be read, what `setup` writes (time-based, the longest plan promise, aes-256-cbc).
    Only these three keys are read: the file also holds the cipher passphrase."""
    found = {"repo1-retention-full-type": "count", "repo1-retention-full": "",
             "repo1-cipher-type": "none"}
    try:
        lines = cfg.config_path.read_text().splitlines()
    except OSError:
        return "time", max(1, longest_promise_days()), "aes-256-cbc"
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() in found:
            found[name.strip()] = value.strip()
    value = found["repo1-retention-full"]
    return found["repo1-retention-full-type"], int(value) if value.isdigit() else 0, found["repo1-cipher-type"]


def database_hold(settings: Settings, gone_at: datetime) -> dict:
    """Until when pgBackRest's repository still holds a database dropped at `gone_at` (an
    off-boarded tenant's): in every base backup taken before then and the WAL after them, until
    retention expires them. With time-based retention of D days, pgBackRest keeps one full backup
    older than D days, so the last backup holding the database goes once a full backup taken
    after `gone_at` is D days old: not before `gone_at` + D days, and only while full backups
    keep being taken (each one runs `expire`)."""
    cfg = load_pitr_config(settings)
    if not cfg.config_path.exists():
        return {"configured": False, "statement": "no PITR configured: no pgBackRest repository holds the database"}
    kind, value, cipher = _retention_setting(cfg)
    doc: dict = {"configured": True, "stanza": cfg.stanza, "encryption": cipher, "retention_full_type": kind,
                 "retention_full": value, "base_backups_before": None, "held_until_at_least": None}
    try:
        info = engine_for(settings, cfg)[0].info()
        doc["base_backups_before"] = sum(1 for b in (info.backups if info else ()) if b.started <= gone_at)
    except (OperationFailed, OSError) as exc:
        doc["info_error"] = str(exc)[:300]
    held = f"encrypted ({cipher})" if cipher != "none" else "NOT encrypted"
    if kind == "time" and value:
        until = gone_at + timedelta(days=value)
        doc["held_until_at_least"] = _iso(until)
        doc["statement"] = (f"pgBackRest stanza {cfg.stanza} still holds the database, {held}, in its base backups "
                            f"taken before {_iso(gone_at)} and their WAL, until a full backup taken after that is "
                            f"{value} days old: not before {_iso(until)}")
    else:
        doc["statement"] = (f"pgBackRest stanza {cfg.stanza} still holds the database, {held}, in its base backups "
                            f"taken before {_iso(gone_at)} and their WAL, until {value} newer full backup(s) "
                            "have been taken")
    return doc
