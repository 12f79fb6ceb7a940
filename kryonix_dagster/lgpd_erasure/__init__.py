"""LGPD erasure: the per-tenant `erasure_ledger_applied` check (the erasure itself, --rewrite and
off-boarding are operator commands: `kryonix-backup lgpd erase`, `kryonix-backup tenants offboard`)."""
from dagster import Definitions

from .checks import erasure_ledger_applied, ledger_evaluation

defs = Definitions(asset_checks=[erasure_ledger_applied])

__all__ = ["defs", "erasure_ledger_applied", "ledger_evaluation"]
