"""PostgreSQL tier benchmark (issue 3): a tenant whose only data is a ~200 MB database.

Side by side, in one run:
  our full backup        vs  pg_dump -Fc | restic backup --stdin (by hand, fresh repository)
  our full backup        vs  the seed's approach: pg_dump --compress=9 to a file, then gzip
  our unchanged backup   vs  our first backup (and vs the by-hand pipeline's unchanged run),
                             as an incremental and as a full session
  our restore            vs  pg_restore of a plain local dump file
"""
from __future__ import annotations

import secrets
from pathlib import Path

from kryonix_dagster.engine import pg, registry
from kryonix_dagster.engine.config import load_settings
from kryonix_dagster.demo.database import seed_database
from kryonix_dagster.demo.plan import DemoCounts
from kryonix_dagster.engine.migrations import migrate
from kryonix_dagster.engine.naming import names_for

from tests.helpers import purge_tenant

from .harness import Comparison, create_repository, Measurement, Report, World, cli, dir_bytes, sh, timed

TENANT = "benchpg"


def run(scale: float) -> Path:
    world = World("postgres")
    report = Report("postgres")
    try:
        settings = load_settings()
        migrate(settings)
        print(f"seeding the database of tenant {TENANT} at scale {scale}", flush=True)
        # Only the database: the other tiers find nothing and cost only their fixed overhead.
        counts = DemoCounts.for_scale(scale)
        purge_tenant(settings, TENANT)
        registry.ensure_tenant(settings, TENANT, "Bench PostgreSQL", "basic")
        seed_database(settings, names_for(settings, TENANT), counts, [])
        db = f"kryonix_cliente_{TENANT}"
        with pg.connection(settings.pg_dsn, db) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_database_size(current_database())")
            db_bytes = cur.fetchone()[0]
        report.facts.update(database=db, database_bytes=db_bytes, scale=scale)
        work = world.base / "work"
        work.mkdir()
        pgenv = pg.tool_env(settings.pg_dsn, db)
        manual_repo = world.base / "manual-repo"
        restic_env = {"RESTIC_REPOSITORY": str(manual_repo), "RESTIC_PASSWORD": secrets.token_hex(16),
                      "RESTIC_CACHE_DIR": str(world.base / "cache")}
        sh("restic init -q", restic_env)
        report.facts["repository_creation_seconds"] = create_repository(TENANT)  # untimed, like `restic init`

        ours, _ = timed("kryonix-backup backup --type full (first)", lambda: cli("backup", TENANT, "--type", "full"))
        ours.bytes = dir_bytes(world.repo_dir(TENANT))
        manual, _ = timed("pg_dump -Fc | restic backup --stdin",
                          lambda: sh("pg_dump -Fc | restic backup -q --stdin --stdin-filename db.dump", {**pgenv, **restic_env}))
        manual.bytes = dir_bytes(manual_repo)
        seed_file = work / "seed.backup"
        seed, _ = timed("seed: pg_dump --compress=9 to a file + gzip",
                        lambda: sh(f"pg_dump --format=custom --compress=9 --file={seed_file} && gzip -f {seed_file}", pgenv))
        seed.bytes = (work / "seed.backup.gz").stat().st_size
        report.add(Comparison("full backup vs by-hand restic pipeline", ours, manual))
        report.add(Comparison("full backup vs seed's compressed dump", ours, seed,
                              "the seed's file is neither encrypted nor deduplicated"))

        before = dir_bytes(world.repo_dir(TENANT))
        again, _ = timed("kryonix-backup backup (unchanged, incremental)", lambda: cli("backup", TENANT))
        again.bytes = dir_bytes(world.repo_dir(TENANT)) - before
        first = Measurement(ours.name, ours.seconds, ours.bytes)
        report.add(Comparison("unchanged second backup vs first backup", again, first, "bytes: repository growth"))
        before_manual = dir_bytes(manual_repo)
        manual_again, _ = timed("by-hand pipeline (unchanged)",
                                lambda: sh("pg_dump -Fc | restic backup -q --stdin --stdin-filename db.dump", {**pgenv, **restic_env}))
        manual_again.bytes = dir_bytes(manual_repo) - before_manual
        report.add(Comparison("unchanged second backup: ours vs by-hand pipeline", again, manual_again,
                              "bytes: repository growth; an unchanged incremental keeps the previous row hashes"))
        before = dir_bytes(world.repo_dir(TENANT))
        full_again, _ = timed("kryonix-backup backup --type full (unchanged)",
                              lambda: cli("backup", TENANT, "--type", "full"))
        full_again.bytes = dir_bytes(world.repo_dir(TENANT)) - before
        report.add(Comparison("unchanged full session: ours vs by-hand pipeline's second run", full_again, manual_again,
                              "bytes: repository growth; a full session hashes every row afresh"))

        plain_dump = work / "plain.dump"
        sh(f"pg_dump -Fc --file={plain_dump}", pgenv)
        scratch = f"kryonix_bench_restore_{secrets.token_hex(3)}"
        pg.create_database(settings.pg_dsn, scratch)
        try:
            baseline, _ = timed("pg_restore of a local dump file",
                                lambda: sh(f"pg_restore --no-owner --dbname={scratch} {plain_dump}",
                                           pg.tool_env(settings.pg_dsn, scratch)))
        finally:
            pg.drop_database(settings.pg_dsn, scratch)
        restore, _ = timed("kryonix-backup restore (verified, swapped in)", lambda: cli("restore", TENANT, "--yes"))
        report.add(Comparison("restore vs pg_restore of a plain dump", restore, baseline,
                              "ours also fetches from restic, verifies every table's rows, and swaps atomically"))
    finally:
        purge_tenant(load_settings(), TENANT)
        world.close()
    return report.write()
