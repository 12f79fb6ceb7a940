"""Point-in-time recovery per tenant (issue 11), against a real cluster of the tests' own, real
pgBackRest and real WAL archiving (tests/pitr_world.py)."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone


import pytest

from kryonix_dagster.cli import main
from kryonix_dagster.engine import pg
from kryonix_dagster.engine.errors import BadInput
from kryonix_dagster.engine.pitr.restore_at import run_restore_at
from kryonix_dagster.engine.tenant_repository import open_repository

from .alert_inbox import inbox  # noqa: F401 (a fixture)
from .conftest import run_cli
from .pitr_world import ERASED_EMAIL, as_postgres, pitr_world_fixture

__all__ = ["pitr_world_fixture"]  # the module-scoped `pitr_world` fixture


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def _earliest(backup: dict) -> str:
    """pgBackRest recovers only to a second after the first backup's stop second."""
    return (datetime.fromisoformat(backup["stopped"]) + timedelta(seconds=1)).isoformat()


def _rows(world, tid: str, upto: int) -> list[str]:
    return [f"{i}:{tid}-t{i}" for i in range(1, upto + 1)]


def test_setup_says_restart_then_restarts_and_is_idempotent(pitr_world):
    world = pitr_world
    assert world.setup_without_restart.returncode == 1
    assert "restart" in world.setup_without_restart.stderr
    assert world.setup_with_restart.returncode == 0, world.setup_with_restart.stderr
    again = world.cli("pitr", "setup", "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["restarted"] is False and doc["needs_restart"] == [] and doc["checked"] is True
    assert world.psql("postgres", "SHOW archive_mode") == "on"
    conf = (world.base / "pitr-work" / f"pgbackrest-{world.env['KRYONIX_PITR_STANZA']}.conf")
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    passphrase = [line for line in conf.read_text().splitlines() if line.startswith("repo1-cipher-pass=")]
    assert passphrase and len(passphrase[0]) > 40
    secret = passphrase[0].split("=", 1)[1]
    assert secret not in again.stdout + again.stderr
    # the repository is encrypted: no plaintext backup.info header
    info = next((world.base / "pgbackrest" / "backup").glob("*/backup.info"))
    assert b"[backup:current]" not in info.read_bytes()


def pgbackrest_backups(world) -> list[tuple[str, str]]:
    """(label, type) of every base backup, oldest first, from pgBackRest's own `info`."""
    stanza = world.env["KRYONIX_PITR_STANZA"]
    conf = world.base / "pitr-work" / f"pgbackrest-{stanza}.conf"
    out = subprocess.run(as_postgres("pgbackrest", f"--config={conf}", f"--stanza={stanza}", "info", "--output=json"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (info,) = json.loads(out.stdout)
    return [(b["label"], b["type"]) for b in info["backup"]]


def wal_archived_after_the_backup(world) -> None:
    """This test's precondition: a WAL segment archived after the second that follows the base
    backup's stop (the window's start), so the window has an end after its start. The base
    backup's own segment can be archived within its stop second; then, once the clock is past
    the window's start, a commit is written and the segment switched, and pg_stat_archiver is
    polled (psql) until the archive holds it."""
    start = (world.backup_stopped + timedelta(seconds=1)).isoformat()
    deadline = time.monotonic() + 120
    switched = False
    while world.psql("postgres", f"SELECT coalesce(last_archived_time >= '{start}', false) FROM pg_stat_archiver") != "t":
        assert time.monotonic() < deadline, "no WAL segment was archived after the base backup's stop second"
        if not switched and world.psql("postgres", f"SELECT clock_timestamp() > '{start}'") == "t":
            world.psql("postgres", "SELECT txid_current()")  # a commit in the segment to close
            world.psql("postgres", "SELECT pg_switch_wal()")
            switched = True
        time.sleep(0.1)


def test_status_shows_healthy_archiving_and_the_window(pitr_world):
    wal_archived_after_the_backup(pitr_world)
    result = pitr_world.cli("pitr", "status", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["archiving"]["healthy"] is True, doc["archiving"]
    assert doc["archiving"]["last_archived_wal"]
    # the world's full backup first, then whatever other tests took, as pgBackRest lists them
    listed = [(b["label"], b["type"]) for b in doc["backups"]]
    assert listed == pgbackrest_backups(pitr_world)
    assert listed[0] == (json.loads(pitr_world.extra["backup"])["label"], "full")
    earliest = datetime.fromisoformat(doc["window"]["earliest"].replace("Z", "+00:00"))
    latest = datetime.fromisoformat(doc["window"]["latest"].replace("Z", "+00:00"))
    assert earliest <= latest
    assert earliest < pitr_world.t_mid


def test_restore_at_between_t2_and_t3_leaves_the_other_tenant_alone(pitr_world):
    world = pitr_world
    tid, witness = world.tenants["self"], world.tenants["witness"]
    assert world.rows(tid) == _rows(world, tid, 3)
    result = world.cli("restore", tid, "--at", _iso(world.t_mid), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["success"] is True and doc["into"] == tid
    assert doc["other_tiers_from"]["session"] is None  # never backed up by a session
    assert world.rows(tid) == _rows(world, tid, 2)
    assert world.rows(witness) == _rows(world, witness, 3)
    assert doc["tiers"]["postgresql"]["details"]["scratch"]["whole_cluster"] is False  # --db-include
    assert not list(world.scratch_root.glob("*"))


def _server_clock_past(world, moment: datetime, timeout: float = 10) -> datetime:
    """Poll the server's clock until it is past `moment`; the server's now()."""
    deadline = time.monotonic() + timeout
    while True:
        now = datetime.fromisoformat(world.psql("postgres", "SELECT clock_timestamp()"))
        if now > moment:
            return now
        assert time.monotonic() < deadline, f"the server's clock never passed {moment}"
        time.sleep(0.1)


def test_a_database_created_after_the_base_backup_has_pitr_from_its_creation(pitr_world):
    """pgBackRest's `--db-include` cannot name a database its base backup does not hold (raw error
    80): the tenant onboarded after the newest base backup still gets `restore --at`, from the
    whole cluster restored into the scratch one; `pitr status` gives its own window start, and a
    moment before its database existed is refused cleanly, touching nothing."""
    from kryonix_dagster.engine import registry

    world = pitr_world
    tid = f"plate{secrets.token_hex(3)}"
    registry.add_tenant(world.settings, tid, f"PITR late {tid}", "enterprise")
    with world.cursor() as cur:
        cur.execute(f"CREATE DATABASE kryonix_cliente_{tid}")
    with world.cursor(f"kryonix_cliente_{tid}") as cur:
        cur.execute("CREATE SCHEMA app; CREATE TABLE app.orders (id int PRIMARY KEY, note text NOT NULL)")
        cur.execute("INSERT INTO app.orders VALUES (1, 'before T')")
    backups = _pgbackrest_info(world)
    assert backups and max(b["timestamp"]["stop"] for b in backups) < time.time() - 1  # all older than it
    held = json.loads(_pgbackrest(world, "info", f"--set={backups[-1]['label']}", "--output=json"))[0]
    assert f"kryonix_cliente_{tid}" not in {d["name"] for d in held["backup"][0]["database-ref"]}

    status = world.cli("pitr", "status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    mine = {t["tenant"]: t for t in doc["tenants"]}
    assert mine[tid]["starts_with"] == "database" and mine[tid]["database"] == f"kryonix_cliente_{tid}"
    own_start = datetime.fromisoformat(mine[tid]["earliest"].replace("Z", "+00:00"))
    window_start = datetime.fromisoformat(doc["window"]["earliest"].replace("Z", "+00:00"))
    assert own_start > window_start
    assert mine[world.tenants["witness"]]["starts_with"] == "window"
    assert mine[world.tenants["witness"]]["earliest"] == doc["window"]["earliest"]
    text = world.cli("pitr", "status")
    assert text.returncode == 0 and tid in text.stdout, text.stdout

    at = _server_clock_past(world, own_start)
    _server_clock_past(world, at)
    with world.cursor(f"kryonix_cliente_{tid}") as cur:
        cur.execute("INSERT INTO app.orders VALUES (2, 'after T')")
    assert world.rows(tid) == ["1:before T", "2:after T"]

    before = world.cli("restore", tid, "--at", _iso(window_start), "--yes", "--json")
    assert before.returncode == 1, before.stderr
    assert "did not exist" in before.stderr.strip().splitlines()[-1] and "error 80" not in before.stderr
    assert "restoring the whole cluster" in before.stderr  # the way that reaches a database this new
    assert world.rows(tid) == ["1:before T", "2:after T"]

    result = world.cli("restore", tid, "--at", _iso(at), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    restored = json.loads(result.stdout)
    assert restored["tiers"]["postgresql"]["details"]["scratch"] == {
        "whole_cluster": True, "base_backup": backups[-1]["label"]}
    assert world.rows(tid) == ["1:before T"]
    assert not list(world.scratch_root.glob("*"))


def test_bad_timestamps_exit_2(pitr_world, capsys, monkeypatch):
    """In-process (the console script's own entry point): nothing is reached before the refusal."""
    world = pitr_world
    tid = world.tenants["witness"]
    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    for raw in ("yesterday", "2026-13-01T00:00:00Z", "2026-11-29T02:00:00", future):
        with pytest.raises(SystemExit) as exit_:
            main(["restore", tid, "--at", raw, "--yes"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, (raw, err)
        assert len(err.strip().splitlines()) == 1 and "--at" in err
    assert world.rows(tid) == _rows(world, tid, 3)


def test_before_the_window_is_refused_with_the_window(pitr_world):
    world = pitr_world
    tid = world.tenants["witness"]
    backup = json.loads(world.extra["backup"])
    before = datetime.fromisoformat(backup["started"]) - timedelta(minutes=5)
    result = world.cli("restore", tid, "--at", _iso(before), "--yes", "--json")
    assert result.returncode == 1, result.stderr
    assert "outside the recoverable window" in result.stderr
    assert _earliest(backup)[:19] in result.stderr.replace("Z", "+00:00")
    assert world.rows(tid) == _rows(world, tid, 3)


def _postmaster_pids(root) -> list[int]:
    pids = []
    for pidfile in root.glob("*/data/postmaster.pid"):
        try:
            pids.append(int(pidfile.read_text().splitlines()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
    except OSError:
        return False


def test_kill_9_of_a_restore_then_the_next_run_sweeps_it_and_restores_into_another_tenant(pitr_world):
    """The killed restore leaves a running scratch cluster (and its tenant's lease, until the TTL);
    the next restore (another source, --into another registered tenant) removes it and gives
    the target the source's rows as of t_mid, while the source keeps its rows up to t3."""
    world = pitr_world
    killed, source, target = world.tenants["killed"], world.tenants["witness"], world.tenants["into_target"]
    proc = world.popen_cli("restore", killed, "--at", _iso(world.t_mid), "--yes")
    deadline = time.monotonic() + 120
    pids: list[int] = []
    while time.monotonic() < deadline and not pids and proc.poll() is None:
        pids = [p for p in _postmaster_pids(world.scratch_root) if _alive(p)]
        time.sleep(0.05)
    assert pids, f"no scratch postmaster seen; the restore exited with {proc.poll()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(world.scratch_root.glob("*")), "the kill left nothing behind: the test proves nothing"
    assert world.rows(killed) == _rows(world, killed, 3)  # killed before any swap
    with pytest.raises(BadInput, match="not registered"):  # exit 2 in the CLI; checked before any lease
        run_restore_at(world.settings, source, world.t_mid, into=source + "x")
    result = world.cli("restore", source, "--at", _iso(world.t_mid), "--into", target, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["into"] == target and doc["tiers"]["postgresql"]["restored"] == 2
    assert world.rows(target) == _rows(world, source, 2)
    assert world.rows(source) == _rows(world, source, 3)
    assert not list(world.scratch_root.glob("*"))
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _archive_failures(world) -> int:
    return int(world.psql("postgres", "SELECT failed_count FROM pg_stat_archiver"))


def test_checks_and_sensor_fail_with_a_bad_archive_command_and_pass_when_fixed(pitr_world, monkeypatch, inbox):
    from dagster import AssetCheckSeverity, DagsterInstance, build_sensor_context, materialize

    from kryonix_dagster.engine.pitr.archive import setup
    from kryonix_dagster.fleet.freshness import stale_backups_sensor
    from kryonix_dagster.pitr.assets import (archiving_evaluation, pitr_base_backup, wal_archiving_check,
                                             window_covers_plans_check)
    from kryonix_dagster.pitr.sensors import INCIDENT
    from kryonix_dagster.resources import (AppDataResource, BackupEngineResource,
                                           BackupRepositoryResource, ObjectStorageResource, PostgresResource,
                                           RabbitMQResource, RedisResource)

    world = pitr_world
    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    env = world.env
    engine = BackupEngineResource(
        postgres=PostgresResource(dsn=env["KRYONIX_PG_DSN"], main_db=env["KRYONIX_MAIN_DB"]),
        object_storage=ObjectStorageResource(), redis=RedisResource(), rabbitmq=RabbitMQResource(),
        repository=BackupRepositoryResource(repo=env["KRYONIX_REPO"], master_key_file=env["KRYONIX_MASTER_KEY_FILE"],
                                            state_dir=env["KRYONIX_STATE_DIR"]),
        app_data=AppDataResource(root=env["KRYONIX_APP_DATA_DIR"]))

    def sensor_cursor(cursor: str | None) -> dict:
        with build_sensor_context(cursor=cursor, resources={"engine": engine, "alerts": inbox.alerts}) as ctx:
            stale_backups_sensor(ctx)
            return json.loads(ctx.cursor)

    def archiving_alerts() -> list[dict]:  # (the world's never-backed-up tenants are in the same message)
        return [a for a in inbox.webhook if "WAL archiving" in a["message"]]

    assert archiving_evaluation(engine.pitr_status())["passed"] is True
    stanza = engine.pitr_status().stanza
    failures = _archive_failures(world)
    world.psql("postgres", "ALTER SYSTEM SET archive_command = 'false'")
    world.psql("postgres", "SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 60
        world.psql("postgres", "SELECT txid_current(), pg_switch_wal()")
        while _archive_failures(world) == failures and time.monotonic() < deadline:
            time.sleep(0.2)
        broken = archiving_evaluation(engine.pitr_status())
        assert broken["passed"] is False and broken["severity"] == AssetCheckSeverity.ERROR
        assert "archiv" in broken["description"]
        cursor = sensor_cursor(None)
        assert INCIDENT in cursor
        # delivered to the local receiver (synchronously: in the inbox when the tick returns)
        [stopped] = archiving_alerts()
        assert stopped["type"] == "failure" and f"WAL archiving stopped ({stanza})" in stopped["title"]
        assert f"WAL archiving stopped (stanza {stanza})" in stopped["message"]
        assert cursor[INCIDENT]["problem"] in stopped["message"] and "archiv" in cursor[INCIDENT]["problem"]
        assert any(mail for mail in inbox.mail if "WAL archiving stopped" in mail)
    finally:
        setup(world.settings)  # puts pgBackRest's archive_command back and checks that WAL arrives
    assert archiving_evaluation(engine.pitr_status())["passed"] is True
    assert INCIDENT not in sensor_cursor(json.dumps(cursor))
    assert len(archiving_alerts()) == 2 and "WAL archiving works again" in archiving_alerts()[1]["message"]
    assert "WAL archiving resumed" in archiving_alerts()[1]["title"]
    backups_before = pgbackrest_backups(world)  # the world's full, and any other test's
    result = materialize([pitr_base_backup, wal_archiving_check, window_covers_plans_check],
                         resources={"engine": engine}, instance=DagsterInstance.ephemeral(),
                         run_config={"ops": {"pitr_base_backup": {"config": {"backup_type": "incr"}}}})
    assert result.success
    meta = result.asset_materializations_for_node("pitr_base_backup")[0].metadata
    assert meta["backup_type"].value == "incr" and meta["base_backups"].value == len(backups_before) + 1
    after = pgbackrest_backups(world)
    assert after[:-1] == backups_before and after[-1][1] == "incr"
    assert meta["window_earliest"].value.startswith(_earliest(json.loads(world.extra["backup"]))[:19])
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["wal_archiving"].passed is True
    # a young window does not reach back the 30 days enterprise promises: a warning, not silence
    assert checks["window_covers_plans"].passed is False
    assert checks["window_covers_plans"].severity == AssetCheckSeverity.WARN


def test_a_moment_seconds_ago_with_the_other_tiers_from_the_restore_point_before_it(pitr_world, monkeypatch):
    """A session (database + Redis) first; then a Redis change and rows 4 (before T) and 5 (after
    T), T taken seconds before the restore: the database comes back with row 4 and without row 5,
    Redis from the session, and the output names that session."""
    import redis

    from kryonix_dagster.engine.reporting import NullReporter
    from kryonix_dagster.engine.session import run_backup
    from kryonix_dagster.engine.tiers import postgres, redis_keys

    world = pitr_world
    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    tid = world.tenants["sessioned"]
    client = redis.Redis.from_url(world.env["KRYONIX_REDIS_URL"])
    key = f"cliente:{tid}:greeting"
    try:
        client.set(key, b"as in the session")
        session = run_backup(world.settings, tid, "full", NullReporter(), tiers=(postgres.SPEC, redis_keys.SPEC))
        assert session.manifest_snapshot, session.error
        assert session.pg_restore_point.get("pitr_earliest")  # the restore point knows the window
        client.set(key, b"changed after the session")
        with world.cursor(f"kryonix_cliente_{tid}") as cur:
            cur.execute("INSERT INTO app.orders VALUES (4, 'before T')")
            cur.execute("SELECT clock_timestamp()")
            moment = cur.fetchone()[0]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                cur.execute("SELECT clock_timestamp() > %s", (moment,))
                if cur.fetchone()[0]:
                    break
            cur.execute("INSERT INTO app.orders VALUES (5, 'after T')")
        result = world.cli("restore", tid, "--at", _iso(moment), "--yes", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["other_tiers_from"]["session"] == session.session_id
        assert world.rows(tid) == _rows(world, tid, 3) + ["4:before T"]
        assert client.get(key) == b"as in the session"
        assert "redis" in doc["tiers"] and "compliance" not in doc["tiers"]
    finally:
        for stale in client.scan_iter(match=f"cliente:{tid}:*"):
            client.delete(stale)
        client.close()


def test_restore_at_a_moment_before_an_erasure_re_erases_the_person(pitr_world, test_env):
    """The person was in the database at t_mid and erased afterwards: restored as of t_mid, the
    database comes back (rows up to t2) without the person, the other contact intact. (test_env:
    the erasure looks in object storage too, the run's moto.)"""
    world = pitr_world
    tid = world.tenants["erased"]
    contacts = "SELECT id || ':' || email FROM crm.contatos ORDER BY id"
    erase = world.cli("lgpd", "erase", tid, "--subject", f"email={ERASED_EMAIL}", "--yes", "--json")
    assert erase.returncode == 0, erase.stderr
    assert ERASED_EMAIL not in world.psql(f"kryonix_cliente_{tid}", contacts)
    result = world.cli("restore", tid, "--at", _iso(world.t_mid), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["lgpd"]["subjects_reerased"] == 1
    assert world.rows(tid) == _rows(world, tid, 2)  # really the moment before t3
    assert world.psql(f"kryonix_cliente_{tid}", contacts).splitlines() == [
        "7:anonimizado@exemplo.com", "8:contato8@exemplo.com.br"]
    assert ERASED_EMAIL not in erase.stdout + erase.stderr + result.stdout + result.stderr


def _pgbackrest(world, verb: str, *args: str) -> str:
    """The pgbackrest binary itself (as the cluster's owner), on the world's stanza; its stdout."""
    import subprocess

    from .pitr_world import as_postgres

    conf = world.base / "pitr-work" / f"pgbackrest-{world.env['KRYONIX_PITR_STANZA']}.conf"
    out = subprocess.run(as_postgres("pgbackrest", f"--config={conf}", f"--stanza={world.env['KRYONIX_PITR_STANZA']}",
                                     *args, verb), capture_output=True, text=True, check=True)
    return out.stdout


def _pgbackrest_info(world) -> list[dict]:
    """The stanza's backups through the pgbackrest binary itself."""
    return json.loads(_pgbackrest(world, "info", "--output=json"))[0]["backup"]


def _retention_days(world) -> int:
    conf = (world.base / "pitr-work" / f"pgbackrest-{world.env['KRYONIX_PITR_STANZA']}.conf").read_text()
    assert "repo1-retention-full-type=time" in conf and "repo1-cipher-type=aes-256-cbc" in conf
    return int(next(line.split("=", 1)[1] for line in conf.splitlines() if line.startswith("repo1-retention-full=")))


def test_an_offboarded_tenant_is_never_restored_again_and_its_certificate_says_until_when(pitr_world, test_env):
    """pgBackRest's repository is shared and still holds the off-boarded tenant's database: the
    certificate says until when (encrypted), and every restore path refuses the tenant with exit 2
    before touching anything."""
    from kryonix_dagster.engine.drill import run_drill

    from .conftest import run_main

    world = pitr_world
    tid, witness = world.tenants["offboarded"], world.tenants["witness"]
    database = f"kryonix_cliente_{tid}"
    assert world.cli("tenants", "set-status", tid, "cancelado").returncode == 0
    before = datetime.now(timezone.utc)
    offboarded = world.cli("tenants", "offboard", tid, "--yes", "--json")
    assert offboarded.returncode == 0, offboarded.stderr
    after = datetime.now(timezone.utc)
    doc = json.loads(offboarded.stdout)
    assert doc["status"] == "encerrado"
    hold = doc["pitr_retention"]
    days = _retention_days(world)
    assert (hold["configured"], hold["encryption"], hold["retention_full_type"], hold["retention_full"]) == (
        True, "aes-256-cbc", "time", days)
    assert hold["base_backups_before"] == len(_pgbackrest_info(world)) >= 1
    until = datetime.fromisoformat(hold["held_until_at_least"].replace("Z", "+00:00"))
    assert before + timedelta(days=days) <= until + timedelta(seconds=1) and until <= after + timedelta(days=days)
    assert hold["held_until_at_least"][:10] in hold["statement"] and "encrypted" in hold["statement"]
    assert world.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{database}'") == "0"
    witness_rows = world.rows(witness)
    at = _iso(world.t_mid)
    refused = [world.cli("restore", tid, "--at", at, "--yes")]  # the installed script, on the path the bug took
    for args in (["--at", at, "--into", witness], [], ["--from", "secondary"], ["--into", witness],
                 ["--snapshot", "latest", "--services", "postgresql"]):
        refused.append(run_main("restore", tid, *args, "--yes", env=world.env))
    refused.append(run_main("restore", witness, "--at", at, "--into", tid, "--yes", env=world.env))  # as the target
    for result in refused:
        assert result.returncode == 2, (result.args, result.stdout, result.stderr)
        assert "off-boarded" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    with pytest.raises(BadInput, match="off-boarded"):
        run_drill(world.settings, tid)
    assert world.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{database}'") == "0"
    assert world.rows(witness) == witness_rows
    assert not list(world.scratch_root.glob("*"))


def _wait_for(what: str, check, proc, deadline_seconds: float = 180) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not check():
        assert proc.poll() is None, f"{what}: the process exited first ({proc.returncode})"
        assert time.monotonic() < deadline, f"{what}: not seen within {deadline_seconds:.0f}s"
        time.sleep(0.05)


def test_restore_at_applies_an_erasure_committed_while_it_waited_for_the_lease(pitr_world, test_env, tmp_path):
    """A real erasure holds the tenant's lease (held mid-transaction by a row lock of the test's);
    `restore --at` (a moment when the person existed) is started and seen waiting at the lease;
    then the erasure commits its ledger entry and releases: the restore must apply it."""
    import psycopg2

    world = pitr_world
    tid = world.tenants["erase_waited"]
    database = f"kryonix_cliente_{tid}"
    subject = tmp_path / "subject"
    subject.write_text(f"email={ERASED_EMAIL}\n")
    connect = dict(host="127.0.0.1", port=world.port, user="postgres")
    row_lock = psycopg2.connect(dbname=database, **connect)
    lease_lock = psycopg2.connect(dbname=world.env["KRYONIX_MAIN_DB"], **connect)
    erase = restore = None
    try:
        with row_lock.cursor() as cur:  # the erasure will block on this row, holding its lease
            cur.execute("SELECT id FROM crm.contatos WHERE id = 7 FOR UPDATE")
            assert cur.fetchone() == (7,)
        erase = world.popen_cli("lgpd", "erase", tid, "--subject-file", str(subject), "--yes", "--json")

        def erasure_blocked() -> bool:
            return world.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                              f"'{database}' AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE%contatos%'") == "1"

        _wait_for("the erasure blocked in its transaction", erasure_blocked, erase)
        with lease_lock.cursor() as cur:  # the lease row, so the restore's next attempt waits visibly
            cur.execute("SELECT operation FROM tenants.backup_leases WHERE cliente_id = %s AND expires_at > now() "
                        "FOR UPDATE", (tid,))
            assert cur.fetchone() == ("lgpd_erase",)
        restore = world.popen_cli("restore", tid, "--at", _iso(world.t_mid), "--wait", "300", "--yes", "--json")

        def restore_waits_for_the_lease() -> bool:
            return world.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                              "AND query ILIKE 'INSERT INTO tenants.backup_leases%'") == "1"

        _wait_for("the restore waiting for the lease", restore_waits_for_the_lease, restore)
        assert world.psql(database, "SELECT email FROM crm.contatos WHERE id = 7") == ERASED_EMAIL  # not erased yet
        lease_lock.rollback()
        row_lock.rollback()  # the erasure goes on, appends its ledger entry, releases the lease
        erased_out, erased_err = erase.communicate(timeout=300)
        assert erase.returncode == 0, erased_err.decode()
        out, err = restore.communicate(timeout=600)
        assert restore.returncode == 0, err.decode()
    finally:
        for proc in (erase, restore):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
        row_lock.close()
        lease_lock.close()
    doc = json.loads(out)
    assert doc["lgpd"]["subjects_reerased"] == 1
    assert world.rows(tid) == _rows(world, tid, 2)  # really as of t_mid, when the person existed
    assert world.psql(database, "SELECT id || ':' || email FROM crm.contatos ORDER BY id").splitlines() == [
        "7:anonimizado@exemplo.com", "8:contato8@exemplo.com.br"]
    assert ERASED_EMAIL.encode() not in erased_out + erased_err + out + err


def _cipher_pass(world) -> str:
    conf = world.base / "pitr-work" / f"pgbackrest-{world.env['KRYONIX_PITR_STANZA']}.conf"
    return next(line for line in conf.read_text().splitlines() if line.startswith("repo1-cipher-pass="))


def test_main_database_lost_pitr_setup_refuses_keys_recover_brings_the_passphrase_back(pitr_world):
    """docs/runbook.md, "The main database is lost, with PITR configured": on an empty main
    database `pitr setup` refuses to create a new passphrase over the existing stanza (naming
    `keys recover`); `keys recover` fills the stashed passphrase, the tenant's key and registry
    row; then `pitr setup`, `pitr status` and `restore --at` work with the archive as it was."""
    world = pitr_world
    tid = world.tenants["main_db_lost"]
    open_repository(world.settings, tid, create=True)  # its first backup: key and registry row stashed
    cipher = _cipher_pass(world)
    lost = {"KRYONIX_MAIN_DB": f"{world.settings.main_db}_lost{secrets.token_hex(2)}"}
    try:
        refused = run_cli("pitr", "setup", env={**world.env, **lost})
        assert refused.returncode == 1 and "keys recover" in refused.stderr, refused.stderr[-2000:]
        assert _cipher_pass(world) == cipher  # the archive's passphrase was not replaced
        recovered = run_cli("keys", "recover", "--json", env={**world.env, **lost})
        assert recovered.returncode == 0, recovered.stderr[-2000:]
        doc = json.loads(recovered.stdout)
        assert doc["pitr_passphrases"] == [world.env["KRYONIX_PITR_STANZA"]]
        assert {t["tenant_id"]: t["filled"] for t in doc["recovered"]}[tid] == ["key", "registry"]
        assert cipher.split("=", 1)[1] not in recovered.stdout + recovered.stderr
        again = run_cli("pitr", "setup", "--json", env={**world.env, **lost})
        assert again.returncode == 0, again.stderr[-2000:]
        assert _cipher_pass(world) == cipher
        status = run_cli("pitr", "status", "--json", env={**world.env, **lost})
        assert status.returncode == 0, status.stderr[-2000:]
        assert json.loads(status.stdout)["archiving"]["healthy"] is True
        restored = run_cli("restore", tid, "--at", _iso(world.t_mid), "--yes", "--json", env={**world.env, **lost})
        assert restored.returncode == 0, restored.stderr[-2000:]
        assert world.rows(tid) == _rows(world, tid, 2)
    finally:
        pg.drop_database(world.settings.pg_dsn, lost["KRYONIX_MAIN_DB"])
