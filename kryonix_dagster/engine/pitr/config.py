"""PITR settings from the environment, and the repository passphrase in the key vault."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import keys, pg
from ..config import Settings, _data_home
from ..errors import BadInput, OperationFailed
from ..pgbackrest import RepoLocation

STANZA_DEFAULT = "kryonix"
# pgBackRest's own conventions (its Debian package makes /var/lib/pgbackrest for the cluster's
# owner), used when the product runs as root: a root user's home is 0700, and archive_command,
# which runs as the cluster's owner, must read the config file and write the repository.
SYSTEM_REPO = Path("/var/lib/pgbackrest")
SYSTEM_CONFIG_DIR = Path("/etc/pgbackrest/conf.d")
SYSTEM_WORK_DIR = Path("/var/lib/kryonix/pitr")


@dataclass(frozen=True)
class PitrConfig:
    stanza: str
    repo: RepoLocation
    work_dir: Path  # pgBackRest's lock/log folders, scratch clusters; the cluster owner's
    config_dir: Path | None = None  # where the config file lives; the work folder when None
    # an S3 repository's credentials: pgBackRest's own, never the restic repositories' (a cluster
    # superuser can read the config file through COPY … PROGRAM)
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return (self.config_dir or self.work_dir) / f"pgbackrest-{self.stanza}.conf"

    @property
    def scratch_root(self) -> Path:
        return self.work_dir / "scratch"


def load_pitr_config(settings: Settings, environ: dict[str, str] | None = None) -> PitrConfig:
    env = os.environ if environ is None else environ
    stanza = env.get("KRYONIX_PITR_STANZA") or STANZA_DEFAULT
    if not stanza.replace("-", "").replace("_", "").isalnum() or len(stanza) > 64:
        raise BadInput(f"invalid KRYONIX_PITR_STANZA {stanza!r}: letters, digits, - and _ only")
    system = os.geteuid() == 0
    raw_repo = env.get("KRYONIX_PITR_REPO") or str(SYSTEM_REPO if system else _data_home() / "pgbackrest")
    try:
        repo = RepoLocation.parse(raw_repo)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    credentials = {"access_key": env.get("KRYONIX_PITR_REPO_ACCESS_KEY") or None,
                   "secret_key": env.get("KRYONIX_PITR_REPO_SECRET_KEY") or None}
    if repo.kind == "s3" and not all(credentials.values()):
        raise BadInput("KRYONIX_PITR_REPO is an S3 bucket: set KRYONIX_PITR_REPO_ACCESS_KEY and "
                       "KRYONIX_PITR_REPO_SECRET_KEY (pgBackRest's own credentials, never the restic repositories')")
    work = env.get("KRYONIX_PITR_WORK_DIR")
    if work:  # an explicit work folder holds the config file too, as it always has
        return PitrConfig(stanza, repo, Path(work).expanduser(), **credentials)
    if system:
        return PitrConfig(stanza, repo, SYSTEM_WORK_DIR, SYSTEM_CONFIG_DIR, **credentials)
    return PitrConfig(stanza, repo, Path(settings.state_dir) / "pitr", **credentials)


def _aad(stanza: str) -> bytes:
    return f"pitr:{stanza}".encode()


def repository_passphrase(settings: Settings, stanza: str, create: bool = False) -> str | None:
    """The pgBackRest repository's cipher passphrase: random, generated once, stored wrapped by
    the master key (AES-GCM, the stanza as associated data) in tenants.pitr_keys; created under
    the vault's lock with the key new secrets get (keys.writing). `pitr setup` creates it only
    while the repository has no stanza, and stashes it (passphrase_stash.py)."""
    keys.master_key(settings)
    query = "SELECT nonce, wrapped_password, master_key_id FROM tenants.pitr_keys WHERE stanza = %s"
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(query, (stanza,))
        row = cur.fetchone()
    if row is None and create:
        with keys.writing(settings) as (cur, key):
            nonce = secrets.token_bytes(12)
            wrapped = AESGCM(key).encrypt(nonce, secrets.token_urlsafe(48).encode(), _aad(stanza))
            cur.execute("INSERT INTO tenants.pitr_keys (stanza, master_key_id, nonce, wrapped_password) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT (stanza) DO NOTHING",
                        (stanza, keys.fingerprint(key), nonce, wrapped))
            cur.execute(query, (stanza,))
            row = cur.fetchone()
    if row is None:
        return None
    nonce, wrapped, wrapped_by = row
    return _unwrap(settings, stanza, bytes(nonce), bytes(wrapped), wrapped_by)


def _unwrap(settings: Settings, stanza: str, nonce: bytes, wrapped: bytes, wrapped_by: str) -> str:
    """With whichever known master key wrapped it (the pending one too, mid-rotation)."""
    key = keys.known_master_keys(settings).get(wrapped_by)
    if key is None:
        raise OperationFailed(f"PITR stanza {stanza}: its repository passphrase is wrapped by master key {wrapped_by}, "
                              f"but KRYONIX_MASTER_KEY_FILE holds {keys.fingerprint(keys.master_key(settings))}")
    try:
        return AESGCM(key).decrypt(nonce, wrapped, _aad(stanza)).decode()
    except InvalidTag:
        raise OperationFailed(f"PITR stanza {stanza}: the wrapped repository passphrase failed authentication") from None


def rewrap_passphrases(settings: Settings, new_key: bytes) -> list[str]:
    """Every stanza's passphrase re-wrapped under `new_key` (keys rotate-master), each row in its
    own transaction; rows already wrapped by it are left alone, so a resumed rotation finishes."""
    new_id = keys.fingerprint(new_key)
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT stanza, nonce, wrapped_password, master_key_id FROM tenants.pitr_keys "
                    "WHERE master_key_id <> %s ORDER BY stanza", (new_id,))
        rows = cur.fetchall()
    done = []
    for stanza, nonce, wrapped, wrapped_by in rows:
        passphrase = _unwrap(settings, stanza, bytes(nonce), bytes(wrapped), wrapped_by)
        fresh = secrets.token_bytes(12)
        sealed = AESGCM(new_key).encrypt(fresh, passphrase.encode(), _aad(stanza))
        with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
            cur.execute("UPDATE tenants.pitr_keys SET master_key_id = %s, nonce = %s, wrapped_password = %s "
                        "WHERE stanza = %s", (new_id, fresh, sealed, stanza))
        done.append(stanza)
    return done
