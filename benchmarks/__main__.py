"""`make bench`: python -m benchmarks [section ...]"""
import os
import sys

from . import bench_postgres

SECTIONS = {
    "postgres": lambda: bench_postgres.run(float(os.environ.get("BENCH_PG_SCALE", "55"))),
}

if __name__ == "__main__":
    wanted = sys.argv[1:] or list(SECTIONS)
    for name in wanted:
        print(f"== {name}", flush=True)
        path = SECTIONS[name]()
        print(path.read_text())
