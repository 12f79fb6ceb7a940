"""Configuration from the environment, with defaults that match a local machine (DESIGN.md)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "kryonix"


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kryonix"


@dataclass(frozen=True)
class Settings:
    """Everything the engine needs to reach the services and the backup repositories.

    Secret fields are excluded from repr so a logged Settings never shows them.
    """

    pg_dsn: str = field(default="postgresql://postgres@127.0.0.1:5432/postgres", repr=False)
    main_db: str = "kryonix_main"
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    amqp_url: str = field(default="amqp://guest:guest@127.0.0.1:5672/", repr=False)
    rabbitmq_api: str = "http://127.0.0.1:15672"
    rabbitmq_api_user: str = "guest"
    rabbitmq_api_password: str = field(default="guest", repr=False)
    s3_endpoint: str | None = None
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)
    s3_region: str = "us-east-1"
    repo: str = field(default_factory=lambda: f"file://{_data_home() / 'repos'}")
    repo_access_key: str | None = field(default=None, repr=False)
    repo_secret_key: str | None = field(default=None, repr=False)
    # The off-site copy (engine/offsite.py): where workers write (an append-only endpoint), and the
    # admin path to the same storage (retention, key rotation) that workers are not given.
    repo_secondary: str | None = None
    repo_secondary_access_key: str | None = field(default=None, repr=False)
    repo_secondary_secret_key: str | None = field(default=None, repr=False)
    repo_secondary_admin: str | None = field(default=None, repr=False)
    repo_secondary_admin_access_key: str | None = field(default=None, repr=False)
    repo_secondary_admin_secret_key: str | None = field(default=None, repr=False)
    master_key_file: Path = field(default_factory=lambda: _config_home() / "master.key")
    app_data_dir: Path = field(default_factory=lambda: _data_home() / "appdata")
    state_dir: Path = field(default_factory=lambda: _data_home() / "state")
    lease_ttl_seconds: int = 120

    def with_overrides(self, **changes: object) -> "Settings":
        return replace(self, **changes)


def api_credentials(amqp_url: str) -> tuple[str, str]:
    parsed = urlparse(amqp_url)
    return parsed.username or "guest", parsed.password or "guest"


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read KRYONIX_* variables; unset ones keep the local defaults."""
    env = os.environ if environ is None else environ
    defaults = Settings()

    def get(name: str, default):
        value = env.get(name)
        return value if value not in (None, "") else default

    amqp_url = get("KRYONIX_AMQP_URL", defaults.amqp_url)
    api_user, api_password = api_credentials(amqp_url)
    return Settings(
        pg_dsn=get("KRYONIX_PG_DSN", defaults.pg_dsn),
        main_db=get("KRYONIX_MAIN_DB", defaults.main_db),
        redis_url=get("KRYONIX_REDIS_URL", defaults.redis_url),
        amqp_url=amqp_url,
        rabbitmq_api=get("KRYONIX_RABBITMQ_API", defaults.rabbitmq_api).rstrip("/"),
        rabbitmq_api_user=get("KRYONIX_RABBITMQ_API_USER", api_user),
        rabbitmq_api_password=get("KRYONIX_RABBITMQ_API_PASSWORD", api_password),
        s3_endpoint=get("KRYONIX_S3_ENDPOINT", None),
        s3_access_key=get("KRYONIX_S3_ACCESS_KEY", None),
        s3_secret_key=get("KRYONIX_S3_SECRET_KEY", None),
        s3_region=get("KRYONIX_S3_REGION", defaults.s3_region),
        repo=get("KRYONIX_REPO", defaults.repo).rstrip("/"),
        repo_access_key=get("KRYONIX_REPO_ACCESS_KEY", get("AWS_ACCESS_KEY_ID", None)),
        repo_secret_key=get("KRYONIX_REPO_SECRET_KEY", get("AWS_SECRET_ACCESS_KEY", None)),
        repo_secondary=_strip(get("KRYONIX_REPO_SECONDARY", None)),
        repo_secondary_access_key=get("KRYONIX_REPO_SECONDARY_ACCESS_KEY", None),
        repo_secondary_secret_key=get("KRYONIX_REPO_SECONDARY_SECRET_KEY", None),
        repo_secondary_admin=_strip(get("KRYONIX_REPO_SECONDARY_ADMIN", None)),
        repo_secondary_admin_access_key=get("KRYONIX_REPO_SECONDARY_ADMIN_ACCESS_KEY", None),
        repo_secondary_admin_secret_key=get("KRYONIX_REPO_SECONDARY_ADMIN_SECRET_KEY", None),
        master_key_file=Path(get("KRYONIX_MASTER_KEY_FILE", defaults.master_key_file)),
        app_data_dir=Path(get("KRYONIX_APP_DATA_DIR", defaults.app_data_dir)),
        state_dir=Path(get("KRYONIX_STATE_DIR", defaults.state_dir)),
        lease_ttl_seconds=int(get("KRYONIX_LEASE_TTL_SECONDS", defaults.lease_ttl_seconds)),
    )


def _strip(location: str | None) -> str | None:
    return location.rstrip("/") if location else None
