"""The tiers of a session, in the seed's phase order. A tier is one unit: its module holds
backup, restore, drill comparison and its `SPEC`; adding a tier is that module plus one line
here. The session, the restore, the drill and the Dagster layer all read this list."""
from __future__ import annotations

from . import appdata, compliance, object_storage, postgres, rabbitmq, redis_keys
from .base import PHASES, TierSpec

TIERS: tuple[TierSpec, ...] = (
    postgres.SPEC,
    redis_keys.SPEC,
    object_storage.SPEC,
    rabbitmq.SPEC,
    appdata.SPEC,
    compliance.SPEC,
)

TIER_NAMES = tuple(t.name for t in TIERS)

__all__ = ["PHASES", "TIERS", "TIER_NAMES", "TierSpec", "tier"]


def tier(name: str, tiers: tuple[TierSpec, ...] = TIERS) -> TierSpec:
    for spec in tiers:
        if spec.name == name:
            return spec
    raise KeyError(name)
