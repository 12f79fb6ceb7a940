"""Small tenant benchmark (issue 10): what a session and a restore cost beyond their data.

One demo-scale tenant (every tier holds data), side by side in one run:
  our full session        vs  pg_dump -Fc | restic backup --stdin of its database (by hand)
  our unchanged session   vs  the by-hand pipeline's unchanged run
  our restore (all tiers) vs  the by-hand way back: restic dump | pg_restore into a fresh database
Facts: restic processes per full session, unchanged session and restore (counted by a `restic`
shim first on PATH that logs each call and execs the real binary), and the CLI's start-up.
"""
from __future__ import annotations

import os
import secrets
import shutil
import stat
from pathlib import Path

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine import pg
from kryonix_dagster.engine.config import load_settings
from kryonix_dagster.engine.migrations import migrate
from kryonix_dagster.engine.naming import names_for

from tests.helpers import purge_tenant

from .harness import Comparison, create_repository, Report, World, cli, sh, timed

TENANT = "benchsmall"


class ResticCounter:
    """A `restic` first on PATH that appends each call to a file (whether it runs without a lock,
    and its subcommand), then execs the real one. restic 0.14 waits 200 ms after taking a lock,
    so the locking calls are the ones that cost wall time."""

    def __init__(self, base: Path):
        real = shutil.which("restic")
        if real is None:
            raise RuntimeError("restic is not installed")
        self.log = base / "restic-calls.log"
        self.log.touch()
        shim = base / "shim"
        shim.mkdir()
        script = shim / "restic"
        script.write_text('#!/bin/sh\nlock=lock\n[ "$1" = version ] && lock=nolock\n'
                          'for a in "$@"; do [ "$a" = --no-lock ] && lock=nolock; done\n'
                          f'echo "$lock $*" >> "{self.log}"\nexec "{real}" "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        os.environ["PATH"] = f"{shim}:{os.environ['PATH']}"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def during(self, fn) -> tuple["Calls", object]:
        before = len(self.calls())
        value = fn()
        return Calls(self.calls()[before:]), value


class Calls:
    """The restic calls of one command: how many, and how many took a repository lock."""

    def __init__(self, lines: list[str]):
        self.total = len(lines)
        self.locking = sum(1 for line in lines if line.startswith("lock "))


def run(scale: float) -> Path:
    world = World("small")
    report = Report("small")
    counter = ResticCounter(world.base)
    try:
        settings = load_settings()
        migrate(settings)
        purge_tenant(settings, TENANT)
        print(f"seeding demo tenant {TENANT} at scale {scale}", flush=True)
        seeded = seed_tenant(settings, TENANT, scale)
        names = names_for(settings, TENANT)
        with pg.connection(settings.pg_dsn, names.database) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_database_size(current_database())")
            db_bytes = cur.fetchone()[0]
        pgenv = pg.tool_env(settings.pg_dsn, names.database)
        manual_repo = world.base / "manual-repo"
        restic_env = {"RESTIC_REPOSITORY": str(manual_repo), "RESTIC_PASSWORD": secrets.token_hex(16),
                      "RESTIC_CACHE_DIR": str(world.base / "cache")}
        sh("restic init -q", restic_env)
        report.facts["repository_creation_seconds"] = create_repository(TENANT)  # untimed, like `restic init`
        by_hand = "pg_dump -Fc | restic backup -q --stdin --stdin-filename db.dump"

        full_calls, (full, _) = counter.during(
            lambda: timed("kryonix-backup backup --type full", lambda: cli("backup", TENANT, "--type", "full")))
        manual, _ = timed(f"{by_hand} (first)", lambda: sh(by_hand, {**pgenv, **restic_env}))
        report.add(Comparison("small tenant: full session vs by-hand database pipeline", full, manual,
                              "ours takes every tier (database, buckets, Redis, vhost, files, compliance)"))

        again_calls, (again, _) = counter.during(
            lambda: timed("kryonix-backup backup (unchanged)", lambda: cli("backup", TENANT)))
        manual_again, _ = timed(f"{by_hand} (unchanged)", lambda: sh(by_hand, {**pgenv, **restic_env}))
        report.add(Comparison("small tenant: unchanged session vs by-hand pipeline's second run", again, manual_again))

        scratch = f"kryonix_bench_small_{secrets.token_hex(3)}"
        pg.create_database(settings.pg_dsn, scratch)
        try:
            back, _ = timed("restic dump latest | pg_restore (by hand)",
                            lambda: sh("restic dump -q latest db.dump | pg_restore --no-owner "
                                       f"--dbname={scratch}", {**pg.tool_env(settings.pg_dsn, scratch), **restic_env}))
        finally:
            pg.drop_database(settings.pg_dsn, scratch)
        restore_calls, (restore, _) = counter.during(
            lambda: timed("kryonix-backup restore --yes (all tiers, verified)", lambda: cli("restore", TENANT, "--yes")))
        report.add(Comparison("small tenant: restore vs by-hand restic dump | pg_restore", restore, back,
                              "ours restores and verifies every tier, the database swapped in atomically"))

        help_run, _ = timed("kryonix-backup --help", lambda: cli("--help"))
        report.facts.update(tenant=TENANT, scale=scale, database_bytes=db_bytes, objects=seeded.objects,
                            restic_processes_full_session=full_calls.total,
                            restic_processes_unchanged_session=again_calls.total,
                            restic_processes_restore=restore_calls.total,
                            restic_locking_processes_full_session=full_calls.locking,
                            restic_locking_processes_unchanged_session=again_calls.locking,
                            restic_locking_processes_restore=restore_calls.locking,
                            unchanged_session_seconds=round(again.seconds, 2),
                            restore_seconds=round(restore.seconds, 2),
                            goal_seconds="< 1.5 for the unchanged session and the restore (issue 10)",
                            cli_help_seconds=round(help_run.seconds, 3))
    finally:
        purge_tenant(load_settings(), TENANT)
        world.close()
    return report.write()
