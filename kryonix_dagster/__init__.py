"""KRYONIX per-tenant backup and disaster recovery.

`kryonix_dagster.engine` is plain Python (no Dagster import) used by both the Dagster
definitions and the `kryonix-backup` CLI.
"""
