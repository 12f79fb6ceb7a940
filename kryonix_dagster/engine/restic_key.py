"""restic key files, read and written in restic's documented format (doc/design.rst, "Keys,
Encryption and MAC"), as pure functions on bytes.

restic calibrates scrypt at `init` for a human passphrase (seen N=32768, r=8, p=10: ~0.5 s of
CPU each time any restic process opens the repository). Our repository passwords are 256-bit
random secrets (engine/keys.py): stretching them adds nothing, so each repository gets a key
file for the same master key with cheap parameters (`CHEAP`), which the stock binary reads.

Layout: scrypt(password, salt, N, r, p) gives 64 bytes = AES-256 key (32) ‖ Poly1305-AES `k`
(16) ‖ `r` (16). A key file is JSON {created, username, hostname, kdf: "scrypt", N, r, p,
salt, data} with `data` = base64(IV(16) ‖ AES-256-CTR(master-key JSON) ‖ tag(16)), the tag
being Poly1305 over the ciphertext with key r ‖ AES_k(IV). The file's name in `keys/` is the
SHA-256 (hex) of its bytes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import poly1305
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SALT_BYTES = 64  # restic's saltLength; it refuses other sizes
IV_BYTES = 16
TAG_BYTES = 16


@dataclass(frozen=True)
class KdfParams:
    n: int
    r: int
    p: int

    @property
    def cost(self) -> int:
        """Proportional to scrypt's CPU time."""
        return self.n * self.r * self.p


# ~4 ms in Python's scrypt on a 2-core machine; restic 0.14 accepts it (FACTS.md).
CHEAP = KdfParams(n=2 ** 10, r=8, p=1)


class KeyFileError(ValueError):
    """Not a restic key file we can read (malformed JSON, unknown KDF, short data)."""


class WrongPassword(ValueError):
    """The MAC does not verify: wrong password, or the key file was altered."""


@dataclass(frozen=True)
class KeyFile:
    """One file of a repository's `keys/` folder."""

    name: str  # SHA-256 hex of `raw`: restic's key id
    raw: bytes
    params: KdfParams
    salt: bytes
    data: bytes

    @property
    def is_cheap(self) -> bool:
        return self.params.cost <= CHEAP.cost


def key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def parse_key_file(raw: bytes) -> KeyFile:
    try:
        doc = json.loads(raw)
        if doc.get("kdf") != "scrypt":
            raise KeyFileError(f"unsupported KDF {doc.get('kdf')!r}")
        params = KdfParams(n=int(doc["N"]), r=int(doc["r"]), p=int(doc["p"]))
        salt = base64.b64decode(doc["salt"], validate=True)
        data = base64.b64decode(doc["data"], validate=True)
    except KeyFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError(f"malformed key file ({type(exc).__name__})") from None
    if len(data) < IV_BYTES + TAG_BYTES:
        raise KeyFileError("key file data too short")
    return KeyFile(name=key_id(raw), raw=raw, params=params, salt=salt, data=data)


@dataclass(frozen=True)
class _UserKey:
    encrypt: bytes  # AES-256
    mac_k: bytes  # AES-128 key that encrypts the IV into Poly1305's `s`
    mac_r: bytes  # Poly1305's `r` (clamped by Poly1305 itself)


def _derive(password: str, salt: bytes, params: KdfParams) -> _UserKey:
    out = hashlib.scrypt(password.encode(), salt=salt, n=params.n, r=params.r, p=params.p,
                         maxmem=256 * params.n * params.r * params.p + 2 ** 20, dklen=64)
    return _UserKey(encrypt=out[:32], mac_k=out[32:48], mac_r=out[48:64])


def _poly1305_key(key: _UserKey, iv: bytes) -> bytes:
    """Poly1305-AES: r ‖ AES_k(IV)."""
    encryptor = Cipher(algorithms.AES(key.mac_k), modes.ECB()).encryptor()
    return key.mac_r + encryptor.update(iv) + encryptor.finalize()


def _ctr(key: _UserKey, iv: bytes, data: bytes) -> bytes:
    cipher = Cipher(algorithms.AES(key.encrypt), modes.CTR(iv)).encryptor()
    return cipher.update(data) + cipher.finalize()


def open_master_key(key_file: KeyFile, password: str) -> bytes:
    """The repository's master key (restic's JSON, bytes as stored) that `key_file` wraps;
    raises WrongPassword if the MAC does not verify."""
    key = _derive(password, key_file.salt, key_file.params)
    iv, body = key_file.data[:IV_BYTES], key_file.data[IV_BYTES:]
    ciphertext, tag = body[:-TAG_BYTES], body[-TAG_BYTES:]
    try:
        poly1305.Poly1305.verify_tag(_poly1305_key(key, iv), ciphertext, tag)
    except InvalidSignature:
        raise WrongPassword("wrong password or altered key file") from None
    master = _ctr(key, iv, ciphertext)
    _check_master_key(master)
    return master


def _check_master_key(master: bytes) -> None:
    try:
        doc = json.loads(master)
        sizes = (len(base64.b64decode(doc["encrypt"])), len(base64.b64decode(doc["mac"]["k"])),
                 len(base64.b64decode(doc["mac"]["r"])))
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"master key is not restic's JSON ({type(exc).__name__})") from None
    if sizes != (32, 16, 16):
        raise KeyFileError(f"master key has unexpected sizes {sizes}")


def same_master_key(a: bytes, b: bytes) -> bool:
    return json.loads(a) == json.loads(b)


def new_key_file(master: bytes, password: str, params: KdfParams = CHEAP, username: str = "kryonix",
                 hostname: str = "kryonix", created: datetime | None = None) -> KeyFile:
    """A key file wrapping `master` under `password` with the given KDF parameters."""
    _check_master_key(master)
    salt = os.urandom(SALT_BYTES)
    iv = os.urandom(IV_BYTES)
    key = _derive(password, salt, params)
    ciphertext = _ctr(key, iv, master)
    data = iv + ciphertext + poly1305.Poly1305.generate_tag(_poly1305_key(key, iv), ciphertext)
    doc = {
        "created": (created or datetime.now(timezone.utc)).isoformat(),
        "username": username,
        "hostname": hostname,
        "kdf": "scrypt",
        "N": params.n,
        "r": params.r,
        "p": params.p,
        "salt": base64.b64encode(salt).decode(),
        "data": base64.b64encode(data).decode(),
    }
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return parse_key_file(raw)
