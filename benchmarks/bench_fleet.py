"""Fleet section (issue 14): one batch run over small tenants with 1 and with 2 Celery workers
(speed-up, sessions per CPU-second), tick times at 10,000 and 100,000 tenants, and the
projection of daily CPU and workers needed at the plans' cadences."""
from __future__ import annotations

import io
import os
import resource
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from celery import Celery

from kryonix_dagster.engine import pg
from kryonix_dagster.engine.config import load_settings
from kryonix_dagster.engine.migrations import migrate
from kryonix_dagster.engine.plans import PLANS
from tests.helpers import purge_tenant

from .harness import create_repository, ROOT, Comparison, Measurement, Report, World

BIN = Path(sys.executable).parent
PLAN_MIX = {"basic": 0.6, "pro": 0.3, "enterprise": 0.1}
INSTANCE_YAML = """storage:
  postgres:
    postgres_db: {{hostname: 127.0.0.1, port: 5432, username: postgres, password: "", db_name: {db},
                  scheme: postgresql+psycopg2}}
telemetry: {{enabled: false}}
"""


def sessions_per_day(plan) -> float:
    """Incrementals (every 6 h, every 3 h for enterprise) plus the daily full."""
    every = int(plan.incremental_cron.split()[1].split("/")[1])
    return 24 / every + 1


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def batch_run(tenants: list[str], workers: int, home: Path, logs: Path) -> tuple[float, float]:
    """(wall seconds of the run, CPU seconds of the workers and everything they ran)."""
    from dagster import DagsterInstance, build_reconstructable_job, execute_job

    from kryonix_dagster.workers.broker import broker_url

    queue = "kryonix_bench_" + secrets.token_hex(4)
    os.environ["KRYONIX_CELERY_QUEUE"] = queue
    env = dict(os.environ, DAGSTER_HOME=str(home), PYTHONPATH=str(ROOT))
    cpu_before = _cpu_children()
    procs = [subprocess.Popen([str(BIN / "celery"), "-A", "kryonix_dagster.workers.app", "worker", "-Q", queue,
                               "-n", f"bench{n}@%h", "-c", "1", "--without-gossip", "--without-mingle"],
                              cwd=ROOT, env=env, stdout=open(logs / f"w{workers}-{n}.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True) for n in range(workers)]
    try:
        app = Celery("ping", broker=broker_url())
        while len(app.control.ping(destination=[f"bench{n}@{os.uname().nodename}" for n in range(workers)],
                                   timeout=1.0)) < workers:
            pass
        job = build_reconstructable_job("tests.workers_job", "backup_batch_job")
        config = {"ops": {"split_active_tenants": {"config": {"tenants": tenants, "backup_type": "full"}}},
                  "execution": {"config": {"mode": "celery"}}}
        with DagsterInstance.from_config(str(home)) as instance:
            started = time.perf_counter()
            result = execute_job(job, instance=instance, run_config=config)
            wall = time.perf_counter() - started
        if not result.success:
            raise RuntimeError(f"batch run with {workers} workers failed")
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        os.environ.pop("KRYONIX_CELERY_QUEUE", None)
    return wall, _cpu_children() - cpu_before


def registry_of(settings, count: int):
    own = settings.with_overrides(main_db=f"{settings.main_db}_{count}")
    pg.drop_database(own.pg_dsn, own.main_db)
    migrate(own)
    rows = io.StringIO()
    for n in range(count):
        plan = "basic" if n % 10 < 6 else "pro" if n % 10 < 9 else "enterprise"
        rows.write(f"f{n:06d}\tCliente {n}\t{plan}\n")
    rows.seek(0)
    with pg.connection(own.pg_dsn, own.main_db) as conn, conn.cursor() as cur:
        cur.copy_expert("COPY tenants.clientes (id, nome, plano) FROM STDIN", rows)
        cur.execute("ANALYZE tenants.clientes")
    return own


def tick_times(settings, count: int) -> dict[str, float]:
    from dagster import DagsterInstance, build_schedule_context, build_sensor_context

    from kryonix_dagster.backup import BACKUP_SCHEDULES
    from kryonix_dagster.fleet import stale_backups_sensor, tenant_partitions_sensor
    from kryonix_dagster.partitions import KRYONIX_TENANTS
    from kryonix_dagster.resources import AlertsResource, BackupEngineResource, PostgresResource, resources_from_env
    from kryonix_dagster.retention import retention_schedule

    own = registry_of(settings, count)
    postgres = PostgresResource(main_db=own.main_db)
    out: dict[str, float] = {}
    try:
        with DagsterInstance.ephemeral() as instance:
            for schedule in [*BACKUP_SCHEDULES, retention_schedule]:
                when = datetime(2026, 12, 1, 7, tzinfo=timezone.utc)  # 04:00 in America/Sao_Paulo
                context = build_schedule_context(instance=instance, scheduled_execution_time=when,
                                                 resources={"postgres": postgres})
                started = time.perf_counter()
                schedule.evaluate_tick(context)
                out["schedule tick, worst"] = max(out.get("schedule tick, worst", 0), time.perf_counter() - started)
            ticks, cursor = 0, None
            while True:
                with build_sensor_context(instance=instance, cursor=cursor, resources={"postgres": postgres}) as ctx:
                    started = time.perf_counter()
                    result = tenant_partitions_sensor(ctx)
                    out["partition sensor tick, worst"] = max(out.get("partition sensor tick, worst", 0),
                                                              time.perf_counter() - started)
                requests = getattr(result, "dynamic_partitions_requests", None) or []
                if not requests:
                    break
                ticks, cursor = ticks + 1, result.cursor
                started = time.perf_counter()  # what the daemon does with the tick's result
                for request in requests:
                    instance.add_dynamic_partitions(KRYONIX_TENANTS, request.partition_keys)
                out["partition sensor tick applied, worst"] = max(out.get("partition sensor tick applied, worst", 0),
                                                                  time.perf_counter() - started)
            out["partition sensor ticks to sync"] = ticks
            base = resources_from_env()["engine"]
            engine = BackupEngineResource(**{**{k: getattr(base, k) for k in (
                "object_storage", "redis", "rabbitmq", "repository", "app_data")}, "postgres": postgres})
            with build_sensor_context(instance=instance, resources={"engine": engine, "alerts": AlertsResource()}) as ctx:
                started = time.perf_counter()
                stale_backups_sensor(ctx)
                out["stale sensor tick"] = time.perf_counter() - started
    finally:
        pg.drop_database(own.pg_dsn, own.main_db)
    return out


def run(tenants: int = 50, scale: float = 0.05) -> Path:
    from kryonix_dagster.demo import seed_tenant
    from kryonix_dagster.workers.broker import ensure_vhost

    world = World("fleet")
    report = Report("fleet")
    settings = load_settings()
    migrate(settings)
    ensure_vhost()
    ids = [f"bf{secrets.token_hex(2)}{n}" for n in range(tenants)]
    dagster_db = f"kryonix_bench_dagster_{secrets.token_hex(3)}"
    home = world.base / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML.format(db=dagster_db))
    pg.create_database(settings.pg_dsn, dagster_db)
    try:
        print(f"seeding {tenants} tenants at scale {scale}", flush=True)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda tid: seed_tenant(settings, tid, scale=scale), ids))
        # Repositories exist before the runs (creation is restic's calibrated init key, once per
        # tenant), and both runs are full sessions: the two runs do the same work.
        with ThreadPoolExecutor(2) as pool:
            creation = sum(pool.map(create_repository, ids))
        report.facts["repository_creation_seconds_per_tenant"] = round(creation / tenants, 2)
        runs = {}
        for workers in (1, 2):
            print(f"batch run over {tenants} tenants with {workers} worker(s)", flush=True)
            runs[workers] = batch_run(ids, workers, home, world.base)
        (wall1, cpu1), (wall2, cpu2) = runs[1], runs[2]
        report.add(Comparison(f"batch run of {tenants} tenants: 2 workers vs 1",
                              Measurement("2 Celery workers", wall2, count=tenants),
                              Measurement("1 Celery worker", wall1, count=tenants),
                              f"speed-up ×{wall1 / wall2:.2f} on {os.cpu_count()} cores"))
        per_session_cpu = cpu2 / tenants
        report.facts.update({
            "tenants": tenants, "scale": scale, "cores": os.cpu_count(),
            "speed_up_2_workers": round(wall1 / wall2, 2),
            "sessions_per_cpu_second_1_worker": round(tenants / cpu1, 3),
            "sessions_per_cpu_second_2_workers": round(tenants / cpu2, 3),
            "cpu_seconds_per_session": round(per_session_cpu, 2),
            "wall_seconds_per_session_per_worker": round(wall1 / tenants, 2),
        })
        daily = sum(share * sessions_per_day(PLANS[plan]) for plan, share in PLAN_MIX.items())
        report.facts["sessions_per_tenant_per_day (plan mix 60/30/10)"] = round(daily, 2)
        for fleet in (10_000, 100_000):
            cpu_day = fleet * daily * per_session_cpu
            # the midnight tick asks every tenant at once; it must end before the 02:00 full tick
            peak_workers = fleet * (wall1 / tenants) / 7200
            report.facts[f"{fleet} tenants: daily CPU hours"] = round(cpu_day / 3600, 1)
            report.facts[f"{fleet} tenants: workers (cores) for the daily CPU at 50 % load"] = round(cpu_day / 86400 / 0.5, 1)
            report.facts[f"{fleet} tenants: workers to finish a fleet-wide tick in 2 h"] = round(peak_workers, 1)
        for fleet in (10_000, 100_000):
            print(f"tick times at {fleet} tenants", flush=True)
            for name, value in tick_times(settings, fleet).items():
                report.facts[f"{fleet} tenants: {name}"] = round(value, 2) if isinstance(value, float) else value
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda tid: purge_tenant(settings, tid), ids))
        pg.drop_database(settings.pg_dsn, dagster_db)
        world.close()
    return report.write()
