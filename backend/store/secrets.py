"""Secrets at rest: Label Studio tokens encrypted in the store, per-project webhook secrets derived.

One master key: `SECRET_KEY` when set (hashed), otherwise 32 random bytes generated on first start in
`DATA_DIR/secret.key` (mode 0600, created atomically so that several workers starting at once agree).
From it come
- the Fernet key (`cryptography`) that encrypts access tokens in the `projects` table, stored as
  `enc:v1:<fernet token>`; a value without that prefix is a clear-text row from an older store;
- each project's webhook secret, HMAC-SHA256(master, project id): every worker and replica computes
  the same value without storing or coordinating it.
Replicas that share a database must share SECRET_KEY (or the key file). Losing the key loses the stored
tokens (Label Studio sends them again on its next /setup) and changes the webhook secrets (installed
again on the next /setup).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets as _random
import stat
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "enc:v1:"
KEY_FILE = "secret.key"


class SecretsError(RuntimeError):
    """A stored secret cannot be decrypted (another key), or encryption is unavailable."""


def load_or_create_key_file(data_dir: Path) -> bytes:
    """The 32-byte key in DATA_DIR/secret.key, made on first call with mode 0600 (atomic: a worker that
    loses the race reads the winner's key)."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.{_random.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, base64.b64encode(_random.token_bytes(32)))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails when another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by others (mode %o); now 0600", path, mode)
    key = base64.b64decode(path.read_bytes().strip())
    if len(key) < 32:
        raise SecretsError(f"{path} does not hold a 32-byte key")
    return key


class Secrets:
    """Encrypts and decrypts tokens, derives webhook secrets. Built once by the composition root."""

    def __init__(self, master: bytes) -> None:
        self._master = master
        self._fernet: Any = None

    @classmethod
    def from_settings(cls, secret_key: str | None, data_dir: Path) -> Secrets:
        if secret_key:
            return cls(hashlib.sha256(b"lsllm-secret-key:" + secret_key.encode()).digest())
        return cls(load_or_create_key_file(data_dir))

    def _derive(self, purpose: str) -> bytes:
        return hmac.new(self._master, purpose.encode(), hashlib.sha256).digest()

    def _cipher(self) -> Any:
        if self._fernet is None:
            try:
                from cryptography.fernet import Fernet
            except ImportError as exc:  # declared in pyproject.toml; an old virtualenv may lack it
                raise SecretsError(
                    "Label Studio tokens are encrypted at rest with the `cryptography` package: "
                    "reinstall the backend (pip install -e .)"
                ) from exc
            self._fernet = Fernet(base64.urlsafe_b64encode(self._derive("token-encryption")))
        return self._fernet

    @staticmethod
    def is_encrypted(stored: str | None) -> bool:
        return bool(stored) and str(stored).startswith(PREFIX)

    def encrypt(self, value: str | None) -> str | None:
        if not value:
            return None
        return PREFIX + self._cipher().encrypt(value.encode()).decode("ascii")

    def decrypt(self, stored: str | None) -> str | None:
        """The clear value; a clear-text value from an older store is returned as it is."""
        if not stored:
            return None
        if not self.is_encrypted(stored):
            return stored
        from cryptography.fernet import InvalidToken

        try:
            return self._cipher().decrypt(stored[len(PREFIX):].encode("ascii")).decode()
        except (InvalidToken, ValueError):
            raise SecretsError(
                "a stored Label Studio token was encrypted with another key (SECRET_KEY or DATA_DIR/secret.key "
                "changed); it is ignored until Label Studio sends it again in /setup"
            ) from None

    def webhook_secret(self, project_id: str) -> str:
        """The project's webhook secret (hex): the same in every process holding the same key."""
        return hmac.new(self._derive("webhook-secret"), project_id.encode(), hashlib.sha256).hexdigest()
