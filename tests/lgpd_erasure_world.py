"""One small tenant with a person in every service, backed up ONCE, shared by the erasure tests.

Person 7 (`contato7@exemplo.com.br`) is the one erased; person 8 is the control who must stay
intact. Both have rows in every table the rules name, a cached Redis key, an object under
`contatos/{id}/` in the media bucket and a folder under the app data's `contatos/{id}`.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

import pytest
import redis

from kryonix_dagster.demo.appdata import seed_appdata
from kryonix_dagster.demo.cache import seed_cache
from kryonix_dagster.demo.database import seed_database
from kryonix_dagster.demo.objects import seed_objects
from kryonix_dagster.demo.plan import DemoCounts, demo_objects
from kryonix_dagster.engine import registry, services
from kryonix_dagster.engine.naming import names_for
from kryonix_dagster.engine.session import run_backup
from kryonix_dagster.engine.tiers import TIERS

from . import observe
from .helpers import purge_tenant

ERASED, KEPT = 7, 8
EMAIL = f"contato{ERASED}@exemplo.com.br"
PHONE_KEPT = "+55119" + f"{KEPT:08d}"
PERSON_TABLES = ("whatsapp.mensagens", "agendamento.agendamentos", "marketing.envios", "analytics.eventos",
                 "lgpd.consentimentos")


@dataclass
class World:
    settings: object
    tenant: str  # backed up once, then person 7 erased
    into: str  # a registered tenant to restore --into
    session: str
    outputs: list[str] = field(default_factory=list)  # every CLI stdout/stderr, for the secrecy check
    steps: dict = field(default_factory=dict)  # shared steps, each done once whichever test needs it first

    def run(self, cli, *args) -> object:
        result = cli(*args)
        self.outputs += [result.stdout, result.stderr]
        return result

    def erased(self, cli) -> tuple[dict, dict, dict]:
        """Person 7 erased by e-mail through the CLI (once): (certificate, counts before, person 8 before)."""
        if "erase" not in self.steps:
            before = person_counts(self.settings, self.tenant, ERASED)
            kept = person_counts(self.settings, self.tenant, KEPT)
            result = self.run(cli, "lgpd", "erase", self.tenant, "--subject", f"email={EMAIL}", "--yes", "--json")
            assert result.returncode == 0, result.stderr
            self.steps["erase"] = (json.loads(result.stdout), before, kept)
        return self.steps["erase"]

    def restored_into(self, cli, services: str):
        """The old restore point restored --into the other tenant (once)."""
        if "into" not in self.steps:
            self.erased(cli)
            self.steps["into"] = self.run(cli, "restore", self.tenant, "--snapshot", self.session, "--into", self.into,
                                          "--services", services, "--yes")
        return self.steps["into"]


def add_person_files(settings, tenant_id: str) -> None:
    names = names_for(settings, tenant_id)
    client = services.s3_client(settings)
    for person in (ERASED, KEPT):
        client.put_object(Bucket=names.bucket("media"), Key=f"contatos/{person}/foto.jpg", Body=f"foto {person}".encode())
        folder = names.app_data_dir / "contatos" / str(person)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ficha.txt").write_text(f"ficha do contato {person}\n")
    keys = ", ".join(f"('media', 'contatos/{p}/foto.jpg', 'image/jpeg', {len(f'foto {p}')})" for p in (ERASED, KEPT))
    observe.psql(names.database, f"INSERT INTO portal.arquivos (bucket, object_key, content_type, tamanho) VALUES {keys}")


def person_counts(settings, tenant_id: str, person: int) -> dict:
    """Where the person is, through independent clients (psql, redis, boto3, the file system)."""
    names = names_for(settings, tenant_id)
    db = names.database
    counts = {t: int(observe.psql(db, f"SELECT count(*) FROM {t} WHERE contato_id = {person}")) for t in PERSON_TABLES}
    counts["crm.contatos(identifiable)"] = int(observe.psql(
        db, f"SELECT count(*) FROM crm.contatos WHERE id = {person} AND email <> 'anonimizado@exemplo.com'"))
    counts["lgpd.log_processamento"] = int(observe.psql(
        db, f"SELECT count(*) FROM lgpd.log_processamento WHERE contato_id = {person}"))
    counts["financeiro.faturas(kept)"] = int(observe.psql(
        db, f"SELECT count(*) FROM financeiro.faturas WHERE contato_id = {person}"))
    r = redis.Redis.from_url(settings.redis_url)
    counts["redis"] = r.exists(f"{names.redis_prefix}contato:{person}")
    s3 = observe.s3(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    listed = s3.list_objects_v2(Bucket=names.bucket("media"), Prefix=f"contatos/{person}/")
    counts["objects"] = listed.get("KeyCount", 0)
    counts["appdata"] = int((names.app_data_dir / "contatos" / str(person)).exists())
    return counts


def absent(counts: dict) -> bool:
    return all(v == 0 for k, v in counts.items() if k != "financeiro.faturas(kept)")


def seed_without_messaging(settings, tenant_id: str, scale: float) -> None:
    """The demo tenant minus RabbitMQ (the rules name no person location in messages)."""
    names, counts = names_for(settings, tenant_id), DemoCounts.for_scale(scale)
    objects = demo_objects(tenant_id, counts)
    registry.ensure_tenant(settings, tenant_id, f"Cliente {tenant_id}", "basic")
    seed_database(settings, names, counts, objects)
    seed_objects(services.s3_client(settings), names, objects, settings.s3_region)
    seed_cache(services.redis_client(settings), names, counts)
    seed_appdata(names, counts)


def backed_up(settings, tenant: str) -> str:
    """The tenant seeded (person 7 and 8 everywhere but RabbitMQ) and backed up once: its session."""
    seed_without_messaging(settings, tenant, scale=0.05)
    add_person_files(settings, tenant)
    session = run_backup(settings, tenant, "full", tiers=tuple(t for t in TIERS if t.name != "rabbitmq"))
    assert session.success, session.error
    return session.session_id


@pytest.fixture(scope="session")  # once per worker: xdist may interleave other modules
def world(settings):
    stem = "e" + secrets.token_hex(4)
    tenant, into = f"{stem}a", f"{stem}b"
    for tid in (tenant, into):
        purge_tenant(settings, tid)
    try:
        session = backed_up(settings, tenant)
        registry.ensure_tenant(settings, into, "Into", "basic")
        yield World(settings, tenant, into, session)
    finally:
        for tid in (tenant, into):
            purge_tenant(settings, tid)


@pytest.fixture
def rewrite_world(settings, tenant_factory):
    """A world of the rewrite test's own: rewriting changes the restore point the other tests
    restore from (their person would no longer come back to be re-erased)."""
    tenant = tenant_factory("w")
    return World(settings, tenant, "", backed_up(settings, tenant))
