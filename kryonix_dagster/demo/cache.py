"""The demo tenant's Redis keys under `cliente:{id}:`, one family per Redis type."""
from __future__ import annotations

import redis

from ..engine.naming import TenantNames
from .plan import DemoCounts

SESSION_TTL_SECONDS = 86_400
CACHE_TTL_SECONDS = 3_600


def expected_keys(names: TenantNames, counts: DemoCounts) -> set[bytes]:
    p = names.redis_prefix
    keys = {f"{p}sessao:{n}" for n in range(1, counts.sessions + 1)}
    keys |= {f"{p}contato:{n}" for n in range(1, counts.cached_contacts + 1)}
    keys |= {f"{p}{suffix}" for suffix in (
        "fila:notificacoes", "tags", "ranking:vendedores", "eventos", "contador:visitas",
        "cache:dashboard", "config:flags")}
    return {k.encode() for k in keys}


def seed_cache(client: redis.Redis, names: TenantNames, counts: DemoCounts) -> None:
    p = names.redis_prefix
    wanted = expected_keys(names, counts)
    stale = [k for k in client.scan_iter(match=names.redis_match, count=1000) if k not in wanted]
    if stale:
        client.delete(*stale)
    pipe = client.pipeline(transaction=False)
    for n in range(1, counts.sessions + 1):
        pipe.set(f"{p}sessao:{n}", f"usuario={n % 25 + 1};token={n * 7919:x}", ex=SESSION_TTL_SECONDS)
    # Cached contacts reference crm.contatos rows by id (checked by the consistency rules).
    for n in range(1, counts.cached_contacts + 1):
        key = f"{p}contato:{n}"
        pipe.delete(key)
        pipe.hset(key, mapping={"id": n, "nome": f"Contato {n}", "email": f"contato{n}@exemplo.com.br",
                                "avatar": bytes([n % 256, 0, 255, 10, 13])})
    key = f"{p}fila:notificacoes"
    pipe.delete(key)
    pipe.rpush(key, *[f"notificacao:{n}" for n in range(1, counts.notifications + 1)])
    key = f"{p}tags"
    pipe.delete(key)
    pipe.sadd(key, "vip", "inadimplente", "novo", "whatsapp", "indicação")
    key = f"{p}ranking:vendedores"
    pipe.delete(key)
    pipe.zadd(key, {f"vendedor:{n}": n * 1.5 for n in range(1, counts.ranking + 1)})
    key = f"{p}eventos"
    pipe.delete(key)
    for n in range(1, counts.stream_entries + 1):
        pipe.xadd(key, {"tipo": "login" if n % 2 else "compra", "contato": str(n)}, id=f"1700000000000-{n}")
    pipe.set(f"{p}contador:visitas", 1000 + counts.sessions)
    pipe.set(f"{p}cache:dashboard", b"\x00\x01binario\xff" * 10, ex=CACHE_TTL_SECONDS)
    key = f"{p}config:flags"
    pipe.delete(key)
    pipe.hset(key, mapping={"modo_offline": "1", "biometria": "1", "tema": "escuro"})
    pipe.execute()
