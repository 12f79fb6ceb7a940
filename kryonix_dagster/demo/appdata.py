"""The demo tenant's application folder: config, media and mobile data."""
from __future__ import annotations

import json

from ..engine.naming import TenantNames
from .plan import EXPECTED_QUEUES, DemoCounts, deterministic_bytes

BIOMETRIC_TEMPLATES_DIR = "mobile/biometric/templates"


def expected_files(names: TenantNames, counts: DemoCounts) -> dict[str, bytes]:
    """Relative path → content."""
    tid = names.tenant_id
    media = {f"media/imagem-{n:03d}.png": deterministic_bytes(f"{tid}/app/{n}", 1024 * (n % 40 + 1))
             for n in range(1, counts.app_media_files + 1)}
    media["media/logo.png"] = deterministic_bytes(f"{tid}/logo", 4096)
    app_config = {
        "tenant": tid,
        "queues": list(EXPECTED_QUEUES),
        "files": sorted(media),
        "offline": {"enabled": True, "max_forms": 50},
    }
    files: dict[str, bytes] = {
        "config/app.json": _json(app_config),
        "config/whitelabel.json": _json({"tema": "escuro", "logo": "media/logo.png", "idioma": "pt-BR"}),
        "mobile/pwa/manifest.json": _json({
            "name": f"KRYONIX {tid}", "short_name": "KRYONIX", "start_url": "/", "display": "standalone",
            "icons": [{"src": "/media/logo.png", "sizes": "192x192", "type": "image/png"}]}),
        "mobile/push/config.json": _json({"provider": "fcm", "topic": f"cliente-{tid}", "quiet_hours": "22-07"}),
        "mobile/biometric/settings.json": _json({
            "enabled": True, "preferred_method": "fingerprint", "fallback_configured": True,
            "security_settings": {"max_attempts": 5, "lockout_minutes": 15}}),
        "mobile/sync_queue/export-0001.json": _json({
            "pending_uploads": 2, "pending_updates": 5, "failed_syncs": 0, "retry_queue": []}),
    }
    for n in range(1, counts.offline_forms + 1):
        files[f"mobile/offline_forms/formulario-{n:03d}.json"] = _json(
            {"form": f"visita-{n}", "campos": {"nome": f"Contato {n}", "observacao": "ç ã é"}})
    # Templates exist on disk but must never reach a backup.
    for n in range(1, 4):
        files[f"{BIOMETRIC_TEMPLATES_DIR}/usuario-{n}.tpl"] = deterministic_bytes(f"{tid}/bio/{n}", 512)
    files.update(media)
    return files


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True).encode()


def seed_appdata(names: TenantNames, counts: DemoCounts) -> None:
    root = names.app_data_dir
    wanted = expected_files(names, counts)
    root.mkdir(parents=True, exist_ok=True)
    for path in sorted(root.rglob("*"), reverse=True):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    for rel, content in wanted.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != content:
            target.write_bytes(content)

