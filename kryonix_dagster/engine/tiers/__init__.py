"""The tiers of a session, in the seed's phase order. Adding a tier touches its own module
and this list."""
from __future__ import annotations

from . import appdata, compliance, object_storage, postgres, rabbitmq, redis_keys
from .base import TierSpec

# (phase, tiers run in parallel within it, a failure stops the session)
PHASES: tuple[tuple[str, bool, bool], ...] = (
    ("foundation", True, True),
    ("storage", False, True),
    ("messaging", False, False),
    ("application", False, False),
    ("compliance", False, False),
)

TIERS: tuple[TierSpec, ...] = (
    TierSpec("postgresql", "foundation", True, "postgresql", postgres.backup, postgres.restore),
    TierSpec("redis", "foundation", True, "redis", redis_keys.backup, redis_keys.restore),
    TierSpec("object_storage", "storage", True, "object_storage", object_storage.backup, object_storage.restore),
    TierSpec("rabbitmq", "messaging", False, "rabbitmq", rabbitmq.backup, rabbitmq.restore),
    TierSpec("appdata", "application", False, "appdata", appdata.backup, appdata.restore),
    TierSpec("compliance", "compliance", False, "postgresql", compliance.backup, compliance.restore),
)

TIER_NAMES = tuple(t.name for t in TIERS)


def tier(name: str) -> TierSpec:
    for spec in TIERS:
        if spec.name == name:
            return spec
    raise KeyError(name)
