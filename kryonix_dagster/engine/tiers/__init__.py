"""The tiers of a session, in the seed's phase order. Adding a tier touches its own module
and this list."""
from __future__ import annotations

from . import postgres
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
)

TIER_NAMES = tuple(t.name for t in TIERS)


def tier(name: str) -> TierSpec:
    for spec in TIERS:
        if spec.name == name:
            return spec
    raise KeyError(name)
