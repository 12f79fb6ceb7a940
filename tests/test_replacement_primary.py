"""A replacement primary (the old one lost, runbook section 2) takes the off-site copy's chunker
parameters, so the next `copy` of unchanged data deduplicates instead of storing it twice."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine import keys
from kryonix_dagster.engine.naming import names_for, repository_in
from kryonix_dagster.engine.repository import restic_location

BIG_FILE_MIB = 6  # well above restic's 512 KiB minimum chunk: its cut points depend on the polynomial


def folder_bytes(root: Path) -> int:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, f"{root} holds no files"
    return sum(p.stat().st_size for p in files)


def chunker_polynomial(location: str, password: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
    env.update(RESTIC_REPOSITORY=location, RESTIC_PASSWORD=password)
    proc = subprocess.run(["restic", "--no-cache", "--no-lock", "cat", "config"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["chunker_polynomial"]


@pytest.mark.slow(40)
def test_a_replacement_primary_keeps_the_copy_deduplicating(settings, tenant_factory, cli, tmp_path):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    names = names_for(settings, tid)
    (names.app_data_dir / "media").mkdir(parents=True, exist_ok=True)
    (names.app_data_dir / "media" / "video.bin").write_bytes(os.urandom(BIG_FILE_MIB << 20))
    env = {"KRYONIX_REPO_SECONDARY": f"file://{tmp_path / 'offsite'}", "KRYONIX_REPO_SECONDARY_ADMIN": ""}
    primary = Path(restic_location(names.repository))
    copy = Path(restic_location(repository_in(env["KRYONIX_REPO_SECONDARY"], tid)))

    first = cli("backup", tid, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    copied = cli("copy", tid, env=env)
    assert copied.returncode == 0, copied.stderr[-2000:]
    first_copy = folder_bytes(copy)
    assert first_copy > BIG_FILE_MIB << 20  # the big file is in the copy

    shutil.rmtree(primary)  # the primary storage is lost
    again = cli("backup", tid, env=env)  # a new primary, same data
    assert again.returncode == 0, again.stderr[-2000:]
    assert (primary / "config").is_file()
    copied = cli("copy", tid, "--json", env=env)
    assert copied.returncode == 0, copied.stderr[-2000:]
    assert len(json.loads(copied.stdout)["copies"][0]["copied_sessions"]) == 1, copied.stdout

    grown = folder_bytes(copy) - first_copy
    assert grown < 0.3 * first_copy, (grown, first_copy)  # a second full copy would nearly double it
    password = keys.repository_password(settings, tid)
    assert chunker_polynomial(str(primary), password) == chunker_polynomial(str(copy), password)
