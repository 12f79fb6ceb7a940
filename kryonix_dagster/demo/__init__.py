"""`demo seed`: realistic demo tenants in every service (PostgreSQL, S3, Redis, RabbitMQ, app data).

Seeding is idempotent and exact: each service ends up holding precisely what the plan for
(tenant, scale) lists, so seeding twice changes nothing and another scale resizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..engine.config import Settings
from ..engine.errors import BadInput
from ..engine.naming import PLANS, names_for, validate_tenant_id
from ..engine import registry, services
from .appdata import seed_appdata
from .cache import seed_cache
from .database import seed_database
from .messaging import seed_messaging
from .objects import seed_objects
from .plan import DemoCounts, demo_objects

MAX_DEMO_TENANTS = 500


@dataclass(frozen=True)
class SeededTenant:
    tenant_id: str
    plan: str
    counts: DemoCounts
    objects: int


def demo_tenant_ids(count: int) -> list[str]:
    return [f"demo{n}" for n in range(1, count + 1)]


def validate_demo_args(tenants: int, scale: float) -> None:
    if not 1 <= tenants <= MAX_DEMO_TENANTS:
        raise BadInput(f"--tenants must be between 1 and {MAX_DEMO_TENANTS}, got {tenants}")
    if not 0 < scale <= 1000:
        raise BadInput(f"--scale must be greater than 0 and at most 1000, got {scale}")


def seed_tenant(
    settings: Settings,
    tenant_id: str,
    scale: float = 1.0,
    plan: str = "basic",
    name: str | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> SeededTenant:
    """Register the tenant (active) and make every service hold its demo data."""
    validate_tenant_id(tenant_id)
    names = names_for(settings, tenant_id)
    counts = DemoCounts.for_scale(scale)
    objects = demo_objects(tenant_id, counts)
    registry.ensure_tenant(settings, tenant_id, name or f"Cliente Demo {tenant_id}", plan)
    progress(f"{tenant_id}: PostgreSQL {names.database}")
    seed_database(settings, names, counts, objects)
    progress(f"{tenant_id}: buckets {names.bucket_prefix}*")
    seed_objects(services.s3_client(settings), names, objects, settings.s3_region)
    progress(f"{tenant_id}: Redis {names.redis_match}")
    seed_cache(services.redis_client(settings), names, counts)
    progress(f"{tenant_id}: RabbitMQ vhost {names.vhost}")
    seed_messaging(settings, names, counts)
    progress(f"{tenant_id}: application data {names.app_data_dir}")
    seed_appdata(names, counts)
    return SeededTenant(tenant_id, plan, counts, len(objects))


def seed_demo(
    settings: Settings, tenants: int, scale: float, progress: Callable[[str], None] = lambda _m: None
) -> list[SeededTenant]:
    validate_demo_args(tenants, scale)
    return [
        seed_tenant(settings, tid, scale, PLANS[i % len(PLANS)], progress=progress)
        for i, tid in enumerate(demo_tenant_ids(tenants))
    ]
