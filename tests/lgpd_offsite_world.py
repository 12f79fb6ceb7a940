"""A world for the LGPD × off-site tests: its own main database, master key, primary root and
off-site copy behind the real append-only endpoint (tests/offsite_world.py's endpoint and World),
one tenant with the demo database only, backed up (PostgreSQL tier only: small and quick) and
copied ONCE. Person 7 of that tenant is erased after the copy, once,
by whichever test needs it first; the `--rewrite` test adds a second restore point (copied) and
rewrites both locations, which the other tests do not depend on either way; tenants other tests must not see (the one off-boarded) are
made by the test that needs them. Its own world, not the shared `dr_world`: the runbook's tests
compare that tenant's data and the tenants `keys recover` finds."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import pytest

from . import observe
from kryonix_dagster.demo.database import seed_database
from kryonix_dagster.demo.plan import DemoCounts, demo_objects
from kryonix_dagster.engine import registry
from kryonix_dagster.engine.migrations import migrate
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.session import run_backup
from kryonix_dagster.engine.tiers import TIERS

from .offsite_world import Endpoint, World, destroy_world, start_endpoint

ERASED, KEPT = 7, 8
EMAIL = f"contato{ERASED}@exemplo.com.br"


@dataclass
class ErasureWorld:
    dr: World
    session: str  # the tenant's one restore point, copied off-site before the erasure
    steps: dict = field(default_factory=dict)

    @property
    def database(self) -> str:
        return f"kryonix_cliente_{self.dr.tenant_id}"

    def erased(self) -> dict:
        """Person 7 erased through the CLI, after the restore point was copied off-site (once)."""
        if "erase" not in self.steps:
            assert self.person(ERASED) and self.person(KEPT)
            self.steps["erase"] = self.dr.cli_json("lgpd", "erase", self.dr.tenant_id, "--subject", f"email={EMAIL}",
                                                   "--yes")
            assert not self.person(ERASED)
        return self.steps["erase"]

    def person(self, person: int) -> int:
        """Rows that name the person (identifiable contact, messages), read with psql."""
        return int(observe.psql(self.database, f"SELECT (SELECT count(*) FROM crm.contatos WHERE id = {person} "
                                               f"AND email = 'contato{person}@exemplo.com.br') + (SELECT count(*) "
                                               f"FROM whatsapp.mensagens WHERE contato_id = {person})"))


def make_small_world(base, endpoint: Endpoint, tenant_id: str) -> tuple[World, str]:
    """Own main database, master key and primary root; the tenant's demo database backed up
    (PostgreSQL tier) and copied off-site through the append-only endpoint."""
    world = World(base, endpoint, tenant_id, {
        "KRYONIX_MAIN_DB": f"kryonix_test_lgdr_{secrets.token_hex(4)}",
        "KRYONIX_REPO": f"file://{base / 'primary'}",
        "KRYONIX_MASTER_KEY_FILE": str(base / "keys" / "master.key"),
        "KRYONIX_STATE_DIR": str(base / "state"),
        "KRYONIX_REPO_SECONDARY": endpoint.url,
        "KRYONIX_REPO_SECONDARY_ADMIN": endpoint.admin,
    })
    settings = world.settings
    migrate(settings)
    counts = DemoCounts.for_scale(0.05)
    registry.ensure_tenant(settings, tenant_id, f"Cliente {tenant_id}", "basic")
    seed_database(settings, names_for(settings, tenant_id), counts, demo_objects(tenant_id, counts))
    session = run_backup(settings, tenant_id, "full", tiers=tuple(t for t in TIERS if t.name == "postgresql"))
    assert session.restore_point, session.error
    assert world.cli_json("copy", tenant_id)["copies"][0]["copied_sessions"] == [session.session_id]
    return world, session.session_id


@pytest.fixture(scope="session")  # once per test process (xdist worker)
def erasure_world(settings, tmp_path_factory):
    base = tmp_path_factory.mktemp("lgpd-dr")
    endpoint = start_endpoint()
    world = None
    try:
        world, session = make_small_world(base, endpoint, "g" + secrets.token_hex(4))
        yield ErasureWorld(world, session)
    finally:
        if world is not None:
            destroy_world(world)
        endpoint.stop()
