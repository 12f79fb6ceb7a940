"""`demo seed` makes every service hold exactly the demo tenant's data, idempotently."""
from kryonix_dagster.demo import seed_tenant
from kryonix_dagster.demo.plan import MULTIPART_OBJECT_SIZE, DemoCounts, demo_objects
from kryonix_dagster.engine.naming import names_for

from . import observe

TABLES = {
    "auth.usuarios": "usuarios", "crm.contatos": "contatos", "whatsapp.mensagens": "mensagens",
    "agendamento.agendamentos": "agendamentos", "financeiro.faturas": "faturas",
    "marketing.campanhas": "campanhas", "analytics.eventos": "eventos",
    "lgpd.consentimentos": "consentimentos", "lgpd.log_processamento": "logs",
}


def full_state(settings, tid):
    state = observe.tenant_state(settings, tid, messages=False)
    state["redis"] = {k: (t, v) for k, (t, v, _ttl) in state["redis"].items()}
    return state


def test_demo_tenant_is_realistic_in_every_service(settings, tenant_factory):
    tid = tenant_factory()
    scale = 0.2
    seed_tenant(settings, tid, scale=scale, plan="pro")
    names = names_for(settings, tid)
    counts = DemoCounts.for_scale(scale)

    # PostgreSQL: the ten module schemas, expected row counts, keys, FKs, sequences, indexes.
    schemas = observe.psql(names.database, "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace "
                                           "WHERE nspname NOT LIKE 'pg_%' AND nspname NOT IN ('information_schema', 'public')")
    assert schemas.split(",") == sorted(["auth", "crm", "whatsapp", "agendamento", "financeiro", "marketing",
                                         "analytics", "portal", "whitelabel", "lgpd"])
    tables = observe.table_checksums(names.database)
    for table, field in TABLES.items():
        assert tables[table][0] == getattr(counts, field), table
    objects = demo_objects(tid, counts)
    assert tables["portal.arquivos"][0] == len(objects)
    assert int(observe.psql(names.database, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'")) == 7
    assert int(observe.psql(names.database, "SELECT count(*) FROM pg_sequences")) >= 10
    assert int(observe.psql(names.database, "SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%ultimo_contato%'")) == 1
    old = int(observe.psql(names.database, "SELECT count(*) FROM crm.contatos WHERE ultimo_contato < now() - interval '3 years'"))
    assert 0 < old < counts.contatos  # some contacts are old enough for the LGPD rules
    assert observe.psql("postgres", f"SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles "
                                    f"WHERE rolname LIKE 'kryonix_cliente_{tid}_%'") == \
        f"kryonix_cliente_{tid}_app,kryonix_cliente_{tid}_leitura"

    # Object storage, through boto3: exactly the planned objects, with type, metadata and tags.
    s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    state = observe.bucket_state(s3, names.bucket_prefix)
    assert sorted(state) == [f"cliente-{tid}-documentos", f"cliente-{tid}-media"]
    expected = {(f"cliente-{tid}-{o.bucket_suffix}", o.key): o for o in objects}
    got = {(b, k): v for b, objs in state.items() for k, v in objs.items()}
    assert got.keys() == expected.keys()
    for key, (_sha, size, ctype, meta, tags) in got.items():
        obj = expected[key]
        assert (size, ctype, meta, dict(tags)) == (obj.size, obj.content_type, obj.metadata, obj.tags), key
    big = s3.head_object(Bucket=f"cliente-{tid}-documentos", Key="backups/base-conhecimento.tar")
    assert big["ContentLength"] == MULTIPART_OBJECT_SIZE and "-" in big["ETag"]  # uploaded in parts
    # and the rows of portal.arquivos reference exactly those objects
    refs = observe.psql(names.database, "SELECT bucket || '/' || object_key FROM portal.arquivos ORDER BY 1").splitlines()
    assert refs == sorted(f"{o.bucket_suffix}/{o.key}" for o in objects)

    # Redis: every type under the tenant's prefix, some with TTLs.
    keys = observe.redis_state(settings.redis_url, names.redis_prefix)
    assert {t for t, _v, _ttl in keys.values()} == {"string", "hash", "list", "set", "zset", "stream"}
    assert len(keys) == counts.sessions + counts.cached_contacts + 7
    assert sum(1 for _t, _v, ttl in keys.values() if ttl) == counts.sessions + 1

    # RabbitMQ: the vhost's exchanges, durable queues, bindings, a policy, persistent messages.
    vhost = observe.vhost_state(names.vhost)
    assert {q[0] for q in vhost["queues"]} == {"mobile.sync", "whatsapp.outbound", "notificacoes", "dead.letters"}
    assert all(q[1] for q in vhost["queues"])
    assert len(vhost["bindings"]) == 4 and [p[0] for p in vhost["policies"]] == ["notificacoes-ttl"]
    assert vhost["depths"] == {"mobile.sync": counts.sync_messages, "whatsapp.outbound": counts.whatsapp_messages,
                               "notificacoes": counts.notification_messages, "dead.letters": 0}

    # Application data: config, media and mobile data, and biometric templates on disk.
    files = observe.tree_state(names.app_data_dir)
    for rel in ("config/app.json", "mobile/pwa/manifest.json", "mobile/push/config.json",
                "mobile/biometric/settings.json", "mobile/sync_queue/export-0001.json", "media/logo.png"):
        assert rel in files
    assert sum(1 for rel in files if rel.startswith("mobile/offline_forms/")) == counts.offline_forms
    assert sum(1 for rel in files if rel.startswith("mobile/biometric/templates/")) == 3


def test_seeding_twice_is_idempotent_and_scale_resizes(settings, tenant_factory):
    tid = tenant_factory()
    seed_tenant(settings, tid, scale=0.1)
    first = full_state(settings, tid)
    seed_tenant(settings, tid, scale=0.1)
    assert full_state(settings, tid) == first

    seed_tenant(settings, tid, scale=0.3)
    bigger = full_state(settings, tid)
    assert bigger["tables"]["crm.contatos"][0] == DemoCounts.for_scale(0.3).contatos
    assert len(bigger["redis"]) > len(first["redis"])
    seed_tenant(settings, tid, scale=0.1)
    assert full_state(settings, tid) == first  # resizing back down restores exactly the same state
