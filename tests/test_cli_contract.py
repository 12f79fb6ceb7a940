"""The CLI contract of DESIGN.md, through the installed console script.

- Nothing prompts without a terminal: there `restore` needs `--yes`, else exit 2 saying so;
  on a terminal it asks, and a "no" touches nothing.
- `--json` prints one JSON document on stdout, also when the command fails.
- Bad snapshot ids, `--at` values and restic options are refused with exit 2 and one line,
  before any service is touched.
- Progress goes to stderr (a redrawn bar on a terminal), never to stdout.
"""
from __future__ import annotations

import json
import os
import pty
import subprocess
import threading
from datetime import datetime, timedelta, timezone

import pytest

from kryonix_dagster.demo import seed_tenant

from . import observe
from .conftest import MAIN_DB, VENV_BIN

UNREACHABLE = {"KRYONIX_PG_DSN": "postgresql://postgres@127.0.0.1:1/postgres",
               "KRYONIX_REDIS_URL": "redis://127.0.0.1:1/0", "KRYONIX_S3_ENDPOINT": "http://127.0.0.1:1"}


# --- helpers -----------------------------------------------------------------------------------

def one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def refused(result, fragment: str, code: int = 2) -> None:
    line = one_line_error(result, code)
    assert fragment in line, line
    assert result.stdout == "", result.stdout


def json_failure(result, fragment: str, code: int) -> dict:
    """Exit `code`, one line on stderr, and exactly one JSON document on stdout saying so."""
    line = one_line_error(result, code)
    assert fragment in line, line
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["exit_code"] == code and fragment in doc["error"], doc
    return doc


def run_on_terminal(*args: str, answer: str = "", env: dict[str, str] | None = None,
                    timeout: int = 300) -> tuple[int, str, str]:
    """Run the console script with stdin and stderr on a pseudo-terminal, stdout on a pipe.

    Returns (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(VENV_BIN / "kryonix-backup"), *args], stdin=slave, stderr=slave,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    os.close(slave)
    shown: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO once the child closed the terminal
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    if answer:
        os.write(master, answer.encode())
    stdout, _ = proc.communicate(timeout=timeout)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, stdout, b"".join(shown).decode(errors="replace")


def backed_up_tenant(settings, cli, tenant_factory) -> tuple[str, str]:
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    result = cli("backup", tid, "--json")
    assert result.returncode == 0, result.stderr
    return tid, f"kryonix_cliente_{tid}"


def mangle(db: str) -> dict:
    observe.psql(db, "UPDATE crm.contatos SET nome = 'ALTERADO'; DROP TABLE financeiro.faturas;")
    return observe.table_checksums(db)


def restore_audit_rows(tid: str) -> str:
    return observe.psql(MAIN_DB, f"SELECT count(*) FROM tenants.backup_audit "
                                 f"WHERE cliente_id = '{tid}' AND operation = 'restore'")


# --- restore confirmation --------------------------------------------------------------------

def test_restore_without_a_terminal_needs_yes_and_touches_nothing(settings, cli, tenant_factory):
    tid, db = backed_up_tenant(settings, cli, tenant_factory)
    at_backup = observe.table_checksums(db)
    mangled = mangle(db)
    assert mangled != at_backup

    refused(cli("restore", tid), "--yes")
    refused(cli("restore", tid, "--services", "redis"), "--yes")
    json_failure(cli("restore", tid, "--json"), "--yes", 2)
    assert observe.table_checksums(db) == mangled
    assert restore_audit_rows(tid) == "0"

    done = cli("restore", tid, "--yes")
    assert done.returncode == 0, done.stderr
    assert observe.table_checksums(db) == at_backup
    assert restore_audit_rows(tid) == "1"


def test_restore_on_a_terminal_asks_and_no_touches_nothing(settings, cli, tenant_factory):
    tid, db = backed_up_tenant(settings, cli, tenant_factory)
    at_backup = observe.table_checksums(db)
    mangled = mangle(db)

    code, stdout, shown = run_on_terminal("restore", tid, "--json", answer="n\n")
    assert code == 1 and "Replace tenant" in shown and "aborted" in shown, shown
    assert json.loads(stdout)["ok"] is False
    assert observe.table_checksums(db) == mangled
    assert restore_audit_rows(tid) == "0"

    code, stdout, shown = run_on_terminal("restore", tid, "--json", answer="y\n")
    assert code == 0, shown
    assert json.loads(stdout)["success"] is True
    assert observe.table_checksums(db) == at_backup


# --- --at (point-in-time recovery is not configured in this test world) --------------------------

def test_at_is_refused_in_one_line_and_touches_nothing(settings, cli, tenant_factory):
    tid, db = backed_up_tenant(settings, cli, tenant_factory)
    mangled = mangle(db)
    future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    for value, fragment in (("yesterday", "invalid --at"), ("-1", "invalid --at"), ("--yes", "invalid --at"),
                            ("", "invalid --at"), ("2024-13-01T00:00:00Z", "invalid --at"),
                            (future, "in the future")):
        refused(cli("restore", tid, "--at", value, "--yes"), fragment)
    refused(cli("restore", tid, "--at", "2024-01-01T00:00:00Z", "--snapshot", "latest", "--yes"), "not both")
    past = (datetime.now(timezone.utc) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    json_failure(cli("restore", tid, "--at", past, "--yes", "--json"),
                 "point-in-time recovery is not configured", 1)
    refused(cli("restore", tid, "--at", past, "--yes"), "point-in-time recovery is not configured", code=1)
    assert observe.table_checksums(db) == mangled
    assert restore_audit_rows(tid) == "0"


# --- bad input through every command ---------------------------------------------------------

BAD_SNAPSHOTS = ["-x", "--all", "", "../x", "LATEST", "lätest", "a" * 65, "abc", "20261129T020000Z-A1B2C3",
                 "latest;rm", "deadbeef/../x", " latest"]


@pytest.mark.parametrize("bad", BAD_SNAPSHOTS)
def test_bad_snapshot_ids_are_refused_before_any_service(cli, cli_in_process, bad):
    # the first case through the installed console script, the others through its entry function
    run = cli if bad == BAD_SNAPSHOTS[0] else cli_in_process
    refused(run("restore", "t1", "--snapshot", bad, "--yes", env=UNREACHABLE), "invalid --snapshot")
    refused(run("restore", "t1", f"--snapshot={bad}", "--into", "t2", "--yes", env=UNREACHABLE), "invalid --snapshot")


@pytest.mark.parametrize("command", [["restore", "{id}", "--yes"], ["restore", "t1", "--into", "{id}", "--yes"],
                                     ["snapshots", "{id}"], ["verify", "{id}"], ["forget", "{id}"],
                                     ["backup", "{id}"], ["restic", "{id}", "--", "snapshots"],
                                     ["tenants", "set-status", "{id}", "ativo"]])
def test_bad_tenant_ids_are_refused_with_and_without_json(cli, cli_in_process, command):
    # the first id through the installed console script, the others through its entry function
    for i, bad in enumerate(["-x", "--", "Ab", "ção", "../t1", "t1/..", "", "a" * 33, "t1 ", "t\n1"]):
        run = cli if i == 0 else cli_in_process
        args = [part.replace("{id}", bad) for part in command]
        result = run(*args, env=UNREACHABLE)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        if bad != "--" and command[0] in ("restore", "snapshots", "verify", "forget", "backup"):
            doc = json.loads(run(*args, "--json", env=UNREACHABLE).stdout)
            assert doc["ok"] is False and doc["exit_code"] == 2, (args, doc)


def test_restic_options_that_pick_another_repository_or_password_are_refused(cli, cli_in_process):
    # the first case of each list through the installed console script, the others in-process
    for i, args in enumerate((["--repo", "/tmp/elsewhere", "init"], ["-r", "/tmp/x", "snapshots"],
                              ["-r/tmp/x", "snapshots"], ["snapshots", "--repo=/tmp/x"],
                              ["--password-command", "echo x", "snapshots"], ["--password-file=/etc/passwd", "snapshots"],
                              ["-p", "/etc/passwd", "snapshots"], ["copy", "--repo2", "/tmp/x"],
                              ["copy", "--from-repo", "/tmp/x"], ["--repository-file", "/tmp/f", "snapshots"],
                              ["-vr", "/tmp/x", "init"])):
        refused((cli if i == 0 else cli_in_process)("restic", "t1", "--", *args, env=UNREACHABLE), "restic option")
    # ordinary restic arguments pass the check and reach the services (unreachable here: exit 1)
    for i, args in enumerate((["snapshots", "--json"], ["restore", "latest", "--target", "/tmp/x"],
                              ["ls", "-l", "latest"], ["find", "-i", "x"], ["check", "--read-data-subset=1/10"],
                              ["forget", "--prune", "-n"])):
        result = (cli if i == 0 else cli_in_process)("restic", "t1", "--", *args, env=UNREACHABLE)
        assert result.returncode == 1 and "restic option" not in result.stderr, (args, result.stderr)


# --- --json on failure -----------------------------------------------------------------------

def test_json_failures_print_one_document(cli, tenant_factory):
    json_failure(cli("backup", "Bad", "--json"), "invalid tenant id", 2)
    json_failure(cli("backup", "t1", "--type", "weekly", "--json"), "weekly", 2)
    json_failure(cli("restore", "t1", "--json", "--frobnicate"), "frobnicate", 2)
    json_failure(cli("snapshots", "--json"), "Missing argument", 2)
    for args in (("forget", "t1"), ("status",), ("tenants", "list")):  # what failed, and where
        json_failure(cli(*args, "--json", env=UNREACHABLE), "PostgreSQL 127.0.0.1:1, the admin database: cannot connect", 1)
    never = tenant_factory()
    assert cli("tenants", "add", never, "--name", "Nunca", "--plan", "basic").returncode == 0
    json_failure(cli("verify", never, "--json"), "never been backed up", 2)
    json_failure(cli("snapshots", never + "x", "--json", "--frobnicate"), "frobnicate", 2)
    # the escape hatch has no --json of its own: restic's flags are restic's
    refused(cli("restic", "Bad", "--", "snapshots", "--json"), "invalid tenant id")


def test_a_failed_backup_with_json_prints_its_report_once(cli, tenant_factory):
    ghost = tenant_factory()
    assert cli("tenants", "add", ghost, "--name", "Sem banco", "--plan", "basic").returncode == 0
    result = cli("backup", ghost, "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)  # one document: the sessions report, not a second error document
    assert doc["summary"]["failed"] == 1 and doc["sessions"][0]["success"] is False


# --- tables and progress ---------------------------------------------------------------------

def test_tables_have_aligned_columns(settings, cli, tenant_factory):
    tid, _ = backed_up_tenant(settings, cli, tenant_factory)
    for args, header in ((["snapshots", tid], ["SESSION", "TIME", "TYPE", "STATUS"]),
                         (["tenants", "list"], ["ID", "NOME", "PLANO", "STATUS"]),
                         (["status"], ["ID", "PLANO", "STATUS", "LAST_SESSION", "AGE_H"])):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split()[:len(header)] == header, lines[0]
        assert set(lines[1].replace(" ", "")) == {"-"}, lines[1]  # a rule under the header
        mine = lines[2] if args[0] == "snapshots" else next(line for line in lines if tid in line.split())
        start = lines[0].index(header[1])
        assert mine[start - 2:start] == "  " and mine[start] != " ", (lines[0], mine)


def test_progress_goes_to_the_terminal_and_json_stays_alone_on_stdout(settings, cli, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    code, stdout, shown = run_on_terminal("backup", tid, "--json")
    assert code == 0, shown
    assert json.loads(stdout)["summary"]["succeeded"] == 1
    assert "\r\x1b[K" in shown and tid in shown, shown  # a redrawn progress line
    code, stdout, shown = run_on_terminal("verify", tid, "--json")
    assert code == 0, shown
    assert json.loads(stdout)["ok"] is True and "\r\x1b[Ktenant " + tid + ": checking the repository… " in shown, shown
    code, stdout, shown = run_on_terminal("restore", tid, "--yes", "--json")
    assert code == 0, shown
    assert json.loads(stdout)["success"] is True and "restoring postgresql" in shown
