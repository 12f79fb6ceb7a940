"""One ConfigurableResource per external system, each exposing the few verbs the assets need.

Values come from the KRYONIX_* environment through `EnvVar` (so the UI shows the variable's
name, never a secret); a variable that is unset keeps the engine's local default.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import ConfigurableResource, EnvVar

from ..engine import audit, registry
from ..engine.alerts import Alert, deliver, notify_success, urls_from_env
from ..engine.config import Settings, api_credentials, load_settings
from ..engine.drill import DrillResult, run_drill
from ..engine.locations import SECONDARY
from ..engine.offsite import CopyResult, OffsiteLag, offsite_lags, run_copy
from ..engine.fleet import TenantStatus, fleet_status, stale_tenant_ids, tenant_statuses
from ..engine.lgpd.report import FleetCompliance, TenantCompliance, fleet_compliance, tenant_compliance
from ..engine.lgpd.retention import RetentionResult, apply as apply_lgpd_retention
from ..engine.lgpd.rules import load_rules
from ..engine.registry import Tenant
from ..engine.pgbackrest import BaseBackup
from ..engine.pitr import archive as pitr_archive
from ..engine.pitr.archive import PitrStatus
from ..engine.pitr.config import load_pitr_config
from ..engine.retention import RetentionCheck, RetentionDecision, check_retention, run_forget
from ..engine.reporting import Reporter
from ..engine.session import Gate, SessionResult, run_backup
from ..engine.tiers import TIERS, TierSpec
from ..engine.verified_points import VerifiedPoint, newest_verified_points
from ..engine.verify import VerifyResult, run_verify

if TYPE_CHECKING:
    from ..engine.lgpd.erase import Certificate
    from ..engine.lgpd.live_check import LedgerCheck


def env_or_default(name: str) -> EnvVar | None:
    """EnvVar(name) when the variable is set, else None (the engine default applies)."""
    return EnvVar(name) if os.environ.get(name) else None


class PostgresResource(ConfigurableResource):
    """The tenants' PostgreSQL cluster and the main database holding the registry."""

    dsn: str | None = None
    main_db: str | None = None

    def tenants(self, status: str | None = None, plan: str | None = None) -> list[Tenant]:
        return registry.list_tenants(self.fragment_settings(), status=status, plan=plan)

    def tenant_ids(self) -> list[str]:
        return registry.list_tenant_ids(self.fragment_settings())

    def fragment_settings(self) -> Settings:
        return _apply(load_settings(), pg_dsn=self.dsn, main_db=self.main_db)


class ObjectStorageResource(ConfigurableResource):
    """The tenants' S3/MinIO object storage."""

    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None


class RedisResource(ConfigurableResource):
    url: str | None = None


class RabbitMQResource(ConfigurableResource):
    amqp_url: str | None = None
    api_url: str | None = None
    api_user: str | None = None
    api_password: str | None = None


class BackupRepositoryResource(ConfigurableResource):
    """Where the per-tenant restic repositories live and the master key that wraps their passwords."""

    repo: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    master_key_file: str | None = None
    state_dir: str | None = None
    # the off-site copy, through its append-only endpoint (workers never get its admin path)
    secondary: str | None = None
    secondary_access_key: str | None = None
    secondary_secret_key: str | None = None


class AppDataResource(ConfigurableResource):
    root: str | None = None


def _apply(settings: Settings, **values) -> Settings:
    changes = {k: v for k, v in values.items() if v not in (None, "")}
    return settings.with_overrides(**changes) if changes else settings


def engine_settings(
    postgres: PostgresResource,
    object_storage: ObjectStorageResource,
    redis: RedisResource,
    rabbitmq: RabbitMQResource,
    repository: BackupRepositoryResource,
    app_data: AppDataResource,
) -> Settings:
    """The CLI's Settings (read from the same environment), with the resources' values on top."""
    settings = postgres.fragment_settings()
    api_user, api_password = api_credentials(rabbitmq.amqp_url or settings.amqp_url)
    return _apply(
        settings,
        s3_endpoint=object_storage.endpoint,
        s3_access_key=object_storage.access_key,
        s3_secret_key=object_storage.secret_key,
        s3_region=object_storage.region,
        redis_url=redis.url,
        amqp_url=rabbitmq.amqp_url,
        rabbitmq_api=rabbitmq.api_url,
        rabbitmq_api_user=rabbitmq.api_user or (api_user if rabbitmq.amqp_url else None),
        rabbitmq_api_password=rabbitmq.api_password or (api_password if rabbitmq.amqp_url else None),
        repo=repository.repo,
        repo_access_key=repository.access_key,
        repo_secret_key=repository.secret_key,
        repo_secondary=repository.secondary,
        repo_secondary_access_key=repository.secondary_access_key,
        repo_secondary_secret_key=repository.secondary_secret_key,
        master_key_file=Path(repository.master_key_file) if repository.master_key_file else None,
        state_dir=Path(repository.state_dir) if repository.state_dir else None,
        app_data_dir=Path(app_data.root) if app_data.root else None,
    )


class BackupEngineResource(ConfigurableResource):
    """The Dagster layer's one seam to the engine: the verbs assets, checks, ops, schedules and
    sensors need, each one engine call on the Settings composed from the per-system resources."""

    postgres: PostgresResource
    object_storage: ObjectStorageResource
    redis: RedisResource
    rabbitmq: RabbitMQResource
    repository: BackupRepositoryResource
    app_data: AppDataResource

    def settings(self) -> Settings:
        return engine_settings(self.postgres, self.object_storage, self.redis, self.rabbitmq, self.repository,
                               self.app_data)

    # --- tenants
    def tenants(self, status: str | None = None) -> list[Tenant]:
        return registry.list_tenants(self.settings(), status=status)

    def tenant_ids(self) -> list[str]:
        return registry.list_tenant_ids(self.settings())

    # --- backup
    def backup(self, tenant_id: str, backup_type: str, report: Reporter, gate: Gate | None = None,
               tiers: tuple[TierSpec, ...] = TIERS, wait_seconds: float = 600,
               origin: str | None = None) -> SessionResult:
        """A scheduled session waits for a drill, check or forget of its tenant rather than failing."""
        return run_backup(self.settings(), tenant_id, backup_type, report, wait_seconds=wait_seconds, tiers=tiers,
                          gate=gate, origin=origin)

    def backed_up_by(self, origin: str, tenant_ids: list[str]) -> set[str]:
        """Tenants with a successful session of `origin` (a batch run): a redone chunk skips them."""
        return audit.backed_up_by(self.settings(), origin, tenant_ids)

    # --- retention
    def forget(self, tenant_id: str, wait_seconds: float = 300) -> RetentionDecision:
        return run_forget(self.settings(), tenant_id, wait_seconds=wait_seconds)

    def check_retention(self, tenant_id: str) -> RetentionCheck:
        return check_retention(self.settings(), tenant_id)

    # --- integrity and drills
    def verify(self, tenant_id: str, subset: str | None = None, wait_seconds: float = 600) -> VerifyResult:
        """restic check under the tenant's lease: waits for a running session rather than colliding with it."""
        return run_verify(self.settings(), tenant_id, subset=subset, wait_seconds=wait_seconds)

    def drill(self, tenant_id: str, report: Reporter | None = None, wait_seconds: float = 600) -> DrillResult:
        return run_drill(self.settings(), tenant_id, report=report, wait_seconds=wait_seconds)

    # --- LGPD (rules from KRYONIX_LGPD_RULES or the packaged default, read on every call)
    def lgpd_apply(self, tenant_id: str, dry_run: bool = False, wait_seconds: float = 300) -> RetentionResult:
        """Waits for a running session or restore of the tenant rather than failing."""
        return apply_lgpd_retention(self.settings(), tenant_id, load_rules(), dry_run=dry_run,
                                    wait_seconds=wait_seconds)

    def lgpd_compliance(self, tenant_id: str) -> TenantCompliance:
        return tenant_compliance(self.settings(), tenant_id, load_rules())

    def lgpd_fleet_compliance(self) -> FleetCompliance:
        return fleet_compliance(self.settings(), load_rules())

    def bucket_counts(self, tenant_ids: list[str]) -> dict[str, int]:
        """How many buckets each tenant owns (`cliente-{id}-*`), from one listing of the object storage."""
        from ..engine.naming import names_for
        from ..engine.services.s3 import s3_client

        settings = self.settings()
        listed = [b["Name"] for b in s3_client(settings).list_buckets().get("Buckets", [])]
        return {tid: sum(1 for b in listed if names_for(settings, tid).owns_bucket(b)) for tid in tenant_ids}

    # --- off-site copy
    def offsite_configured(self) -> bool:
        return bool(self.settings().repo_secondary)

    def copy(self, tenant_id: str, report: Reporter | None = None, wait_seconds: float = 600) -> CopyResult:
        """Waits for a running session or forget of the tenant rather than failing."""
        return run_copy(self.settings(), tenant_id, wait_seconds=wait_seconds, report=report)

    def offsite_lags(self) -> list[OffsiteLag]:
        """Every tenant's (from the main database only); [] when no off-site copy is configured."""
        return offsite_lags(self.settings()) if self.offsite_configured() else []

    def offsite_lag(self, tenant_id: str) -> OffsiteLag | None:
        lags = offsite_lags(self.settings(), tenant_id)
        return lags[0] if lags else None

    def dr_drill(self, tenant_id: str, report: Reporter | None = None, wait_seconds: float = 600) -> DrillResult:
        """A restore drill from the off-site copy into the tenant's scratch names."""
        return run_drill(self.settings(), tenant_id, report=report, wait_seconds=wait_seconds,
                         repository=SECONDARY)
    # --- LGPD erasure
    def erasure_ledger_check(self, tenant_id: str) -> "LedgerCheck":
        """Read-only: is every erased person of the tenant's ledger absent from its live data?"""
        from ..engine.lgpd.live_check import check_ledger_applied
        return check_ledger_applied(self.settings(), tenant_id)

    def erase_subject(self, tenant_id: str, subject: str, dry_run: bool = False,
                      wait_seconds: float = 600) -> "Certificate":
        from ..engine.lgpd.erase import run_erase
        return run_erase(self.settings(), tenant_id, subject, dry_run, wait_seconds=wait_seconds)

    # --- fleet
    def statuses(self, tenant_ids: list[str] | None = None) -> list[TenantStatus]:
        return tenant_statuses(self.settings(), tenant_ids=tenant_ids)

    def stale_tenant_ids(self) -> list[str]:
        """The light query: only ids, only the stale ones."""
        return stale_tenant_ids(self.settings())

    def fleet_status(self) -> dict:
        return fleet_status(self.settings())

    def verified_points(self) -> dict[str, VerifiedPoint]:
        """Per tenant, the newest restore point a restore drill passed on."""
        return newest_verified_points(self.settings())

    def reports_dir(self) -> Path:
        return Path(self.settings().state_dir) / "reports"

    # --- point-in-time recovery (pgBackRest)
    def pitr_backup(self, backup_type: str, report: Reporter | None = None) -> BaseBackup:
        return pitr_archive.base_backup(self.settings(), backup_type, report)

    def pitr_status(self) -> PitrStatus | None:
        """None when PITR is not set up (no pgBackRest config for the stanza)."""
        settings = self.settings()
        if not load_pitr_config(settings).config_path.exists():
            return None
        return pitr_archive.status(settings)


class AlertsResource(ConfigurableResource):
    """Where notifications go: Apprise URLs. `from_env` reads them when sending from
    KRYONIX_NOTIFY_URLS and the old KRYONIX_ALERT_* variables, so the URLs' secrets never sit in
    Dagster's run config; `urls` (space-separated) is for tests and explicit set-ups."""

    urls: str = ""
    from_env: bool = False

    def channel_urls(self) -> list[str]:
        return self.urls.split() + (urls_from_env() if self.from_env else [])

    def configured(self) -> bool:
        return bool(self.channel_urls())

    def notify_success(self) -> bool:
        return notify_success()

    def send(self, alert: Alert) -> list[str]:
        """The channels that took it ([] when none is configured or all failed); never raises."""
        urls = self.channel_urls()
        return deliver(urls, alert) if urls else []


def resources_from_env() -> dict[str, ConfigurableResource]:
    postgres = PostgresResource(dsn=env_or_default("KRYONIX_PG_DSN"), main_db=env_or_default("KRYONIX_MAIN_DB"))
    services = _service_resources()
    return {
        "postgres": postgres,
        "engine": BackupEngineResource(postgres=postgres, **services),
        "alerts": AlertsResource(from_env=True),
    }


def _service_resources() -> dict[str, ConfigurableResource]:
    return {
        "object_storage": ObjectStorageResource(
            endpoint=env_or_default("KRYONIX_S3_ENDPOINT"),
            access_key=env_or_default("KRYONIX_S3_ACCESS_KEY"),
            secret_key=env_or_default("KRYONIX_S3_SECRET_KEY"),
            region=env_or_default("KRYONIX_S3_REGION"),
        ),
        "redis": RedisResource(url=env_or_default("KRYONIX_REDIS_URL")),
        "rabbitmq": RabbitMQResource(
            amqp_url=env_or_default("KRYONIX_AMQP_URL"),
            api_url=env_or_default("KRYONIX_RABBITMQ_API"),
            api_user=env_or_default("KRYONIX_RABBITMQ_API_USER"),
            api_password=env_or_default("KRYONIX_RABBITMQ_API_PASSWORD"),
        ),
        "repository": BackupRepositoryResource(
            repo=env_or_default("KRYONIX_REPO"),
            access_key=env_or_default("KRYONIX_REPO_ACCESS_KEY"),
            secret_key=env_or_default("KRYONIX_REPO_SECRET_KEY"),
            master_key_file=env_or_default("KRYONIX_MASTER_KEY_FILE"),
            state_dir=env_or_default("KRYONIX_STATE_DIR"),
            secondary=env_or_default("KRYONIX_REPO_SECONDARY"),
            secondary_access_key=env_or_default("KRYONIX_REPO_SECONDARY_ACCESS_KEY"),
            secondary_secret_key=env_or_default("KRYONIX_REPO_SECONDARY_SECRET_KEY"),
        ),
        "app_data": AppDataResource(root=env_or_default("KRYONIX_APP_DATA_DIR")),
    }
