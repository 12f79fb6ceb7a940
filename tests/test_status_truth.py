"""`status` tells the truth in broken states (issue 21 item 7): POINTS is what the repository
holds (judged by restic itself), OFFSITE_H says "none" when nothing is off-site (judged by the
copy's folder), a deleted repository shows MISSING and the command exits 1."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.naming import names_for, repository_in

from . import observe
from .repository_view import sessions


def _row(report: dict, tid: str) -> dict:
    [row] = [t for t in report["tenants"] if t["id"] == tid]
    return row


def test_status_columns_come_from_the_repository_and_the_copy(own_registry, cli, tenant_factory, tmp_path):
    # a main database and a repository root of the test's own: `status` lists this tenant alone
    # (its exit code judges the whole fleet) and `keys recover` reads only this tenant's stash
    settings = own_registry.with_overrides(repo=f"file://{tmp_path / 'repos'}")
    run = cli

    def cli(*args, env=None):
        return run(*args, env={"KRYONIX_REPO": settings.repo, "KRYONIX_MAIN_DB": settings.main_db, **(env or {})})

    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    assert cli("backup", tid).returncode == 0
    assert cli("backup", tid).returncode == 0
    # the tenant's rows of a lost main database: key, statistics and audit rows; `keys recover`
    # brings the key back and reads the repository, so status is not "STALE, 0 B" for it
    for table in ("backup_keys", "repository_stats", "backup_audit"):
        observe.psql(settings.main_db, f"DELETE FROM tenants.{table} WHERE cliente_id = '{tid}'")
    recovered = cli("keys", "recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    assert [(t["tenant_id"], t["filled"]) for t in json.loads(recovered.stdout)["recovered"]] == [(tid, ["key"])]
    two = sorted(s for s, kinds in sessions(settings, tid).items() if kinds["manifest"])
    assert len(two) == 2
    row = _row(json.loads(cli("status", "--json").stdout), tid)
    assert row["restore_points"] == 2 and row["last_session"] == two[-1] and not row["stale"]
    assert row["repo_bytes"] and row["repository"] == "present"
    # a session with no statistics row (e.g. the first after a release that had none) counts from the repository
    observe.psql(settings.main_db, f"DELETE FROM tenants.repository_stats WHERE cliente_id = '{tid}'")
    assert cli("backup", tid).returncode == 0
    points = [s for s, kinds in sessions(settings, tid).items() if kinds["manifest"]]
    assert len(points) == 3  # restic itself lists three restore points

    copy_root = tmp_path / "offsite"  # a configured copy that holds nothing of this tenant
    copy_root.mkdir()
    offsite_env = {"KRYONIX_REPO_SECONDARY": f"file://{copy_root}"}
    result = cli("status", "--json", env=offsite_env)
    assert result.returncode == 0, result.stderr
    row = _row(json.loads(result.stdout), tid)
    assert row["restore_points"] == 3 and row["repository"] == "present"
    assert row["last_session"] == max(points)  # the repository's newest restore point
    assert row["offsite"]["copy"] == "none" and row["offsite"]["secondary_latest"] is None
    assert not Path(repository_in(f"file://{copy_root}", tid).removeprefix("file://")).exists()
    table = cli("status", env=offsite_env)
    assert table.returncode == 0, table.stderr
    [line] = [line for line in table.stdout.splitlines() if line.startswith(tid + " ")]
    assert line.split()[-1] == "none" and " 3 " in line
    # the copy's row says copied, its storage holds nothing: the copy is missing, not current
    observe.psql(settings.main_db, "INSERT INTO tenants.offsite_copies (cliente_id, latest_session, restore_points) "
                          f"VALUES ('{tid}', '{max(points)}', 3)")
    row = _row(json.loads(cli("status", "--json", env=offsite_env).stdout), tid)
    assert row["offsite"]["copy"] == "missing" and not row["offsite"]["ok"]
    [line] = [line for line in cli("status", env=offsite_env).stdout.splitlines() if line.startswith(tid + " ")]
    assert line.split()[-2:] == ["MISSING", "LAGGING"]

    repository = Path(names_for(settings, tid).repository.removeprefix("file://"))
    assert (repository / "config").is_file()
    shutil.rmtree(repository)
    gone = cli("status", "--json")
    assert gone.returncode == 1, gone.stderr
    report = json.loads(gone.stdout)
    row = _row(report, tid)
    assert row["repository"] == "missing" and row["restore_points"] is None and row["repo_bytes"] is None
    assert row["last_check_ok"] is None and row["stale"] and tid in report["missing_repositories"]
    assert f"primary repository is missing: {tid}" in gone.stderr or f", {tid}" in gone.stderr
    table = cli("status")
    assert table.returncode == 1
    [line] = [line for line in table.stdout.splitlines() if line.startswith(tid + " ")]
    assert line.count("MISSING") == 3 and "STALE" in line


def test_repository_states_on_s3_list_the_repositories_folders(settings, moto_endpoint):
    """The S3 form of the existence look: one listing of the root's folders (moto, boto3 to set it up)."""
    import secrets

    import boto3

    from kryonix_dagster.engine.repository_stats import repository_states

    bucket = f"status-{secrets.token_hex(4)}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing-access", aws_secret_access_key="testing-secret-s3")
    s3.create_bucket(Bucket=bucket)
    here, gone = f"t{secrets.token_hex(4)}", f"t{secrets.token_hex(4)}"
    for name in ("config", "keys/0123"):
        s3.put_object(Bucket=bucket, Key=f"root/cliente_{here}/{name}", Body=b"x")
    on_s3 = settings.with_overrides(repo=f"s3:{moto_endpoint}/{bucket}/root", repo_access_key="testing-access",
                                    repo_secret_key="testing-secret-s3")
    assert repository_states(on_s3, [here, gone]) == {here: "present", gone: "missing"}
    unreachable = on_s3.with_overrides(repo=f"s3:{moto_endpoint}/no-such-bucket-{secrets.token_hex(3)}/root")
    assert repository_states(unreachable, [here]) == {here: "unknown"}
