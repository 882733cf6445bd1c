"""API keys: from the environment (ROUTEROPS_API_KEYS, ROUTEROPS_ADMIN_API_KEYS, comma-separated) or
stored hashed (sha256) in the api_keys table by `routerops keys create NAME [--admin]`.

Scopes: "user" (chat, models, feedback, metrics) and "admin" (everything, incl. reload, ingestion and
feedback management). With no key configured anywhere, requests are refused (401 naming the fix)
unless ROUTEROPS_ALLOW_ANONYMOUS=true, which grants anonymous admin access for local experiments.
Database keys are cached for a few seconds: a revoked key stops working within KEY_CACHE_S.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select

from routerops.db import session_scope
from routerops.db.models import ApiKey
from routerops.settings import Settings

KEY_PREFIX = "rops-"
KEY_CACHE_S = 5.0
SCOPES = ("user", "admin")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str  # user | admin

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --- key management (CLI) -------------------------------------------------------------------------
def create_key(settings: Settings, name: str, admin: bool = False) -> str:
    """Store a new key's hash under NAME; returns the key (shown once, never stored in clear)."""
    if not name or len(name) > 100:
        raise ValueError("a key name is 1 to 100 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_scope(settings) as session:
        if session.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
            raise ValueError(f"a key named {name!r} exists already (revoke it or pick another name)")
        session.add(ApiKey(name=name, key_hash=hash_key(key), scope="admin" if admin else "user"))
    return key


def list_keys(settings: Settings) -> list[ApiKey]:
    with session_scope(settings) as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(settings: Settings, name: str) -> bool:
    with session_scope(settings) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
        if row is None:
            return False
        row.revoked_at = datetime.now(UTC)
        return True


# --- request authentication -----------------------------------------------------------------------
class Authenticator:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._env: dict[str, Principal] = {}
        for i, key in enumerate(settings.api_keys):
            self._env[hash_key(key.get_secret_value())] = Principal(f"env-user-{i + 1}", "user")
        for i, key in enumerate(settings.admin_api_keys):
            self._env[hash_key(key.get_secret_value())] = Principal(f"env-admin-{i + 1}", "admin")
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._any_db_key: tuple[float, bool] = (0.0, False)
        self._lock = threading.Lock()

    def _db_lookup(self, digest: str) -> Principal | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
            if hit and now - hit[0] < KEY_CACHE_S:
                return hit[1]
        with session_scope(self.settings) as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)))
            principal = Principal(row.name, row.scope) if row is not None else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, principal)
        return principal

    def _keys_configured(self) -> bool:
        if self._env:
            return True
        now = time.monotonic()
        checked, found = self._any_db_key
        if now - checked < KEY_CACHE_S:
            return found
        with session_scope(self.settings) as session:
            found = bool(session.scalar(select(func.count(ApiKey.id)).where(ApiKey.revoked_at.is_(None))))
        self._any_db_key = (now, found)
        return found

    def authenticate(self, authorization: str | None, x_api_key: str | None = None) -> Principal:
        """Blocking (may query the database): call from a threadpool."""
        key = None
        if authorization and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        key = key or (x_api_key or "").strip() or None
        if key is None:
            if self.settings.allow_anonymous and not self._keys_configured():
                return Principal("anonymous", "admin")
            if not self._keys_configured():
                raise AuthError(401, "no API keys are configured: create one with `routerops keys create NAME` "
                                     "or set ROUTEROPS_API_KEYS (or ROUTEROPS_ALLOW_ANONYMOUS=true for local use)")
            raise AuthError(401, "missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(key)
        for known, principal in self._env.items():
            if hmac.compare_digest(known, digest):
                return principal
        principal = self._db_lookup(digest)
        if principal is None:
            raise AuthError(401, "invalid or revoked API key")
        return principal
