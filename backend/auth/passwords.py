"""Password hashing (argon2), random secrets and the digests stored in their place."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from backend.config import get_settings

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_secret(prefix: str) -> str:
    """A random secret such as ``cur_3vQ…``; only its :func:`digest` is stored."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def session_digest(secret: str) -> str:
    """What is stored for a browser session's secret: HMAC-SHA256 keyed with ``CURATORE_SECRET_KEY``, so that
    a copy of the database alone can neither find nor forge a session (and a new secret key ends them all)."""
    key = get_settings().secret_key.encode()
    return hmac.new(key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
