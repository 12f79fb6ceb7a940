"""Point-in-time recovery per tenant with pgBackRest (issue 11).

`config`: where the stanza, the repository and the work folder are, and the repository's
passphrase (wrapped by the master key). `cluster`: what the cluster behind KRYONIX_PG_DSN is
(data directory, port, owner, archive_mode). `archive`: setup, base backups, status and the
recoverable window. `scratch`: a throw-away cluster restored with `--db-include` to a moment.
`restore_at`: `restore ID --at T` on top of those and of the logical restore's verified swap.
"""
