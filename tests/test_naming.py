"""The isolation contract's naming rules, without services."""
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from kryonix_dagster.engine.errors import BadInput
from kryonix_dagster.engine.naming import (
    rename_bucket, rename_redis_key, rename_role, tenant_names, validate_tenant_id,
)

BAD_IDS = ["../x", "1-2", "A", "1;drop", "*", "", "a" * 33, "a b", "1\n", "ção", "cliente_1", "1:2", None, 7]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused(bad):
    with pytest.raises(BadInput) as err:
        validate_tenant_id(bad)
    assert "must match ^[a-z0-9]{1,32}$" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("good", ["1", "10", "abc", "a" * 32, "0z9"])
def test_good_ids_pass(good):
    assert validate_tenant_id(good) == good


def names(tid):
    return tenant_names(tid, Path("/data/apps"), "s3:http://127.0.0.1:9000/backups/kryonix")


def test_names_follow_the_contract():
    n = names("42")
    assert n.database == "kryonix_cliente_42"
    assert n.bucket_prefix == "cliente-42-"
    assert n.redis_match == "cliente:42:*"
    assert n.vhost == "/cliente_42"
    assert n.app_data_dir == Path("/data/apps/cliente_42")
    assert n.repository == "s3:http://127.0.0.1:9000/backups/kryonix/cliente_42"


def test_tenant_1_never_matches_tenant_10():
    one, ten = names("1"), names("10")
    for a, b in ((one, ten), (ten, one)):
        assert not a.owns_bucket(b.bucket("media"))
        assert not fnmatchcase(b.redis_prefix + "x", a.redis_match)
        assert not a.owns_redis_key(b.redis_prefix + "x")
        assert not a.owns_role(b.role("app"))
        assert a.vhost != b.vhost
        assert a.database != b.database
        assert a.app_data_dir not in b.app_data_dir.parents and a.app_data_dir != b.app_data_dir
        assert not (b.repository + "/").startswith(a.repository + "/")
    # and each owns its own
    assert one.owns_bucket("cliente-1-media") and ten.owns_bucket("cliente-10-media")
    assert not one.owns_bucket("cliente-1-")  # the bare prefix is not a bucket of the tenant


def test_renames_map_to_the_target_tenant_only():
    a, b = names("1"), names("10")
    assert rename_bucket("cliente-1-media", a, b) == "cliente-10-media"
    assert rename_redis_key(b"cliente:1:sessao:9", a, b) == b"cliente:10:sessao:9"
    assert rename_role("kryonix_cliente_1_app", a, b) == "kryonix_cliente_10_app"
    with pytest.raises(ValueError):
        rename_bucket("cliente-10-media", a, b)
    with pytest.raises(ValueError):
        rename_redis_key(b"cliente:10:x", a, b)


# Restore drills' scratch tenants: a namespace of their own.
from kryonix_dagster.engine.naming import is_scratch, scratch_id, scratch_names, scratch_token  # noqa: E402


def scratch(tid):
    return scratch_names(scratch_token(tid), Path("/data/apps"))


def test_scratch_names_are_valid_in_every_service_and_no_tenant_id():
    s = scratch("42")
    token = scratch_token("42")
    assert (s.tenant_id, s.database, s.bucket_prefix, s.redis_prefix, s.vhost, s.app_data_dir) == (
        f"drill-{token}", f"kryonix_drill_{token}", f"drill-{token}-", f"drill:{token}:", f"/drill_{token}",
        Path(f"/data/apps/drill_{token}"))
    assert scratch_id("42") == s.tenant_id and s.scratch and is_scratch(s)
    import re
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", s.previous_database)  # a plain PostgreSQL identifier
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", s.bucket("documentos-arquivo"))  # an S3 bucket name
    with pytest.raises(BadInput):
        validate_tenant_id(s.tenant_id)  # so it can never be registered


@pytest.mark.parametrize("tid", ["1", "drill", "drillx", "kryonix", "a" * 32])
def test_no_tenant_ever_owns_a_scratch_name(tid):
    token = scratch_token("1")
    for other in {tid, token, f"drill{token}", f"drill{token}"[:32]}:
        t, s = names(other), scratch("1")
        assert not t.owns_bucket(s.bucket("media")) and not s.owns_bucket(t.bucket("media"))
        assert not t.owns_role(s.role("app")) and not s.owns_role(t.role("app"))
        assert not t.owns_redis_key(s.redis_prefix + "k") and not s.owns_redis_key(t.redis_prefix + "k")
        assert not fnmatchcase(s.redis_prefix + "k", t.redis_match) and not fnmatchcase(t.redis_prefix + "k", s.redis_match)
        assert s.database != t.database and not s.database.startswith(t.role_prefix)
        assert s.vhost != t.vhost and s.app_data_dir != t.app_data_dir


def test_only_names_built_as_scratch_count_as_scratch():
    import dataclasses

    s = scratch("1")
    assert not is_scratch(names("1"))
    assert not is_scratch(dataclasses.replace(names("1"), scratch=True))
    assert not is_scratch(dataclasses.replace(s, database="kryonix_cliente_1"))
    assert not is_scratch(dataclasses.replace(s, scratch=False))
    with pytest.raises(BadInput):
        scratch_names("../../x", Path("/data/apps"))


# Names of the restore machinery: staging vhost, app-data swap folders; derived here too.
from kryonix_dagster.engine.naming import foreign_tenant_ids  # noqa: E402


def test_restore_machinery_names_of_a_tenant():
    n = names("42")
    assert n.staging_vhost == "/cliente_42~restore"
    assert n.previous_app_data_dir == Path("/data/apps/.cliente_42.previous")
    assert n.app_data_journal == Path("/data/apps/.cliente_42.swap.json")
    assert n.app_data_staging_prefix == ".cliente_42.restoring-"


def test_restore_machinery_names_of_a_scratch_tenant():
    token = scratch_token("42")
    s = scratch("42")
    assert s.staging_vhost == f"/drill_{token}~restore"
    assert s.previous_app_data_dir == Path(f"/data/apps/.drill_{token}.previous")
    assert s.app_data_journal == Path(f"/data/apps/.drill_{token}.swap.json")
    assert s.app_data_staging_prefix == f".drill_{token}.restoring-"


def test_restore_machinery_names_never_collide_between_tenants():
    one, ten, drill = names("1"), names("10"), scratch("1")
    for a, b in ((one, ten), (ten, one), (one, drill), (drill, one)):
        assert a.staging_vhost not in (b.vhost, b.staging_vhost)
        assert a.previous_app_data_dir not in (b.app_data_dir, b.previous_app_data_dir)
        assert a.app_data_journal != b.app_data_journal
        assert not b.app_data_staging_prefix.startswith(a.app_data_staging_prefix)
        assert a.previous_app_data_dir.parent == a.app_data_dir.parent  # a rename, never a copy


@pytest.mark.parametrize("name, found", [
    ("kryonix_cliente_2_app", {"2"}), ("cliente-2-media", {"2"}), ("cliente:2:sess", {"2"}),
    ("/cliente_2", {"2"}), ("app.cliente.2", {"2"}), ("cliente_2 and cliente-3", {"2", "3"}),
    ("kryonix_cliente_1_app", set()), ("cliente_1", set()), ("guest", set()), ("cliente", set()),
    ("cliente_10", {"10"}), ("clientes_2", set()), (f"drill-{'a' * 12}-x", set()),
])
def test_foreign_tenant_ids_finds_other_tenants_naming_forms(name, found):
    assert foreign_tenant_ids(name, names("1")) == found


def test_a_scratch_owner_owns_no_tenant_form():
    assert foreign_tenant_ids("kryonix_cliente_1_app", scratch("1")) == {"1"}
