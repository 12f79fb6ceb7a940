"""The backup engine: tenants, naming, per-service tiers, restic, keys. No Dagster here."""
