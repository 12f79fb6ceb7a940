"""Restore drills never touch a registered tenant: scratch tenants live in names no tenant can have,
and erasure refuses anything that is not a scratch tenant's."""
import dataclasses
import hashlib

import pytest

from kryonix_dagster.engine import registry
from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.engine.drill import run_drill
from kryonix_dagster.engine.errors import BadInput
from kryonix_dagster.engine.erasure import erase_scratch
from kryonix_dagster.engine.naming import names_for, scratch_names_for
from kryonix_dagster.engine.session import run_backup

from . import observe
from .conftest import MAIN_DB
from .helpers import purge_tenant


def old_scratch_id(tenant_id: str) -> str:
    """The scratch id drills used before: a valid tenant id anyone could register."""
    return "drill" + hashlib.sha256(tenant_id.encode()).hexdigest()[:12]


@pytest.fixture
def victim(settings, tenant_factory):
    """A tenant of the drilled tenant's old scratch id (the drilled tenant is `tid`), with data."""
    tid = tenant_factory()
    victim_id = old_scratch_id(tid)
    purge_tenant(settings, victim_id)
    seed_tenant(settings, victim_id, scale=0.05, name="Real customer")
    yield tid, victim_id
    purge_tenant(settings, victim_id)


def test_a_drill_leaves_a_tenant_with_the_old_scratch_id_untouched(settings, victim):
    tid, victim_id = victim
    before = observe.tenant_state(settings, victim_id, messages=False)
    assert before["tables"] and before["objects"] and before["redis"] and before["vhost"] and before["files"]
    seed_tenant(settings, tid, scale=0.05)
    assert run_backup(settings, tid, "full").success

    drill = run_drill(settings, tid)

    assert drill.passed, drill.error
    assert observe.tenant_state(settings, victim_id, messages=False) == before
    assert drill.scratch_id != victim_id
    assert observe.psql(MAIN_DB, f"SELECT nome || '|' || status FROM tenants.clientes WHERE id = '{victim_id}'") \
        == "Real customer|ativo"
    # the scratch tenant was never registered and left nothing behind in any service
    scratch = scratch_names_for(settings, tid)
    assert observe.psql(MAIN_DB, "SELECT count(*) FROM tenants.clientes WHERE id NOT IN "
                                 f"('{tid}', '{victim_id}') AND nome LIKE 'restore drill%'") == "0"
    assert observe.psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE '{scratch.database}%'") == "0"
    assert observe.bucket_state(observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key),
                                scratch.bucket_prefix) == {}
    assert observe.redis_state(settings.redis_url, scratch.redis_prefix) == {}
    assert not scratch.app_data_dir.exists()


def test_erasure_refuses_a_registered_tenant_and_anything_not_built_as_scratch(settings, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.05)
    before = observe.tenant_state(settings, tid, messages=False)
    names = names_for(settings, tid)
    with pytest.raises(BadInput, match=f"tenant {tid}.*not a scratch tenant"):
        erase_scratch(settings, names)
    forged = dataclasses.replace(names, scratch=True)  # a flag alone does not make a tenant scratch
    with pytest.raises(BadInput, match="not a scratch tenant"):
        erase_scratch(settings, forged)
    assert observe.tenant_state(settings, tid, messages=False) == before
    assert registry.get_tenant(settings, tid).status == "ativo"
