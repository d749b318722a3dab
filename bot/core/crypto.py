"""PHI at rest: AES-GCM sealing with key ids and record binding, and keyed hashes.

Ciphertext format: ``pb1.<key id>.<base64url(nonce || ciphertext+tag)>``. The associated
data is ``<record>|<field>``, so a ciphertext copied into another record or field fails to
open. Every key in the ring opens ciphertexts made with it; only the first (active) key seals,
which is how keys rotate: put the new key first, keep the old ones until re-sealed data ages
out.

Look-ups (conversation keys, dedupe ids) use HMAC-SHA256 under a separate lookup key, which
must never rotate: changing it orphans every stored conversation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bot.core.errors import CryptoError, SecretsError

_PREFIX = "pb1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
DEV_KEY_FILE = "dev-keys.json"


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Sealer:
    """Seals and opens PHI strings, bound to (record, field)."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise SecretsError("at least one data key is required")
        for key_id, key in keys:
            if not _KEY_ID.match(key_id):
                raise SecretsError("data key ids are 1-32 characters of A-Z a-z 0-9 _ -")
            if len(key) != 32:
                raise SecretsError(f"data key {key_id!r} must be 32 bytes (AES-256)")
        self._active_id = keys[0][0]
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}

    @property
    def active_key_id(self) -> str:
        return self._active_id

    def seal(self, plaintext: str, *, record: str, field: str) -> str:
        nonce = os.urandom(12)
        aad = f"{record}|{field}".encode()
        body = self._keys[self._active_id].encrypt(nonce, plaintext.encode(), aad)
        return f"{_PREFIX}.{self._active_id}.{_b64e(nonce + body)}"

    def open(self, token: str, *, record: str, field: str) -> str:
        try:
            prefix, key_id, payload = token.split(".", 2)
        except ValueError:
            raise CryptoError("not a sealed value") from None
        aead = self._keys.get(key_id)
        if prefix != _PREFIX or aead is None:
            raise CryptoError(f"unknown key id {key_id!r}")
        raw = _b64d(payload)
        try:
            plain = aead.decrypt(raw[:12], raw[12:], f"{record}|{field}".encode())
        except InvalidTag:
            raise CryptoError(f"sealed value does not open for field {field!r}") from None
        return plain.decode()

    def seal_optional(self, value: str | None, *, record: str, field: str) -> str | None:
        return None if value is None else self.seal(value, record=record, field=field)

    def open_optional(self, token: str | None, *, record: str, field: str) -> str | None:
        return None if token is None else self.open(token, record=record, field=field)


class Hasher:
    """Keyed hashes for identifiers that must be looked up but never stored in clear."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise SecretsError("the lookup key must be at least 32 bytes")
        self._key = key

    def derive_key(self, purpose: str) -> bytes:
        """A separate 32-byte key for another use (e.g. audit MACs), from the lookup key."""
        return hmac.new(self._key, f"derive\x00{purpose}".encode(), hashlib.sha256).digest()

    def digest(self, value: str, *, purpose: str) -> str:
        mac = hmac.new(self._key, f"{purpose}\x00{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]


@dataclass(frozen=True)
class KeyMaterial:
    sealer: Sealer
    hasher: Hasher
    session_secret: bytes
    generated_dev_keys: bool


def parse_data_keys(value: str) -> list[tuple[str, bytes]]:
    """``id:base64key,id2:base64key`` (first = active). Errors never echo key material."""
    keys: list[tuple[str, bytes]] = []
    for position, item in enumerate(part.strip() for part in value.split(",") if part.strip()):
        key_id, sep, encoded = item.partition(":")
        if not sep:
            raise SecretsError(f"PATIENTBOT_DATA_KEYS entry {position + 1} is not id:base64key")
        try:
            key = _b64d(encoded.strip())
        except ValueError:
            raise SecretsError(f"PATIENTBOT_DATA_KEYS key {key_id!r} is not base64") from None
        keys.append((key_id.strip(), key))
    if not keys:
        raise SecretsError("PATIENTBOT_DATA_KEYS is empty")
    return keys


def _decode_secret(name: str, value: str) -> bytes:
    try:
        raw = _b64d(value.strip())
    except ValueError:
        raise SecretsError(f"{name} is not base64") from None
    if len(raw) < 32:
        raise SecretsError(f"{name} must decode to at least 32 bytes")
    return raw


def new_key() -> str:
    return _b64e(secrets.token_bytes(32))


def load_key_material(env: dict[str, str], data_dir: Path) -> KeyMaterial:
    """Keys from the environment; without them, development keys kept under `data_dir`.

    Whether development keys are acceptable is the caller's decision (production refuses).
    """
    data_keys = env.get("PATIENTBOT_DATA_KEYS")
    if data_keys:
        for name in ("PATIENTBOT_LOOKUP_KEY", "PATIENTBOT_SESSION_SECRET"):
            if not env.get(name):
                raise SecretsError(f"PATIENTBOT_DATA_KEYS is set but {name} is not")
        return KeyMaterial(
            sealer=Sealer(parse_data_keys(data_keys)),
            hasher=Hasher(_decode_secret("PATIENTBOT_LOOKUP_KEY", env["PATIENTBOT_LOOKUP_KEY"])),
            session_secret=_decode_secret(
                "PATIENTBOT_SESSION_SECRET", env["PATIENTBOT_SESSION_SECRET"]
            ),
            generated_dev_keys=False,
        )
    path = data_dir / DEV_KEY_FILE
    if path.exists():
        stored = json.loads(path.read_text())
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        stored = {"data_key": new_key(), "lookup_key": new_key(), "session_secret": new_key()}
        # Write-then-rename with owner-only permissions: a half-written key file would lock
        # the development data away for good.
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored))
        tmp.chmod(0o600)
        tmp.replace(path)
    return KeyMaterial(
        sealer=Sealer([("dev", _b64d(stored["data_key"]))]),
        hasher=Hasher(_b64d(stored["lookup_key"])),
        session_secret=_b64d(stored["session_secret"]),
        generated_dev_keys=True,
    )
