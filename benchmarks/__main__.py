"""`make bench`: python -m benchmarks [section ...]"""
import os
import sys

from . import bench_fleet, bench_pitr, bench_postgres, bench_small, bench_tiers

SECTIONS = {
    "small": lambda: bench_small.run(float(os.environ.get("BENCH_SMALL_SCALE", "1"))),
    "postgres": lambda: bench_postgres.run(float(os.environ.get("BENCH_PG_SCALE", "80"))),
    "pitr": lambda: bench_pitr.run(float(os.environ.get("BENCH_PITR_SCALE", "80")),
                                   int(os.environ.get("BENCH_PITR_PGBENCH_SECONDS", "30"))),
    "tiers": lambda: bench_tiers.run(
        objects=int(os.environ.get("BENCH_OBJECTS", "400")),
        object_size=int(os.environ.get("BENCH_OBJECT_SIZE", str(256 * 1024))),
        keys=int(os.environ.get("BENCH_KEYS", "200000")),
        messages=int(os.environ.get("BENCH_MESSAGES", "20000")),
    ),
    "fleet": lambda: bench_fleet.run(int(os.environ.get("BENCH_FLEET_TENANTS", "50"))),
}

if __name__ == "__main__":
    wanted = sys.argv[1:] or list(SECTIONS)
    for name in wanted:
        print(f"== {name}", flush=True)
        environment = dict(os.environ)  # a section points KRYONIX_* at its own world (pitr: its own cluster)
        try:
            path = SECTIONS[name]()
        finally:
            os.environ.clear()
            os.environ.update(environment)
        print(path.read_text())
