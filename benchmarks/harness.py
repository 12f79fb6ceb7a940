"""Benchmark plumbing: an isolated world (own main database, repositories, moto S3), timed
commands, and results written as ratios against named baselines measured in the same run."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench-results"


@dataclass
class Measurement:
    name: str
    seconds: float
    bytes: int | None = None
    count: int | None = None  # items processed (keys, objects, messages)


@dataclass
class Comparison:
    title: str
    ours: Measurement
    baseline: Measurement
    note: str = ""

    def row(self) -> dict:
        doc = {
            "comparison": self.title, "ours": self.ours.name, "baseline": self.baseline.name,
            "time_ratio": round(self.ours.seconds / self.baseline.seconds, 3) if self.baseline.seconds else None,
            "ours_seconds": round(self.ours.seconds, 2), "baseline_seconds": round(self.baseline.seconds, 2),
            "note": self.note,
        }
        if self.ours.bytes is not None and self.baseline.bytes:
            doc["bytes_ratio"] = round(self.ours.bytes / self.baseline.bytes, 4)
            doc["ours_bytes"], doc["baseline_bytes"] = self.ours.bytes, self.baseline.bytes
        if self.ours.count and self.baseline.count:
            doc["ours_per_second"] = round(self.ours.count / self.ours.seconds, 1)
            doc["baseline_per_second"] = round(self.baseline.count / self.baseline.seconds, 1)
        return doc


@dataclass
class Report:
    section: str
    comparisons: list[Comparison] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def add(self, comparison: Comparison) -> None:
        self.comparisons.append(comparison)
        row = comparison.row()
        extra = f", bytes ×{row['bytes_ratio']}" if "bytes_ratio" in row else ""
        print(f"  {comparison.title}: time ×{row['time_ratio']}{extra}", flush=True)

    def write(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        rows = [c.row() for c in self.comparisons]
        (RESULTS / f"{self.section}.json").write_text(json.dumps({"facts": self.facts, "results": rows}, indent=2))
        columns = ["comparison", "ours", "baseline", "time_ratio", "ours_seconds", "baseline_seconds",
                   "bytes_ratio", "ours_per_second", "baseline_per_second"]
        table = tabulate([[str(r.get(c, "")).replace("|", "\\|") for c in columns] for r in rows],
                         headers=["comparison", "ours", "baseline", "time ratio", "ours s", "baseline s", "bytes ratio", "ours/s",
                                  "baseline/s"], tablefmt="github", disable_numparse=True)
        lines = [f"# {self.section}", "", *(f"- {k}: {v}" for k, v in self.facts.items()), "", table]
        path = RESULTS / f"{self.section}.md"
        path.write_text("\n".join(lines) + "\n")
        return path


def timed(name: str, fn, *, count: int | None = None) -> tuple[Measurement, object]:
    start = time.perf_counter()
    value = fn()
    return Measurement(name, time.perf_counter() - start, count=count), value


def timed_count(name: str, fn) -> Measurement:
    """Time `fn`, whose return value is the number of items it processed."""
    measurement, count = timed(name, fn)
    measurement.count = count
    return measurement


def sh(cmd: str, env: dict | None = None) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL)


def cli(*args: str) -> str:
    out = subprocess.run([str(BIN / "kryonix-backup"), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kryonix-backup {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def create_repository(tenant_id: str) -> float:
    """Create the tenant's repository ahead of its first session and return the seconds it took:
    the by-hand baselines run `restic init` before their clocks start, so both sides time the
    first backup into an initialised, empty repository (creation happens once per tenant; the
    figure is reported as a fact)."""
    from kryonix_dagster.engine.config import load_settings
    from kryonix_dagster.engine.tenant_repository import open_repository

    start = time.perf_counter()
    open_repository(load_settings(), tenant_id, create=True)
    return round(time.perf_counter() - start, 2)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class World:
    """KRYONIX_* pointing at a private main database, repositories and a moto S3."""

    def __init__(self, name: str):
        self.base = ROOT / ".kryonix" / "bench" / name
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        port = free_port()
        self.s3 = f"http://127.0.0.1:{port}"
        self.moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(60):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.25)
        os.environ.update({
            "KRYONIX_MAIN_DB": f"kryonix_bench_{name}",
            "KRYONIX_S3_ENDPOINT": self.s3, "KRYONIX_S3_ACCESS_KEY": "bench", "KRYONIX_S3_SECRET_KEY": "bench-secret",
            "KRYONIX_REPO": f"file://{self.base / 'repos'}",
            "KRYONIX_MASTER_KEY_FILE": str(self.base / "master.key"),
            "KRYONIX_APP_DATA_DIR": str(self.base / "appdata"),
            "KRYONIX_STATE_DIR": str(self.base / "state"),
        })
        os.environ.pop("DAGSTER_HOME", None)
        from kryonix_dagster.engine import pg
        from kryonix_dagster.engine.config import load_settings

        pg.drop_database(load_settings().pg_dsn, os.environ["KRYONIX_MAIN_DB"])  # the bench's own registry

    def repo_dir(self, tenant_id: str) -> Path:
        return self.base / "repos" / f"cliente_{tenant_id}"

    def close(self) -> None:
        self.moto.terminate()
        self.moto.wait(timeout=10)
