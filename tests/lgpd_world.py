"""A small LGPD world: a tenant database in the demo schema with a few rows whose ages are
relative to now(), so which rows are past their period is known exactly.

Contacts (rule: anonymise after 3 years unless an active consent):
  1 old, no consent            -> anonymised
  2 old, active consent        -> kept
  3 old, only a refused consent-> anonymised
  4 recent                     -> kept
  5 old, already anonymised    -> not counted again
  6 just under 3 years (35 months, a month of margin) -> kept
Processing logs (delete after 5 years): 101 six years, 102 five years + 10 days -> gone; 103 four years kept.
Analytics events (delete after 2 years): 201 three years, 202 two years + 30 days -> gone; 203 one year kept.
"""
from __future__ import annotations

import secrets

from kryonix_dagster.demo.database import SCHEMA_DDL
from kryonix_dagster.engine import pg, registry
from kryonix_dagster.engine.naming import names_for

from .helpers import forget_registry_rows

ANONYMISED = ("ANONIMIZADO", "anonimizado@exemplo.com", "+55000000000")
ANONYMISED_IDS = {1, 3}
KEPT_IDS = {2, 4, 6}
EXPECTED = {"contatos_inativos": 2, "logs_processamento": 2, "eventos_analytics": 2}
TABLES = ("crm.contatos", "lgpd.consentimentos", "lgpd.log_processamento", "analytics.eventos")

ROWS = """
INSERT INTO auth.usuarios (id, email, nome, senha_hash, criado_em) VALUES (1, 'u@x.test', 'U', 'h', now());
INSERT INTO crm.contatos (id, nome, email, telefone, ultimo_contato, responsavel_id) VALUES
  (1, 'Ana Antiga', 'ana@exemplo.com.br', '+5511900000001', now() - interval '4 years', 1),
  (2, 'Bia Consentiu', 'bia@exemplo.com.br', '+5511900000002', now() - interval '4 years', 1),
  (3, 'Caio Recusou', 'caio@exemplo.com.br', '+5511900000003', now() - interval '5 years', 1),
  (4, 'Duda Recente', 'duda@exemplo.com.br', '+5511900000004', now() - interval '1 year', 1),
  (5, 'ANONIMIZADO', 'anonimizado@exemplo.com', '+55000000000', now() - interval '6 years', 1),
  (6, 'Edu Quase', 'edu@exemplo.com.br', '+5511900000006', now() - interval '35 months', 1);
INSERT INTO lgpd.consentimentos (id, contato_id, finalidade, consentimento_dado, registrado_em) VALUES
  (1, 2, 'marketing', true, now() - interval '4 years'),
  (2, 3, 'marketing', false, now() - interval '5 years'),
  (3, 2, 'analytics', false, now() - interval '4 years');
INSERT INTO lgpd.log_processamento (id, contato_id, operacao, base_legal, processado_em) VALUES
  (101, 1, 'leitura', 'consentimento', now() - interval '6 years'),
  (102, 2, 'leitura', 'contrato', now() - interval '5 years 10 days'),
  (103, 4, 'atualizacao', 'contrato', now() - interval '4 years');
INSERT INTO analytics.eventos (id, contato_id, tipo, payload, ocorreu_em) VALUES
  (201, 1, 'login', '{}', now() - interval '3 years'),
  (202, 4, 'click', '{}', now() - interval '2 years 30 days'),
  (203, 4, 'compra', '{}', now() - interval '1 year');
SELECT setval(pg_get_serial_sequence('lgpd.log_processamento', 'id'), 1000);
"""


def new_tenant_id() -> str:
    return "lg" + secrets.token_hex(5)


def seed_lgpd_tenant(settings, tenant_id: str, drop: tuple[str, ...] = ()) -> str:
    """Register the tenant, create its database with the demo schema and the rows above;
    `drop` names tables to remove (a tenant whose schema lacks them). Returns the database."""
    drop_lgpd_tenant(settings, tenant_id)
    registry.add_tenant(settings, tenant_id, f"LGPD {tenant_id}", "basic")
    database = names_for(settings, tenant_id).database
    pg.create_database(settings.pg_dsn, database)
    with pg.connection(settings.pg_dsn, database) as conn, conn.cursor() as cur:
        cur.execute(SCHEMA_DDL)
        cur.execute(ROWS)
        for table in drop:
            cur.execute(f"DROP TABLE {table} CASCADE")
    return database


def checksums(psql, database: str, tables: tuple[str, ...] = TABLES) -> dict[str, str]:
    """md5 of each table's rows in id order, read through psql (independent of the product)."""
    query = " UNION ALL ".join(f"(SELECT '{t}', md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM {t} x)"
                               for t in tables)
    return dict(line.split("|", 1) for line in psql(database, query).splitlines())


def drop_lgpd_tenant(settings, tenant_id: str) -> None:
    """Everything such a tenant owns: its database, its registry, lease and audit rows (it
    never touches the other services: no S3 server needed)."""
    pg.drop_database(settings.pg_dsn, names_for(settings, tenant_id).database)
    forget_registry_rows(settings, tenant_id)
