"""The demo tenant's PostgreSQL database: ten module schemas with keys, FKs, sequences, indexes."""
from __future__ import annotations

import json

from psycopg2 import sql

from ..engine import pg
from ..engine.config import Settings
from ..engine.naming import TenantNames
from .plan import MODULE_SCHEMAS, DemoCounts, DemoObject

SCHEMA_DDL = """
CREATE SCHEMA IF NOT EXISTS auth;
CREATE SCHEMA IF NOT EXISTS crm;
CREATE SCHEMA IF NOT EXISTS whatsapp;
CREATE SCHEMA IF NOT EXISTS agendamento;
CREATE SCHEMA IF NOT EXISTS financeiro;
CREATE SCHEMA IF NOT EXISTS marketing;
CREATE SCHEMA IF NOT EXISTS analytics;
CREATE SCHEMA IF NOT EXISTS portal;
CREATE SCHEMA IF NOT EXISTS whitelabel;
CREATE SCHEMA IF NOT EXISTS lgpd;

CREATE TABLE IF NOT EXISTS auth.usuarios (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    nome text NOT NULL,
    senha_hash text NOT NULL,
    criado_em timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS crm.contatos (
    id bigserial PRIMARY KEY,
    nome text NOT NULL,
    email text NOT NULL,
    telefone text NOT NULL,
    ultimo_contato timestamptz NOT NULL,
    responsavel_id bigint REFERENCES auth.usuarios(id)
);
CREATE INDEX IF NOT EXISTS contatos_ultimo_contato ON crm.contatos (ultimo_contato);
CREATE TABLE IF NOT EXISTS whatsapp.mensagens (
    id bigserial PRIMARY KEY,
    contato_id bigint NOT NULL REFERENCES crm.contatos(id),
    direcao text NOT NULL CHECK (direcao IN ('entrada', 'saida')),
    corpo text NOT NULL,
    enviada_em timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS mensagens_contato ON whatsapp.mensagens (contato_id, enviada_em);
CREATE TABLE IF NOT EXISTS agendamento.agendamentos (
    id bigserial PRIMARY KEY,
    contato_id bigint NOT NULL REFERENCES crm.contatos(id),
    inicio timestamptz NOT NULL,
    fim timestamptz NOT NULL,
    status text NOT NULL
);
CREATE TABLE IF NOT EXISTS financeiro.faturas (
    id bigserial PRIMARY KEY,
    contato_id bigint NOT NULL REFERENCES crm.contatos(id),
    valor numeric(12, 2) NOT NULL,
    vencimento date NOT NULL,
    paga boolean NOT NULL
);
CREATE TABLE IF NOT EXISTS marketing.campanhas (
    id bigserial PRIMARY KEY,
    nome text NOT NULL,
    canal text NOT NULL,
    criada_em timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS marketing.envios (
    campanha_id bigint NOT NULL REFERENCES marketing.campanhas(id),
    contato_id bigint NOT NULL REFERENCES crm.contatos(id),
    enviado_em timestamptz NOT NULL,
    PRIMARY KEY (campanha_id, contato_id)
);
CREATE TABLE IF NOT EXISTS analytics.eventos (
    id bigserial PRIMARY KEY,
    contato_id bigint,
    tipo text NOT NULL,
    payload jsonb NOT NULL,
    ocorreu_em timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS eventos_ocorreu_em ON analytics.eventos (ocorreu_em);
CREATE TABLE IF NOT EXISTS portal.arquivos (
    id bigserial PRIMARY KEY,
    bucket text NOT NULL,
    object_key text NOT NULL,
    content_type text NOT NULL,
    tamanho bigint NOT NULL,
    UNIQUE (bucket, object_key)
);
CREATE TABLE IF NOT EXISTS whitelabel.configuracoes (
    chave text PRIMARY KEY,
    valor jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS lgpd.consentimentos (
    id bigserial PRIMARY KEY,
    contato_id bigint NOT NULL REFERENCES crm.contatos(id),
    finalidade text NOT NULL,
    consentimento_dado boolean NOT NULL,
    registrado_em timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS lgpd.log_processamento (
    id bigserial PRIMARY KEY,
    contato_id bigint,
    operacao text NOT NULL,
    base_legal text NOT NULL,
    processado_em timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS log_processamento_em ON lgpd.log_processamento (processado_em);
"""

# Children before parents, so resizing down never trips a foreign key.
_DELETE_BEYOND = (
    ("lgpd.log_processamento", "id > %(logs)s"),
    ("lgpd.consentimentos", "id > %(consentimentos)s OR contato_id > %(contatos)s"),
    ("analytics.eventos", "id > %(eventos)s"),
    ("marketing.envios", "true"),  # no row number: rebuilt whole
    ("marketing.campanhas", "id > %(campanhas)s"),
    ("financeiro.faturas", "id > %(faturas)s OR contato_id > %(contatos)s"),
    ("agendamento.agendamentos", "id > %(agendamentos)s OR contato_id > %(contatos)s"),
    ("whatsapp.mensagens", "id > %(mensagens)s OR contato_id > %(contatos)s"),
    ("crm.contatos", "id > %(contatos)s"),
    ("auth.usuarios", "id > %(usuarios)s"),
)

# Deterministic rows: every value is a function of the row number and a fixed epoch.
_INSERTS = """
INSERT INTO auth.usuarios (id, email, nome, senha_hash, criado_em)
SELECT g, 'usuario' || g || '@' || %(tenant)s || '.kryonix.test', 'Usuário ' || g,
       md5(%(tenant)s || ':senha:' || g), timestamptz '2024-01-01' + g * interval '1 day'
FROM generate_series(1, %(usuarios)s) g ON CONFLICT (id) DO NOTHING;

INSERT INTO crm.contatos (id, nome, email, telefone, ultimo_contato, responsavel_id)
SELECT g, 'Contato ' || g, 'contato' || g || '@exemplo.com.br', '+55119' || lpad(g::text, 8, '0'),
       timestamptz '2026-11-01' - (g * 17 %% 2200) * interval '1 day', 1 + g %% %(usuarios)s
FROM generate_series(1, %(contatos)s) g ON CONFLICT (id) DO NOTHING;

INSERT INTO whatsapp.mensagens (id, contato_id, direcao, corpo, enviada_em)
SELECT g, 1 + g %% %(contatos)s, CASE WHEN g %% 2 = 0 THEN 'entrada' ELSE 'saida' END,
       'Olá! Mensagem ' || g || ' ' || md5(%(tenant)s || ':msg:' || g),
       timestamptz '2026-10-01' + g * interval '3 minutes'
FROM generate_series(1, %(mensagens)s) g ON CONFLICT (id) DO NOTHING;

INSERT INTO agendamento.agendamentos (id, contato_id, inicio, fim, status)
SELECT g, 1 + g %% %(contatos)s, timestamptz '2026-12-01' + g * interval '1 hour',
       timestamptz '2026-12-01' + g * interval '1 hour' + interval '30 minutes',
       (ARRAY['agendado', 'confirmado', 'cancelado'])[1 + g %% 3]
FROM generate_series(1, %(agendamentos)s) g ON CONFLICT (id) DO NOTHING;

INSERT INTO financeiro.faturas (id, contato_id, valor, vencimento, paga)
SELECT g, 1 + g %% %(contatos)s, round((50 + (g * 37) %% 950)::numeric + (g %% 100) / 100.0, 2),
       date '2026-01-05' + (g %% 365), g %% 4 <> 0
FROM generate_series(1, %(faturas)s) g ON CONFLICT (id) DO NOTHING;

INSERT INTO marketing.campanhas (id, nome, canal, criada_em)
SELECT g, 'Campanha ' || g, (ARRAY['whatsapp', 'email', 'sms'])[1 + g %% 3],
       timestamptz '2026-01-01' + g * interval '5 days'
FROM generate_series(1, %(campanhas)s) g ON CONFLICT (id) DO NOTHING;

INSERT INTO marketing.envios (campanha_id, contato_id, enviado_em)
SELECT 1 + g %% %(campanhas)s, 1 + (g * 7) %% %(contatos)s, timestamptz '2026-02-01' + g * interval '1 minute'
FROM generate_series(1, %(envios)s) g ON CONFLICT DO NOTHING;

INSERT INTO analytics.eventos (id, contato_id, tipo, payload, ocorreu_em)
SELECT g, 1 + g %% %(contatos)s, (ARRAY['page_view', 'click', 'login', 'compra'])[1 + g %% 4],
       jsonb_build_object('pagina', '/p/' || (g %% 50), 'sessao', md5(%(tenant)s || ':ev:' || g),
                          'duracao_ms', (g * 13) %% 5000),
       timestamptz '2023-06-01' + g * interval '17 minutes'
FROM generate_series(1, %(eventos)s) g ON CONFLICT (id) DO NOTHING;

INSERT INTO lgpd.consentimentos (id, contato_id, finalidade, consentimento_dado, registrado_em)
SELECT g, 1 + g %% %(contatos)s, (ARRAY['marketing', 'analytics', 'whatsapp'])[1 + g %% 3], g %% 5 <> 0,
       timestamptz '2022-01-01' + g * interval '6 hours'
FROM generate_series(1, %(consentimentos)s) g ON CONFLICT (id) DO NOTHING;

INSERT INTO lgpd.log_processamento (id, contato_id, operacao, base_legal, processado_em)
SELECT g, 1 + g %% %(contatos)s, (ARRAY['leitura', 'atualizacao', 'exportacao', 'anonimizacao'])[1 + g %% 4],
       (ARRAY['consentimento', 'contrato', 'obrigacao_legal'])[1 + g %% 3],
       timestamptz '2020-01-01' + g * interval '19 hours'
FROM generate_series(1, %(logs)s) g ON CONFLICT (id) DO NOTHING;
"""

_SEQUENCES = (
    "auth.usuarios", "crm.contatos", "whatsapp.mensagens", "agendamento.agendamentos",
    "financeiro.faturas", "marketing.campanhas", "analytics.eventos", "portal.arquivos",
    "lgpd.consentimentos", "lgpd.log_processamento",
)

WHITELABEL = {
    "cor_primaria": "#0f62fe", "cor_secundaria": "#393939", "logo": "media/logo.png",
    "nome_exibicao": None, "dominio": None, "idioma": "pt-BR", "fuso": "America/Sao_Paulo",
    "suporte_email": None,
}


def ensure_roles(settings: Settings, names: TenantNames) -> list[str]:
    """The tenant's application roles (cluster-wide, named under the tenant's role prefix)."""
    roles = [names.role("app"), names.role("leitura")]
    with pg.connection(settings.pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        for role in roles:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if not cur.fetchone():
                cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    return roles


def seed_database(settings: Settings, names: TenantNames, counts: DemoCounts, objects: list[DemoObject]) -> None:
    pg.create_database(settings.pg_dsn, names.database)
    app_role, read_role = ensure_roles(settings, names)
    params = {k: getattr(counts, k) for k in (
        "usuarios", "contatos", "mensagens", "agendamentos", "faturas", "campanhas",
        "envios", "eventos", "consentimentos", "logs")}
    params["tenant"] = names.tenant_id
    with pg.connection(settings.pg_dsn, names.database) as conn, conn.cursor() as cur:
        cur.execute(SCHEMA_DDL)
        for table, condition in _DELETE_BEYOND:
            cur.execute(f"DELETE FROM {table} WHERE {condition}", params)
        cur.execute(_INSERTS, params)
        _seed_files(cur, objects)
        _seed_whitelabel(cur, names)
        for table in _SEQUENCES:
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
        _grant(cur, app_role, read_role)


def _seed_files(cur, objects: list[DemoObject]) -> None:
    cur.execute("CREATE TEMP TABLE wanted (bucket text, object_key text, content_type text, tamanho bigint)")
    cur.executemany(
        "INSERT INTO wanted VALUES (%s, %s, %s, %s)",
        [(o.bucket_suffix, o.key, o.content_type, o.size) for o in objects],
    )
    cur.execute(
        "DELETE FROM portal.arquivos a WHERE NOT EXISTS "
        "(SELECT 1 FROM wanted w WHERE w.bucket = a.bucket AND w.object_key = a.object_key)"
    )
    cur.execute(
        "INSERT INTO portal.arquivos (bucket, object_key, content_type, tamanho) "
        "SELECT bucket, object_key, content_type, tamanho FROM wanted ORDER BY bucket, object_key "
        "ON CONFLICT (bucket, object_key) DO UPDATE SET content_type = EXCLUDED.content_type, "
        "tamanho = EXCLUDED.tamanho"
    )
    cur.execute("DROP TABLE wanted")


def _seed_whitelabel(cur, names: TenantNames) -> None:
    values = dict(WHITELABEL)
    values.update(nome_exibicao=f"Cliente {names.tenant_id}", dominio=f"{names.tenant_id}.kryonix.app",
                  suporte_email=f"suporte@{names.tenant_id}.kryonix.app")
    cur.execute("DELETE FROM whitelabel.configuracoes WHERE NOT (chave = ANY(%s))", (list(values),))
    for key, value in values.items():
        cur.execute(
            "INSERT INTO whitelabel.configuracoes VALUES (%s, %s) "
            "ON CONFLICT (chave) DO UPDATE SET valor = EXCLUDED.valor",
            (key, json.dumps(value)),
        )


def _grant(cur, app_role: str, read_role: str) -> None:
    for schema in MODULE_SCHEMAS:
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(
            sql.Identifier(schema), sql.Identifier(app_role), sql.Identifier(read_role)))
        cur.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(app_role)))
        cur.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(read_role)))
