"""Cheap restic key files: written in restic's format, read by the stock binary, and existing
repositories migrated on open without ever losing access."""
from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from kryonix_dagster.engine import keys, restic_key
from kryonix_dagster.engine.errors import OperationFailed
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.tenant_repository import open_repository

from . import observe

MASTER = json.dumps({"mac": {"k": "evFWd9wWlndL9jc501268g==", "r": "E9eEDnSJZgqwTOkDtOp+Dw=="},
                     "encrypt": "UQCqa0lKZ94PygPxMRqkePTZnHRYh1k1pX2k2lM2v3Q="}).encode()


# -- the format, without restic ---------------------------------------------------------------

def test_key_file_round_trip_and_name():
    key_file = restic_key.new_key_file(MASTER, "secret")
    doc = json.loads(key_file.raw)
    assert (doc["kdf"], doc["N"], doc["r"], doc["p"]) == ("scrypt", 1024, 8, 1)
    assert key_file.name == restic_key.key_id(key_file.raw) and len(key_file.name) == 64
    assert key_file.is_cheap
    assert restic_key.open_master_key(restic_key.parse_key_file(key_file.raw), "secret") == MASTER


def test_flipped_byte_in_data_fails_mac():
    key_file = restic_key.new_key_file(MASTER, "secret")
    doc = json.loads(key_file.raw)
    data = bytearray(base64.b64decode(doc["data"]))
    data[20] ^= 0x01  # inside the ciphertext
    doc["data"] = base64.b64encode(bytes(data)).decode()
    tampered = restic_key.parse_key_file(json.dumps(doc).encode())
    with pytest.raises(restic_key.WrongPassword):
        restic_key.open_master_key(tampered, "secret")


def test_wrong_password_fails_mac():
    key_file = restic_key.new_key_file(MASTER, "secret")
    with pytest.raises(restic_key.WrongPassword):
        restic_key.open_master_key(key_file, "Secret")


def test_malformed_key_file_is_refused():
    with pytest.raises(restic_key.KeyFileError):
        restic_key.parse_key_file(b'{"kdf": "argon2", "N": 1}')
    with pytest.raises(restic_key.KeyFileError):
        restic_key.parse_key_file(b"not json")


# -- with the stock restic binary ---------------------------------------------------------------

def restic(location: str, password: str, *args: str, stdin: bytes | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """restic run by hand, without our wrapper and without a key hint."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}, **(env or {})}
    env.update(RESTIC_REPOSITORY=location, RESTIC_PASSWORD=password, RESTIC_CACHE_DIR="/tmp/kryonix-test-restic-cache")
    return subprocess.run(["restic", *args], input=stdin, capture_output=True, env=env)


def local_repo(settings, tid: str) -> Path:
    return Path(names_for(settings, tid).repository.removeprefix("file://"))


def key_docs(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_bytes()) for p in (folder / "keys").iterdir()}


def old_style_repository(settings, tid: str, content: bytes) -> tuple[Path, str]:
    """A repository as the code before this change made it: plain `restic init`."""
    password = keys.repository_password(settings, tid, create=True)
    root = local_repo(settings, tid)
    root.parent.mkdir(parents=True, exist_ok=True)
    assert restic(str(root), password, "init", "--repository-version", "2").returncode == 0
    backup = restic(str(root), password, "backup", "--stdin", "--stdin-filename", "old.bin", stdin=content)
    assert backup.returncode == 0, backup.stderr
    return root, password


def test_new_repository_gets_one_cheap_key(settings, tenant_factory):
    tid = tenant_factory()
    repo = open_repository(settings, tid, create=True)
    root = local_repo(settings, tid)
    docs = key_docs(root)
    assert len(docs) == 1
    (name, doc), = docs.items()
    assert (doc["N"], doc["r"], doc["p"]) == (1024, 8, 1)
    assert repo.key_hint == name
    password = keys.repository_password(settings, tid)
    listed = json.loads(restic(str(root), password, "key", "list", "--json").stdout)
    assert [k["id"] for k in listed] == [name[:8]] and listed[0]["current"]

    payload = secrets.token_bytes(300_000)
    snap = repo.backup_bytes(payload, "blob.bin", tags=["kind=test"])
    dumped = restic(str(root), password, "dump", snap.snapshot_id, "/blob.bin")
    assert dumped.returncode == 0 and dumped.stdout == payload
    check = restic(str(root), password, "check", "--read-data")
    assert check.returncode == 0, check.stdout + check.stderr


def test_old_repository_is_migrated_on_open_and_keeps_its_snapshots(settings, tenant_factory):
    tid = tenant_factory()
    content = secrets.token_bytes(100_000)
    root, password = old_style_repository(settings, tid, content)
    (old_name, old_doc), = key_docs(root).items()
    assert old_doc["N"] * old_doc["r"] * old_doc["p"] > 1024 * 8  # restic's calibration

    repo = open_repository(settings, tid)
    docs = key_docs(root)
    assert old_name not in docs and len(docs) == 1
    (name, doc), = docs.items()
    assert (doc["N"], doc["r"], doc["p"]) == (1024, 8, 1) and repo.key_hint == name
    snapshots = json.loads(restic(str(root), password, "snapshots", "--json").stdout)
    assert len(snapshots) == 1
    assert restic(str(root), password, "dump", "latest", "/old.bin").stdout == content
    assert [s.id for s in repo.snapshots()] == [snapshots[0]["id"]]
    check = restic(str(root), password, "check", "--read-data")
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_key_of_another_password_is_kept(settings, tenant_factory, tmp_path):
    """Only keys proven replaceable go: an operator's own key stays and still opens."""
    tid = tenant_factory()
    root, password = old_style_repository(settings, tid, b"data")
    (tmp_path / "new").write_text("operator passphrase")
    added = restic(str(root), password, "key", "add", "--new-password-file", str(tmp_path / "new"))
    assert added.returncode == 0, added.stderr
    operator_keys = set(key_docs(root))

    open_repository(settings, tid)
    after = key_docs(root)
    assert len(after) == 2
    kept, = set(after) & operator_keys
    assert (after[kept]["N"], after[kept]["p"]) != (1024, 1)
    assert restic(str(root), "operator passphrase", "cat", "config").returncode == 0
    assert restic(str(root), password, "cat", "config").returncode == 0


def test_wrong_password_still_fails_and_leaves_the_keys_alone(settings, tenant_factory):
    tid = tenant_factory()
    keys.repository_password(settings, tid, create=True)
    root = local_repo(settings, tid)
    root.parent.mkdir(parents=True, exist_ok=True)
    assert restic(str(root), "not the vault's password", "init").returncode == 0
    before = key_docs(root)

    repo = open_repository(settings, tid)
    assert key_docs(root) == before and repo.key_hint is None
    with pytest.raises(OperationFailed, match="wrong password"):
        repo.snapshots()


def test_wrong_password_fails_on_a_migrated_repository(settings, tenant_factory):
    tid = tenant_factory()
    open_repository(settings, tid, create=True)
    refused = restic(str(local_repo(settings, tid)), "guess", "snapshots")
    assert refused.returncode != 0 and b"wrong password" in refused.stderr


def test_later_opens_run_no_restic(settings, tenant_factory, tmp_path, monkeypatch):
    """Once migrated, opening costs no restic process: restic is not even on PATH here."""
    tid = tenant_factory()
    first = open_repository(settings, tid, create=True)
    monkeypatch.setenv("PATH", str(tmp_path))
    again = open_repository(settings, tid)
    assert again.key_hint == first.key_hint


def test_s3_repository_is_migrated(settings, tenant_factory, moto_endpoint):
    tid = tenant_factory()
    bucket = f"kdf-{tid.lower()}"
    s3 = observe.s3(moto_endpoint, "repo-access", "repo-secret-key")
    s3.create_bucket(Bucket=bucket)
    s3_settings = settings.with_overrides(repo=f"s3:{moto_endpoint}/{bucket}/fleet", repo_access_key="repo-access",
                                          repo_secret_key="repo-secret-key")
    location = names_for(s3_settings, tid).repository
    password = keys.repository_password(settings, tid, create=True)
    creds = {"AWS_ACCESS_KEY_ID": "repo-access", "AWS_SECRET_ACCESS_KEY": "repo-secret-key"}
    assert restic(location, password, "init", env=creds).returncode == 0
    assert restic(location, password, "backup", "--stdin", "--stdin-filename", "x", stdin=b"s3 data",
                  env=creds).returncode == 0
    repo = open_repository(s3_settings, tid)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"fleet/cliente_{tid}/keys/")["Contents"]
    assert [o["Key"].rsplit("/", 1)[1] for o in listed] == [repo.key_hint]
    doc = json.loads(s3.get_object(Bucket=bucket, Key=listed[0]["Key"])["Body"].read())
    assert (doc["N"], doc["r"], doc["p"]) == (1024, 8, 1)
    assert restic(location, password, "dump", "latest", "/x", env=creds).stdout == b"s3 data"
    assert open_repository(s3_settings, tid).key_hint == repo.key_hint
