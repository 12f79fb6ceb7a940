"""`lgpd erase` subject values (issue 22, items 3 and 4) and the ledger step failing closed
(item 6), on the real services.

One small tenant without a database (so a contact id names the person directly, as in the
confirmed bug `--subject contato_id=.`): persons 1001, 1002 and 918273645 each have a Redis key,
an object under `contatos/{id}/` and an app-data folder `contatos/{id}`; Redis and app data are
backed up once, so an erasure runs restic (children whose command lines the argv test reads).
Each test erases its own person and keeps 1002, the control, intact.
"""
from __future__ import annotations

import json
import os
import shutil
import secrets
import subprocess
import threading
from pathlib import Path

import pytest
import redis

from kryonix_dagster.engine import pg, registry
from kryonix_dagster.engine.errors import OperationFailed
from kryonix_dagster.engine.lgpd.erase import run_erase
from kryonix_dagster.engine.lgpd.locations import Erased, erase_redis
from kryonix_dagster.engine.lgpd.rules import RULES_FILE, LgpdRules
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.session import run_backup
from kryonix_dagster.engine.tiers import appdata, redis_keys

from . import observe
from .conftest import VENV_BIN
from .helpers import purge_tenant

STDIN_PERSON, CONTROL, ARGV_PERSON, KEYLESS_PERSON = "1001", "1002", "918273645", "1003"
PERSONS = (STDIN_PERSON, CONTROL, ARGV_PERSON, KEYLESS_PERSON)


@pytest.fixture(scope="module")
def subjects_tenant(settings, test_env):
    tid = "s" + secrets.token_hex(4)
    purge_tenant(settings, tid)
    names = names_for(settings, tid)
    try:
        registry.ensure_tenant(settings, tid, "Subjects", "basic")
        r = redis.Redis.from_url(settings.redis_url)
        s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
        s3.create_bucket(Bucket=names.bucket("media"))
        for person in PERSONS:
            r.set(f"{names.redis_prefix}contato:{person}", f"cache {person}")
            s3.put_object(Bucket=names.bucket("media"), Key=f"contatos/{person}/foto.jpg", Body=b"foto")
            folder = names.app_data_dir / "contatos" / person
            folder.mkdir(parents=True)
            (folder / "ficha.txt").write_text(f"ficha {person}\n")
        session = run_backup(settings, tid, "full", tiers=(redis_keys.SPEC, appdata.SPEC))
        assert session.restore_point, session.error
        yield tid
    finally:
        purge_tenant(settings, tid)


def live_state(settings, tid: str) -> dict:
    """Everything of the tenant, through redis-py, boto3, the file system and psql."""
    names = names_for(settings, tid)
    r = redis.Redis.from_url(settings.redis_url)
    s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    listed = s3.list_objects_v2(Bucket=names.bucket("media")).get("Contents", [])
    files = sorted(str(Path(top, f).relative_to(names.app_data_dir))
                   for top, _, fs in os.walk(names.app_data_dir) for f in fs)
    main = settings.main_db
    return {"redis": sorted(k.decode() for k in r.scan_iter(match=names.redis_match)),
            "objects": sorted(o["Key"] for o in listed), "appdata": files,
            "ledger": observe.psql(main, f"SELECT count(*) FROM tenants.lgpd_ledger WHERE cliente_id = '{tid}'"),
            "audit": observe.psql(main, f"SELECT count(*) FROM tenants.backup_audit WHERE cliente_id = '{tid}'")}


def person_items(state: dict, person: str) -> list[str]:
    return [item for kind in ("redis", "objects", "appdata") for item in state[kind]
            if f"contato:{person}" in item or f"contatos/{person}/" in item]


BAD_SUBJECTS = [
    "contato_id=.", "contato_id=..", "contato_id=/", "contato_id=", "contato_id=*", "contato_id=1001/..",
    "contato_id=../1002", "contato_id=1?0?", "contato_id=[0-9]*", "contato_id=1001\x01", "contato_id=1001\t",
    "contato_id=12a", "contato_id=-1", "email=*@exemplo.com.br", "email=%@exemplo.com", "email=a@b",
    "email=../x@exemplo.com", "email=a@exemplo.com/..", "email=.a@exemplo.com", "email=a\x00b@x.com",
    "email=a b@exemplo.com", "telefone=+55*", "telefone=+55 11 9999", "telefone=11", "telefone=+5511.9999",
    "cpf=1001",
]


def test_bad_subject_values_exit_2_and_touch_nothing(subjects_tenant, settings, cli, cli_in_process):
    tid = subjects_tenant
    before = live_state(settings, tid)
    assert person_items(before, STDIN_PERSON) and person_items(before, CONTROL)
    # the confirmed bug, through the installed console script: `.` named every contact's folder
    bug = cli("lgpd", "erase", tid, "--subject", "contato_id=.", "--yes")
    assert bug.returncode == 2, bug.stdout + bug.stderr
    assert "contact id" in bug.stderr and len(bug.stderr.strip().splitlines()) == 1
    for subject in BAD_SUBJECTS:
        refused = cli_in_process("lgpd", "erase", tid, "--subject", subject, "--yes")
        assert refused.returncode == 2, (subject, refused.stdout, refused.stderr)
        value = subject.partition("=")[2]
        assert len(value) < 2 or value not in refused.stdout + refused.stderr, subject  # never echoed
    assert live_state(settings, tid) == before  # no key, object, file, ledger entry or audit row moved
    # a good value through stdin (`--subject-file -`) erases that person only, and `007`-style
    # zeros name the same contact
    done = cli("lgpd", "erase", tid, "--subject-file", "-", "--yes", "--json", stdin=f"contato_id=0{STDIN_PERSON}\n")
    assert done.returncode == 0, done.stderr
    after = live_state(settings, tid)
    assert not person_items(after, STDIN_PERSON)
    assert person_items(after, CONTROL) == person_items(before, CONTROL)


def test_subject_file_refusals(subjects_tenant, settings, cli_in_process, tmp_path):
    tid = subjects_tenant
    before = live_state(settings, tid)
    two = tmp_path / "two"
    two.write_text(f"contato_id={CONTROL}\ncontato_id={STDIN_PERSON}\n")
    cases = {
        "two lines": ["--subject-file", str(two)],
        "missing file": ["--subject-file", str(tmp_path / "absent")],
        "both": ["--subject-file", str(two), "--subject", f"contato_id={CONTROL}"],
        "neither": [],
    }
    for case, args in cases.items():
        refused = cli_in_process("lgpd", "erase", tid, *args, "--yes")
        assert refused.returncode == 2, (case, refused.stderr)
        assert CONTROL not in refused.stdout + refused.stderr, case
    assert live_state(settings, tid) == before
    helped = cli_in_process("lgpd", "erase", "--help")
    assert helped.returncode == 0 and "interactive use only" in " ".join(helped.stdout.split())


def test_redis_patterns_escape_the_key(subjects_tenant, settings):
    """A rule's own glob stays a glob; the key inside it is a literal (`1*` is not `1…`)."""
    names = names_for(settings, subjects_tenant)
    r = redis.Redis.from_url(settings.redis_url)
    made = [f"{names.redis_prefix}hist:{k}:{n}" for k in ("77", "770", "7*") for n in (1, 2)]
    for key in made:
        r.set(key, "x")
    try:
        def found(key: str) -> int:
            erased = Erased()
            erase_redis(r, names, ["hist:{contato_id}:*"], "contato_id", [key], True, erased)
            return erased.redis

        assert (found("77"), found("7*"), found("7?"), found("[7]*")) == (2, 2, 0, 0)
    finally:
        r.delete(*made)


def _tree(root: int) -> set[int]:
    """`root` and every process descending from it, from /proc/*/stat."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def test_the_value_never_appears_in_any_command_line(subjects_tenant, settings, tmp_path):
    """`--subject-file`: a reader of /proc/*/cmdline over the CLI's whole process tree (restic
    included) runs for as long as the CLI does and never sees the value."""
    tid = subjects_tenant
    subject = tmp_path / "subject"
    subject.write_text(f"contato_id={ARGV_PERSON}\n")
    seen: set[bytes] = set()  # every command line of the tree, as /proc shows it
    started, stop = threading.Event(), threading.Event()
    box: dict = {}

    def reader() -> None:
        started.wait(60)
        while not stop.wait(0.002):  # the poll's own pace; it ends with the CLI
            for pid in _tree(box["pid"]):
                try:
                    seen.add(Path(f"/proc/{pid}/cmdline").read_bytes())
                except OSError:
                    continue

    # every tool child's argv, recorded by the child itself (a short restic can end between two
    # polls of /proc on a loaded machine): a `restic` first on PATH that logs and execs the real one
    shims, argv_log = tmp_path / "bin", tmp_path / "argv.log"
    shims.mkdir()
    real = shutil.which("restic")
    (shims / "restic").write_text(f'#!/bin/sh\nprintf "%s\\0" "$0" "$@" >> {argv_log}\necho >> {argv_log}\n'
                                  f'exec {real} "$@"\n')
    (shims / "restic").chmod(0o755)
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    proc = subprocess.Popen([str(VENV_BIN / "kryonix-backup"), "lgpd", "erase", tid, "--subject-file", str(subject),
                             "--yes", "--json"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"})
    box["pid"] = proc.pid
    started.set()
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        stop.set()
        thread.join(30)
    assert proc.returncode == 0, err.decode()
    lines = [line for line in seen if line]
    assert any(b"kryonix-backup" in line and b"--subject-file" in line for line in lines), lines  # the CLI itself
    children = argv_log.read_bytes()
    assert children.count(b"\n") >= 1 and b"/restic\0" in children  # its restic children, each argv whole
    assert ARGV_PERSON.encode() not in children
    assert not [line for line in lines if ARGV_PERSON.encode() in line]
    assert ARGV_PERSON not in (out + err).decode()
    state = live_state(settings, tid)
    assert not person_items(state, ARGV_PERSON) and person_items(state, CONTROL)


def test_a_ledger_without_its_key_fails_the_restore_closed(subjects_tenant, settings, cli):
    """Entries exist, the ledger key row is gone (a main database partly recovered): the restore
    exits 1 before any tier, never "re-erased 0" with the erased person back in Redis."""
    tid = subjects_tenant
    names = names_for(settings, tid)
    r = redis.Redis.from_url(settings.redis_url)
    person_key = f"{names.redis_prefix}contato:{KEYLESS_PERSON}"
    run_erase(settings, tid, f"contato_id={KEYLESS_PERSON}")
    assert not r.exists(person_key)
    saved = observe.psql(settings.main_db, "SELECT master_key_id || ' ' || encode(nonce, 'hex') || ' ' || "
                         f"encode(wrapped_key, 'hex') FROM tenants.lgpd_ledger_keys WHERE cliente_id = '{tid}'").split()
    assert len(saved) == 3
    observe.psql(settings.main_db, f"DELETE FROM tenants.lgpd_ledger_keys WHERE cliente_id = '{tid}'")
    try:
        before = live_state(settings, tid)
        result = cli("restore", tid, "--services", "redis", "--yes", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "ledger" in result.stderr and "no ledger key" in result.stderr
        assert not r.exists(person_key)
        assert live_state(settings, tid)["redis"] == before["redis"]
    finally:
        observe.psql(settings.main_db, "INSERT INTO tenants.lgpd_ledger_keys (cliente_id, master_key_id, nonce, "
                     f"wrapped_key) VALUES ('{tid}', '{saved[0]}', decode('{saved[1]}', 'hex'), "
                     f"decode('{saved[2]}', 'hex')) ON CONFLICT DO NOTHING")


def test_a_resolved_key_that_is_not_one_path_component_is_refused_before_anything(subjects_tenant, settings):
    """Defence in depth: rules whose person key is a text column (`nome`) and a live row whose key
    is `.`: the erasure refuses (exit 1 in the CLI) before erasing anything, where `contatos/.`
    would have been every contact's folder."""
    tid = subjects_tenant
    names = names_for(settings, tid)
    doc = json.loads(RULES_FILE.read_text())
    doc["subjects"]["email"]["resolve"] = {"table": "crm.contatos", "column": "email", "key": "nome", "as": "contato_id"}
    rules = LgpdRules.model_validate(doc)
    observe.psql("postgres", f"CREATE DATABASE {names.database}")
    try:
        observe.psql(names.database, "CREATE SCHEMA crm; CREATE TABLE crm.contatos (id int PRIMARY KEY, nome text, "
                     "email text, telefone text); INSERT INTO crm.contatos VALUES (1, '.', 'ponto@exemplo.com.br', '1')")
        before = live_state(settings, tid)
        with pytest.raises(OperationFailed, match="not one safe path component"):
            run_erase(settings, tid, "email=ponto@exemplo.com.br", rules=rules)
        assert live_state(settings, tid) | {"audit": None} == before | {"audit": None}  # the refusal is audited
        assert observe.psql(names.database, "SELECT nome || email FROM crm.contatos") == ".ponto@exemplo.com.br"
    finally:
        pg.drop_database(settings.pg_dsn, names.database)
