"""A primary repository that is gone (deleted folder) gives one line saying what is missing and
what to run (`--from secondary`, the runbook section), never restic's own text."""
from __future__ import annotations

import shutil
from pathlib import Path

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.naming import names_for


def test_a_deleted_primary_repository_names_the_way_back(settings, tenant_factory, cli):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    assert cli("backup", tid).returncode == 0
    repository = Path(names_for(settings, tid).repository.removeprefix("file://"))
    assert (repository / "config").is_file()
    shutil.rmtree(repository)
    for args in (("snapshots", tid), ("verify", tid), ("restore", tid, "--yes")):  # `restic ID --` stays raw
        result = cli(*args)
        assert result.returncode == 1, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (args, result.stderr)
        assert f"tenant {tid}: its repository is missing at" in lines[0], args
        assert f"`kryonix-backup restore {tid} --from secondary`" in lines[0] and "runbook" in lines[0], args
        assert "Fatal" not in result.stderr and "Is there a repository" not in result.stderr, args
