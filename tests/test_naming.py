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
