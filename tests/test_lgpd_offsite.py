"""The LGPD erasure ledger and off-boarding across every copy (off-site, stash, recovered vault),
on real services: the copy behind the real append-only endpoint, real restic, psql checks."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
from pathlib import Path

import redis

from kryonix_dagster.engine import keys, locations, pg, registry
from kryonix_dagster.engine.key_recovery import recover_keys
from kryonix_dagster.engine.key_stash import read_stash
from kryonix_dagster.engine.lgpd import ledger, ledger_stash
from kryonix_dagster.engine.lgpd.offboard import run_offboard
from kryonix_dagster.engine.lgpd.rewrite import run_rewrite
from kryonix_dagster.engine.migrations import migrate
from kryonix_dagster.engine.naming import names_for, repository_in
from kryonix_dagster.engine.offsite import run_copy
from kryonix_dagster.engine.reporting import NullReporter
from kryonix_dagster.engine.repository import restic_location
from kryonix_dagster.engine.session import run_backup
from kryonix_dagster.engine.tiers import TIERS

from . import lgpd_offsite_world, observe
from .helpers import purge_tenant
from .lgpd_offsite_world import EMAIL, ERASED, KEPT

erasure_world = lgpd_offsite_world.erasure_world  # a fixture: one world per test process


def opens(location: Path, password: str, cache: Path) -> bool:
    env = dict(os.environ, RESTIC_REPOSITORY=str(location), RESTIC_PASSWORD=password, RESTIC_CACHE_DIR=str(cache))
    return subprocess.run(["restic", "cat", "config", "--no-lock"], env=env, capture_output=True,
                          timeout=120).returncode == 0


def stashed_passwords(settings) -> dict[str, set[str]]:
    """Every password the stashes beside the primary and the copy give with the master key."""
    found: dict[str, set[str]] = {}
    for kind in (locations.PRIMARY, locations.SECONDARY_ADMIN):
        for tenant_id, records in read_stash(settings, locations.location(settings, kind)).items():
            for r in records:
                found.setdefault(tenant_id, set()).add(keys.unwrap(settings, tenant_id, r.nonce, r.wrapped,
                                                                   r.master_key_id))
    return found


def ledger_files(settings, tenant_id: str) -> int:
    return sum(len(ledger_stash.read_ledgers(settings, locations.location(settings, kind)).get(tenant_id, []))
               for kind in (locations.PRIMARY, locations.SECONDARY_ADMIN))


def small_tenant(settings, tid: str, name: str) -> None:
    """A registered tenant with one small table, backed up once (PostgreSQL tier only)."""
    registry.ensure_tenant(settings, tid, name, "basic")
    names = names_for(settings, tid)
    observe.psql("postgres", f"CREATE DATABASE {names.database}")
    observe.psql(names.database, "CREATE TABLE notas (id int PRIMARY KEY, texto text); "
                                 "INSERT INTO notas SELECT g, 'nota ' || g FROM generate_series(1, 50) g")
    session = run_backup(settings, tid, "full", tiers=tuple(t for t in TIERS if t.name == "postgresql"))
    assert session.restore_point, session.error


def leaving_tenant(world, tid: str) -> None:
    """A small tenant with a ledger, backed up (no compliance tier: no legal hold), copied off-site."""
    settings = world.dr.settings
    small_tenant(settings, tid, "Saindo")
    ledger.ledger_key(settings, tid, create=True)
    ledger_stash.stash_everywhere(settings, tid)  # what an erasure does
    run_copy(settings, tid)  # through the append-only endpoint; stashes the password and the ledger there
    registry.set_status(settings, tid, "cancelado")


def test_offboarding_crypto_shreds_every_copy_and_every_stash(erasure_world, tmp_path):
    dr = erasure_world.dr
    settings = dr.settings
    tid = "x" + secrets.token_hex(4)
    try:
        leaving_tenant(erasure_world, tid)
        check_offboarding(erasure_world, tid, tmp_path)
    finally:
        purge_tenant(settings, tid)  # whatever a failure left behind


def check_offboarding(erasure_world, tid: str, tmp_path: Path) -> None:
    dr = erasure_world.dr
    settings = dr.settings
    primary = Path(restic_location(repository_in(settings.repo, tid)))
    offsite = Path(restic_location(repository_in(settings.repo_secondary_admin, tid)))
    earlier = {"primary": tmp_path / "primary-copy", "offsite": tmp_path / "offsite-copy"}  # disk snapshots
    shutil.copytree(primary, earlier["primary"])
    shutil.copytree(offsite, earlier["offsite"])
    password = keys.repository_password(settings, tid)
    assert all(opens(p, password, tmp_path / "cache") for p in earlier.values())  # the check below can fail
    assert password in stashed_passwords(settings)[tid] and ledger_files(settings, tid) >= 2

    refused = dr.cli("tenants", "offboard", tid, "--yes", env=dr.worker_env)  # a worker: no admin path
    assert refused.returncode == 2 and "KRYONIX_REPO_SECONDARY_ADMIN" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert keys.repository_password(settings, tid) == password and offsite.is_dir() and primary.is_dir()
    assert pg.database_exists(settings.pg_dsn, names_for(settings, tid).database)  # nothing touched

    done = run_offboard(settings, tid).to_json()  # with the admin path (the CLI's contract: the refusal above)
    assert done["status"] == "encerrado" and done["repositories_deleted"] == ["primary", "secondary-admin"]
    assert not primary.exists() and not offsite.exists()
    assert tid not in stashed_passwords(settings) and ledger_files(settings, tid) == 0
    lost = settings.with_overrides(main_db=f"{settings.main_db}_off{secrets.token_hex(2)}")
    try:  # the vault rebuilt from the copy's stash (through the workers' endpoint) knows nothing of the tenant
        migrate(lost)
        recovered = recover_keys(lost, locations.SECONDARY).to_json()
        assert tid not in [t["tenant_id"] for t in recovered["recovered"]] + list(recovered["skipped"])
        held = {keys.repository_password(lost, w.tenant_id) for w in keys.wrapped_keys(lost)}
        assert dr.tenant_id in [w.tenant_id for w in keys.wrapped_keys(lost)]  # recovery itself works
    finally:
        pg.drop_database(settings.pg_dsn, lost.main_db)
    held |= {w for ws in stashed_passwords(settings).values() for w in ws}
    held |= {keys.repository_password(settings, w.tenant_id) for w in keys.wrapped_keys(settings)}
    assert held  # the other tenant's passwords are there, and are tried
    for copy in earlier.values():
        for other in held:
            assert not opens(copy, other, tmp_path / "cache")
    assert opens(Path(restic_location(repository_in(settings.repo, dr.tenant_id))),  # the other tenant untouched
                 keys.repository_password(settings, dr.tenant_id), tmp_path / "cache")


def test_a_person_erased_after_the_copy_stays_absent_after_restore_from_secondary(erasure_world):
    dr = erasure_world.dr
    erasure_world.erased()
    restored = dr.cli("restore", dr.tenant_id, "--from", "secondary", "--services", "postgresql", "--yes",
                      env=dr.worker_env)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert erasure_world.person(ERASED) == 0 and erasure_world.person(KEPT) > 0


def test_the_ledger_survives_the_loss_of_the_main_database(erasure_world):
    dr = erasure_world.dr
    erasure_world.erased()
    before = ledger.entries(dr.settings, dr.tenant_id)
    lost = {"KRYONIX_MAIN_DB": f"{dr.settings.main_db}_lost{secrets.token_hex(2)}"}
    try:
        recovered = dr.cli_json("keys", "recover", "--from", "secondary", env=lost)
        mine = [t for t in recovered["recovered"] if t["tenant_id"] == dr.tenant_id]
        assert mine and mine[0]["ledger_entries"] == len(before) >= 1
        rebuilt = dr.settings.with_overrides(main_db=lost["KRYONIX_MAIN_DB"])
        after = ledger.entries(rebuilt, dr.tenant_id)
        assert [(e.subject_kind, e.value_hash, e.key_hashes) for e in after] == \
            [(e.subject_kind, e.value_hash, e.key_hashes) for e in before]
        assert ledger.ledger_key(rebuilt, dr.tenant_id) == ledger.ledger_key(dr.settings, dr.tenant_id)
        restored = dr.cli("restore", dr.tenant_id, "--snapshot", erasure_world.session,  # before the erasure
                          "--services", "postgresql", "--yes", env=lost)
        assert restored.returncode == 0, restored.stderr[-2000:]
        assert erasure_world.person(ERASED) == 0 and erasure_world.person(KEPT) > 0
    finally:
        pg.drop_database(dr.settings.pg_dsn, lost["KRYONIX_MAIN_DB"])


# --- `lgpd erase --rewrite`: every location, every blob ------------------------------------------

OTHER = 9  # erased with --rewrite by the test below (person 7 is the world's, erased without it)
OTHER_EMAIL = f"contato{OTHER}@exemplo.com.br"


def restic_env(location: Path, password: str, cache: Path) -> dict[str, str]:
    return dict({k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))},
                RESTIC_REPOSITORY=str(location), RESTIC_PASSWORD=password, RESTIC_CACHE_DIR=str(cache))


def blob_hits(location: Path, password: str, cache: Path, needles: list[bytes],
              until_all: bool = False) -> tuple[int, dict[bytes, int]]:
    """(blobs read, needle -> blobs holding it): every blob of the repository (`restic list
    blobs`), each read back decrypted and decompressed by the restic binary (`restic cat blob`);
    `until_all`: stop once every needle was seen (a check that they are there)."""
    from concurrent.futures import ThreadPoolExecutor
    env = restic_env(location, password, cache)
    listed = subprocess.run(["restic", "--no-lock", "list", "blobs"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert listed.returncode == 0, listed.stderr
    ids = [line.split()[1] for line in listed.stdout.splitlines() if line.split()[:1] in (["data"], ["tree"])]
    assert ids, listed.stdout  # a repository holding restore points has blobs: the loop below reads something

    def read(blob: str) -> bytes:
        got = subprocess.run(["restic", "--no-lock", "cat", "blob", blob], env=env, capture_output=True, timeout=300)
        assert got.returncode == 0, got.stderr
        return got.stdout

    contents: list[bytes] = []
    with ThreadPoolExecutor(3) as pool:
        for start in range(0, len(ids), 6):
            contents += pool.map(read, ids[start:start + 6])
            if until_all and all(any(n in c for c in contents) for n in needles):
                break
    return len(contents), {n: sum(1 for c in contents if n in c) for n in needles}


def snapshot_ids(location: Path, password: str, cache: Path) -> list[str]:
    listed = subprocess.run(["restic", "--no-lock", "snapshots", "--json"], capture_output=True, text=True,
                            env=restic_env(location, password, cache), timeout=300)
    assert listed.returncode == 0, listed.stderr
    ids = sorted(s["id"] for s in json.loads(listed.stdout))
    assert ids  # the location holds restore points: the comparison is about something
    return ids


def copy_line(email: str) -> bytes:
    """The person's e-mail as pg_dump's COPY text writes it: one tab-separated field."""
    return f"\t{email}\t".encode()


def compliance(dr, tid: str) -> dict:
    """`lgpd report ID --json` (exit 1 when the seed's data is past its period: the document still comes)."""
    done = dr.cli("lgpd", "report", tid, "--json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def second_point_with_app_data(erasure_world) -> tuple[str, bytes]:
    """A second restore point, copied off-site, whose app data holds person OTHER's file (with
    the e-mail) beside incompressible files: restic packs them together, so after the rewrite
    that pack is partly used and its unused part is far below restic's default 5% tolerance.
    Its Redis tier holds the person's key; returned: the session and that key's DUMP payload
    (read with redis-py), as the Redis stream stores it."""
    dr = erasure_world.dr
    settings, tid = dr.settings, dr.tenant_id
    names = names_for(settings, tid)
    client = redis.Redis.from_url(settings.redis_url)
    client.hset(f"{names.redis_prefix}contato:{OTHER}", mapping={"email": OTHER_EMAIL, "nome": f"Contato {OTHER}"})
    payload = client.dump(f"{names.redis_prefix}contato:{OTHER}")
    assert payload
    root = names.app_data_dir
    (root / "contatos" / str(OTHER)).mkdir(parents=True, exist_ok=True)
    (root / "contatos" / str(OTHER) / "ficha.txt").write_text(f"ficha do contato {OTHER}: {OTHER_EMAIL}\n")
    (root / "anexos").mkdir(parents=True, exist_ok=True)
    for n in range(3):
        (root / "anexos" / f"contrato-{n}.bin").write_bytes(secrets.token_bytes(300_000))
    session = run_backup(settings, tid, "full", tiers=tuple(t for t in TIERS if t.name in ("postgresql", "redis",
                                                                                            "appdata")))
    assert session.restore_point, session.error
    assert dr.cli_json("copy", tid)["copies"][0]["copied_sessions"] == [session.session_id]
    return session.session_id, payload


def test_rewrite_takes_the_person_out_of_every_location_and_every_blob(erasure_world, tmp_path):
    dr = erasure_world.dr
    settings, tid = dr.settings, dr.tenant_id
    erasure_world.erased()  # person 7 erased from the live data only: both locations still hold them
    assert erasure_world.person(OTHER) > 0
    second, payload = second_point_with_app_data(erasure_world)
    sessions = sorted([erasure_world.session, second])
    repos = {"primary": Path(restic_location(repository_in(settings.repo, tid))),
             "secondary": Path(restic_location(repository_in(settings.repo_secondary_admin, tid)))}
    password = keys.repository_password(settings, tid)
    needles = [EMAIL.encode(), OTHER_EMAIL.encode(), copy_line(EMAIL), copy_line(OTHER_EMAIL)]
    file_line = f"ficha do contato {OTHER}: {OTHER_EMAIL}".encode()  # as the app-data file holds it
    needles += [file_line, payload]
    for name, location in repos.items():  # before: the values are there, in the dump's COPY lines (the test can fail)
        read, hits = blob_hits(location, password, tmp_path / "cache", needles, until_all=True)
        assert all(hits[n] for n in needles), (name, hits)
    report = compliance(dr, tid)
    assert {w["location"]: bool(w["ledger_pending"]) for w in report["locations"]} == \
        {"primary": True, "secondary": True}

    subject = tmp_path / "subject"
    subject.write_text(f"email={OTHER_EMAIL}\n")
    main_db = settings.main_db
    entries = observe.psql(main_db, f"SELECT count(*) FROM tenants.lgpd_ledger WHERE cliente_id = '{tid}'")
    snapshots = {name: snapshot_ids(loc, password, tmp_path / "cache") for name, loc in repos.items()}
    refused = dr.cli("lgpd", "erase", tid, "--subject-file", str(subject), "--rewrite", "--yes",
                     env=dr.worker_env)  # a worker: the copy holds restore points, no admin path to rewrite it
    assert refused.returncode == 1 and "KRYONIX_REPO_SECONDARY_ADMIN" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and OTHER_EMAIL not in refused.stderr + refused.stdout
    assert erasure_world.person(OTHER) > 0  # nothing touched: the live data, the ledger, both repositories
    assert observe.psql(main_db, f"SELECT count(*) FROM tenants.lgpd_ledger WHERE cliente_id = '{tid}'") == entries
    for name, loc in repos.items():
        assert snapshot_ids(loc, password, tmp_path / "cache") == snapshots[name], name

    cert = dr.cli_json("lgpd", "erase", tid, "--subject-file", str(subject), "--rewrite", "--yes")
    assert erasure_world.person(OTHER) == 0 and erasure_world.person(KEPT) > 0
    assert not (names_for(settings, tid).app_data_dir / "contatos" / str(OTHER)).exists()
    assert not redis.Redis.from_url(settings.redis_url).exists(f"{names_for(settings, tid).redis_prefix}contato:{OTHER}")
    assert sorted((p["location"], p["session"]) for p in cert["rewritten_restore_points"]) == \
        [(where, s) for where in ("primary", "secondary") for s in sessions]
    assert {w["location"]: (sorted(w["restore_points_taken_before"]), w["rewritten"], w["may_still_hold"])
            for w in cert["locations"]} == {"primary": (sessions, True, []), "secondary": (sessions, True, [])}
    assert cert["restore_points_that_may_hold_the_person"] == []
    for name, location in repos.items():  # after: not one stored blob holds either value, in either location
        read, hits = blob_hits(location, password, tmp_path / "cache", needles)
        assert read and not any(hits.values()), (name, hits)
    assert observe.psql(main_db, "SELECT count(*) FILTER (WHERE rewritten_at IS NULL) || '/' || count(*) FROM "
                                 f"tenants.lgpd_ledger WHERE cliente_id = '{tid}'") == f"0/{int(entries) + 1}"
    report = compliance(dr, tid)
    assert {w["location"]: w["ledger_pending"] for w in report["locations"]} == {"primary": 0, "secondary": 0}
    assert report["ledger_pending"] == 0


class AppendWhilePruning(NullReporter):
    """At the rewrite's prune (the ledger already read, not yet marked), lets a writer thread
    append a ledger entry and waits for it: the overlap is certain."""

    def __init__(self, reached: threading.Event, appended: threading.Event) -> None:
        self.reached, self.appended = reached, appended

    def info(self, message: str) -> None:
        if "pruning" in message and not self.reached.is_set():
            self.reached.set()
            assert self.appended.wait(120), "the writer did not append within 120 s"


def test_a_rewrite_marks_only_the_ledger_entries_it_started_with(erasure_world):
    settings = erasure_world.dr.settings
    tid = "r" + secrets.token_hex(4)
    try:
        small_tenant(settings, tid, "Regravado")  # not copied off-site: the rewrite prunes the primary only
        key = ledger.ledger_key(settings, tid, create=True)

        def entry(value: str) -> int:
            return ledger.append(settings, tid, "email", ledger.keyed_hash(key, "email", value),
                                 [ledger.keyed_hash(key, "contato_id", value)], {}).id

        first = entry("antes@exemplo.com.br")
        reached, appended, late = threading.Event(), threading.Event(), []

        def writer() -> None:  # another thread, its own connection: an entry the rewrite never read
            if reached.wait(300):
                late.append(entry("durante@exemplo.com.br"))
                appended.set()

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            run_rewrite(settings, tid, report=AppendWhilePruning(reached, appended))
        finally:
            reached.set()
            thread.join(timeout=120)
        assert late and not thread.is_alive()
        marked = observe.psql(settings.main_db, "SELECT id || ':' || (rewritten_at IS NOT NULL) FROM "
                                                f"tenants.lgpd_ledger WHERE cliente_id = '{tid}' ORDER BY id")
        assert marked.split() == [f"{first}:true", f"{late[0]}:false"]
    finally:
        purge_tenant(settings, tid)
