"""What a demo tenant holds at a given scale: counts and deterministic content.

Everything is derived from (tenant id, scale), so seeding twice gives the same state and
seeding another scale resizes to exactly that state.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

MODULE_SCHEMAS = (
    "auth", "crm", "whatsapp", "agendamento", "financeiro",
    "marketing", "analytics", "portal", "whitelabel", "lgpd",
)
# Queues the tenant's application expects (written into its app config).
EXPECTED_QUEUES = ("mobile.sync", "whatsapp.outbound", "notificacoes", "dead.letters")
MULTIPART_THRESHOLD = 5 * 1024 * 1024  # S3's minimum part size: larger objects are uploaded in parts
MULTIPART_OBJECT_SIZE = 6 * 1024 * 1024 + 4321
BUCKET_SUFFIXES = ("media", "documentos")


def _count(base: int, scale: float) -> int:
    return max(1, round(base * scale))


@dataclass(frozen=True)
class DemoCounts:
    usuarios: int
    contatos: int
    mensagens: int
    agendamentos: int
    faturas: int
    campanhas: int
    envios: int
    eventos: int
    consentimentos: int
    logs: int
    media_objects: int
    document_objects: int
    sessions: int
    cached_contacts: int
    ranking: int
    stream_entries: int
    notifications: int
    sync_messages: int
    whatsapp_messages: int
    notification_messages: int
    app_media_files: int
    offline_forms: int

    @classmethod
    def for_scale(cls, scale: float) -> "DemoCounts":
        return cls(
            usuarios=_count(25, scale),
            contatos=_count(2000, scale),
            mensagens=_count(3000, scale),
            agendamentos=_count(600, scale),
            faturas=_count(800, scale),
            campanhas=_count(12, scale),
            envios=_count(1500, scale),
            eventos=_count(4000, scale),
            consentimentos=_count(1500, scale),
            logs=_count(2500, scale),
            media_objects=_count(20, scale),
            document_objects=_count(10, scale),
            sessions=_count(50, scale),
            cached_contacts=_count(200, scale),
            ranking=_count(100, scale),
            stream_entries=_count(100, scale),
            notifications=_count(100, scale),
            sync_messages=_count(50, scale),
            whatsapp_messages=_count(30, scale),
            notification_messages=_count(20, scale),
            app_media_files=_count(5, scale),
            offline_forms=_count(5, scale),
        )


@dataclass(frozen=True)
class DemoObject:
    bucket_suffix: str
    key: str
    size: int
    content_type: str
    metadata: dict[str, str]
    tags: dict[str, str]

    def content(self, tenant_id: str) -> bytes:
        return deterministic_bytes(f"{tenant_id}/{self.bucket_suffix}/{self.key}", self.size)


def deterministic_bytes(seed: str, size: int) -> bytes:
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    return rng.randbytes(size)


def demo_objects(tenant_id: str, counts: DemoCounts) -> list[DemoObject]:
    """The objects of the tenant's two buckets, including awkward keys and one multipart object."""
    rng = random.Random(f"objects:{tenant_id}")
    objects: list[DemoObject] = []
    for n in range(1, counts.media_objects + 1):
        ext, ctype = (("jpg", "image/jpeg"), ("png", "image/png"), ("webp", "image/webp"))[n % 3]
        objects.append(DemoObject(
            "media", f"contatos/{n % 7}/foto-{n:05d}.{ext}", rng.randint(512, 96 * 1024), ctype,
            {"uploaded-by": f"usuario-{n % 5 + 1}", "origem": "app"}, {"tipo": "foto"},
        ))
    for n in range(1, counts.document_objects + 1):
        objects.append(DemoObject(
            "documentos", f"faturas/{2026 - n % 3}/fatura-{n:05d}.pdf", rng.randint(4 * 1024, 160 * 1024),
            "application/pdf", {"uploaded-by": "financeiro", "contrato": f"C-{n:05d}"}, {"tipo": "fatura"},
        ))
    objects += [
        DemoObject("documentos", "contratos/2026/contrato assinado.pdf", 20_000, "application/pdf",
                   {"uploaded-by": "juridico"}, {"tipo": "contrato", "sigilo": "alto"}),
        DemoObject("documentos", "contratos/ação judicial/petição ç.pdf", 9_000, "application/pdf",
                   {"uploaded-by": "juridico"}, {"tipo": "contrato"}),
        DemoObject("documentos", "arquivo/a/b/c/d/e/f/g/profundo.txt", 321, "text/plain; charset=utf-8",
                   {}, {}),
        DemoObject("documentos", "notas/relatorio..final v2.txt", 1_234, "text/plain", {}, {}),
        DemoObject("documentos", "backups/base-conhecimento.tar", MULTIPART_OBJECT_SIZE,
                   "application/x-tar", {"uploaded-by": "suporte"}, {"tipo": "arquivo"}),
        DemoObject("media", "vazio/placeholder.txt", 0, "text/plain", {"nota": "objeto vazio"}, {}),
    ]
    return objects
