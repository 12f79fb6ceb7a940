"""PITR benchmark (issue 11), on a cluster of its own (initdb; archive_mode needs a restart the
shared cluster must not get). Side by side, in one run, for one tenant database of ~200 MB:

  restore --at T (scratch cluster + verified swap)  vs  pgbackrest restore of the whole cluster to T
                                                    vs  today's logical restore (--snapshot latest)
  restore --at T of a tenant onboarded after the base backup (its database is not in it: the whole
  cluster goes into the scratch one)                vs  the same for a tenant in it (--db-include),
                                                        both databases seeded alike, side by side
  RPO: the WAL archive lag (oldest segment waiting, sampled every 0.5 s) under a pgbench write load
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path

from kryonix_dagster.demo.database import seed_database
from kryonix_dagster.demo.plan import DemoCounts
from kryonix_dagster.engine import pg, registry
from kryonix_dagster.engine.config import load_settings
from kryonix_dagster.engine.migrations import migrate
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.pitr import archive
from kryonix_dagster.engine.pitr.scratch import _options, _prepare, _remove, _wait_promoted, ScratchCluster
from kryonix_dagster.engine.pitr.cluster import pg_bin, run_detached
from kryonix_dagster.engine.pgbackrest import as_user
from kryonix_dagster.engine.reporting import NullReporter
from kryonix_dagster.engine.session import run_backup
from kryonix_dagster.engine.tiers import postgres

from tests.pitr_world import new_cluster, remove_cluster, world_env

from .harness import Comparison, Report, cli, free_port, timed

TENANT = "benchpitr"
EARLY = "benchpitrearly"  # in the base backup; seeded like LATE
LATE = "benchpitrlate"  # onboarded after the base backup


def _whole_cluster_restore(settings, target: datetime) -> None:
    """pgBackRest's own answer: the whole cluster restored to `target` beside production, started,
    promoted (what an operator would do by hand before dumping the tenant's database)."""
    pgbr, cluster, cfg = archive.engine_for(settings)
    root = _prepare(cfg.scratch_root, cluster.owner)
    scratch = ScratchCluster(root, free_port(), cluster.superuser)
    try:
        pgbr.run("restore", f"--pg1-path={scratch.data_dir}", "--type=time",
                 f"--target={target.strftime('%Y-%m-%d %H:%M:%S.%f')}+00", "--target-action=promote",
                 "--archive-mode=off")
        code, out = run_detached(as_user(cluster.owner, [pg_bin(cluster, "pg_ctl"), "-D", str(scratch.data_dir), "-l",
                                                         str(root / "postgres.log"), "-w", "-t", "600", "-o",
                                                         _options(root, scratch.port, cluster), "start"]), 630)
        if code != 0:
            raise RuntimeError(out)
        _wait_promoted(scratch, 600)
    finally:
        _remove(root, cluster.owner, cluster)


def _lag_sampler(settings, stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        samples.append(archive.archiving(settings, None).lag_seconds)
        stop.wait(0.5)


def run(scale: float, pgbench_seconds: int = 30) -> Path:
    report = Report("pitr")
    base, port = new_cluster()
    token = secrets.token_hex(3)
    env = world_env(base, port, token)
    os.environ.update(env)
    try:
        settings = load_settings()
        migrate(settings)
        registry.ensure_tenant(settings, TENANT, "Bench PITR", "enterprise")
        registry.ensure_tenant(settings, EARLY, "Bench PITR, in the base backup", "enterprise")
        registry.ensure_tenant(settings, LATE, "Bench PITR, onboarded after the base backup", "enterprise")
        cli("pitr", "setup", "--restart")
        print(f"seeding the database of tenant {TENANT} at scale {scale}", flush=True)
        seed_database(settings, names_for(settings, TENANT), DemoCounts.for_scale(scale), [])
        db = f"kryonix_cliente_{TENANT}"
        with pg.connection(settings.pg_dsn, db) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_database_size(current_database())")
            report.facts.update(database_bytes=cur.fetchone()[0], scale=scale)
        seed_database(settings, names_for(settings, EARLY), DemoCounts.for_scale(scale), [])
        full, _ = timed("pitr backup --type full", lambda: cli("pitr", "backup", "--type", "full"))
        report.facts["base_backup_seconds"] = round(full.seconds, 2)
        seed_database(settings, names_for(settings, LATE), DemoCounts.for_scale(scale), [])
        session = run_backup(settings, TENANT, "full", NullReporter(), tiers=(postgres.SPEC,))
        assert session.manifest_snapshot, session.error

        # RPO: archive lag under a write load on the tenant's database
        pgenv = pg.tool_env(settings.pg_dsn, db)
        pgbench = pg_bin(archive.clusters.discover(settings), "pgbench")
        subprocess.run([pgbench, "-i", "-s", "5", "-q"], env=pgenv, check=True, capture_output=True)
        samples: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_lag_sampler, args=(settings, stop, samples), daemon=True)
        sampler.start()
        bench = subprocess.run([pgbench, "-c", "2", "-T",
                                str(pgbench_seconds), "-n"], env=pgenv, capture_output=True, text=True, check=True)
        stop.set()
        sampler.join()
        tps = next((line.split("=")[1].split()[0] for line in bench.stdout.splitlines() if line.startswith("tps")), "?")
        report.facts.update(pgbench_seconds=pgbench_seconds, pgbench_tps=tps,
                            archive_lag_max_seconds=round(max(samples, default=0.0), 1),
                            archive_lag_mean_seconds=round(sum(samples) / max(1, len(samples)), 1))

        target = datetime.now(timezone.utc)
        iso = target.isoformat()
        ours, _ = timed("restore --at T (services postgresql)",
                        lambda: cli("restore", TENANT, "--at", iso, "--services", "postgresql", "--yes"))
        whole, _ = timed("pgbackrest restore of the whole cluster to T, started and promoted",
                         lambda: _whole_cluster_restore(settings, target))
        logical, _ = timed("restore --snapshot latest (services postgresql)",
                           lambda: cli("restore", TENANT, "--services", "postgresql", "--yes"))
        report.add(Comparison("RTO: restore --at vs whole-cluster pgbackrest restore", ours, whole,
                              "the baseline still has to dump and load the tenant's database by hand"))
        report.add(Comparison("RTO: restore --at vs today's logical restore", ours, logical,
                              "the logical restore goes back to the last session (RPO: hours), --at to T"))
        early, out = timed("restore --at T of a tenant in the base backup (--db-include)",
                           lambda: cli("restore", EARLY, "--at", iso, "--services", "postgresql", "--yes", "--json"))
        if json.loads(out)["tiers"]["postgresql"]["details"]["scratch"]["whole_cluster"]:
            raise RuntimeError(f"tenant {EARLY}: restore --at took the whole cluster; the comparison measures nothing")
        late, out = timed("restore --at T of a tenant created after the base backup (whole cluster into the scratch)",
                          lambda: cli("restore", LATE, "--at", iso, "--services", "postgresql", "--yes", "--json"))
        if not json.loads(out)["tiers"]["postgresql"]["details"]["scratch"]["whole_cluster"]:
            raise RuntimeError(f"tenant {LATE}: restore --at took --db-include; the comparison measures nothing")
        report.add(Comparison("RTO: restore --at of a database newer than the base backup vs one in it", late, early,
                              "databases seeded alike; the newer one restores every database of the cluster "
                              "(until the next base backup holds it)"))
        report.facts["rto_restore_at_seconds"] = round(ours.seconds, 2)
        report.facts["rto_restore_at_newer_database_seconds"] = round(late.seconds, 2)
    finally:
        remove_cluster(base)
    return report.write()
