"""Where PITR keeps its config, repository and work folder: pgBackRest's own conventions as
root (so a clone in a root user's 0700 home works), the user's folders otherwise, an explicit
KRYONIX_PITR_WORK_DIR always; and a folder the cluster's owner cannot reach is refused."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from kryonix_dagster.engine.config import Settings
from kryonix_dagster.engine.errors import BadInput
from kryonix_dagster.engine.pitr import config as pitr_config
from kryonix_dagster.engine.pitr.config import load_pitr_config


def test_as_root_the_defaults_are_pgbackrests_own(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    cfg = load_pitr_config(Settings(), environ={})
    assert cfg.repo.kind == "posix" and cfg.repo.path == "/var/lib/pgbackrest"
    assert cfg.config_path == Path("/etc/pgbackrest/conf.d/pgbackrest-kryonix.conf")
    assert cfg.work_dir == Path("/var/lib/kryonix/pitr")
    assert cfg.scratch_root == Path("/var/lib/kryonix/pitr/scratch")


def test_not_root_the_defaults_are_the_users_own(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    cfg = load_pitr_config(Settings(state_dir=tmp_path / "state"), environ={})
    assert cfg.repo.path == str(tmp_path / "data" / "kryonix" / "pgbackrest")
    assert cfg.config_path == tmp_path / "state" / "pitr" / "pgbackrest-kryonix.conf"


def test_an_explicit_work_folder_holds_the_config_file(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    env = {"KRYONIX_PITR_WORK_DIR": str(tmp_path / "w"), "KRYONIX_PITR_REPO": "s3:https://h:9/b/p",
           "KRYONIX_PITR_STANZA": "st-1", "KRYONIX_PITR_REPO_ACCESS_KEY": "pitr-ak",
           "KRYONIX_PITR_REPO_SECRET_KEY": "pitr-sk-secret"}
    cfg = load_pitr_config(Settings(repo_access_key="restic-ak", repo_secret_key="restic-sk"), environ=env)
    assert cfg.config_path == tmp_path / "w" / "pgbackrest-st-1.conf"
    assert (cfg.repo.kind, cfg.repo.bucket, cfg.repo.path) == ("s3", "b", "/p")
    assert pitr_config.SYSTEM_CONFIG_DIR not in cfg.config_path.parents
    assert (cfg.access_key, cfg.secret_key) == ("pitr-ak", "pitr-sk-secret")  # pgBackRest's own, not restic's
    assert "pitr-sk-secret" not in repr(cfg)


def test_an_s3_pitr_repository_without_its_own_credentials_is_refused():
    env = {"KRYONIX_PITR_REPO": "s3:https://h:9/b/p", "KRYONIX_PITR_REPO_ACCESS_KEY": "pitr-ak"}
    with pytest.raises(BadInput, match="KRYONIX_PITR_REPO_SECRET_KEY"):
        load_pitr_config(Settings(repo_access_key="restic-ak", repo_secret_key="restic-sk"), environ=env)


def test_a_work_folder_the_owner_cannot_reach_is_refused_before_archiving_changes(cli, psql, test_env):
    before = psql("postgres", "SHOW archive_command") + "|" + psql("postgres", "SHOW archive_mode")
    private = Path(tempfile.mkdtemp(prefix="kryonix-private-"))  # root's, 0700: postgres cannot enter
    try:
        result = cli("pitr", "setup", env={"KRYONIX_PITR_WORK_DIR": str(private / "pitr"),
                                            "KRYONIX_PITR_REPO": str(private / "repo")})
        assert result.returncode == 1, result.stderr
        assert f"cannot read {private / 'pitr'}" in result.stderr
        assert "KRYONIX_PITR_WORK_DIR" in result.stderr
        assert psql("postgres", "SHOW archive_command") + "|" + psql("postgres", "SHOW archive_mode") == before
    finally:
        shutil.rmtree(private, ignore_errors=True)
