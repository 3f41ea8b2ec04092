"""Named API tokens with a role, stored as the sha256 of a random secret.

The secret is shown once, when the token is created; afterwards only its hash
exists. Roles are ordered: a viewer reads, an operator also changes the
inventory, configuration and VMs, an admin also manages tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetboot.api.models import ApiToken
from fleetboot.errors import FleetbootError

ROLES = ("viewer", "operator", "admin")
PREFIX = "fbt_"


class TokenError(FleetbootError):
    pass


class TokenNotFound(TokenError):
    pass


@dataclass(frozen=True)
class TokenView:
    name: str
    role: str
    created_at: float
    created_by: str
    revoked_at: float | None


@dataclass(frozen=True)
class Caller:
    """Who sent an API request, once the token checked out."""

    name: str  # the token's name ("admin-token" for security.admin_token)
    role: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    return role


def _view(row: ApiToken) -> TokenView:
    return TokenView(row.name, row.role, row.created_at, row.created_by, row.revoked_at)


def create_token(session: Session, name: str, role: str, created_by: str = "") -> tuple[
        TokenView, str]:
    """A new token; returns it and its secret (shown once, never stored)."""
    check_role(role)
    if not name or len(name) > 63 or not name.replace("-", "").replace("_", "").replace(
            ".", "").isalnum():
        raise TokenError("a token name is 1 to 63 letters, digits, '-', '_' or '.'")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} exists; revoke it first or pick another name")
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role, token_hash=hash_secret(secret), created_at=time.time(),
                   created_by=created_by[:127])
    session.add(row)
    session.flush()
    return _view(row), secret


def list_tokens(session: Session, include_revoked: bool = False) -> list[TokenView]:
    query = select(ApiToken).order_by(ApiToken.name)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return [_view(r) for r in session.scalars(query)]


def revoke_token(session: Session, name: str) -> TokenView:
    row = session.scalar(select(ApiToken).where(ApiToken.name == name,
                                                ApiToken.revoked_at.is_(None)))
    if row is None:
        raise TokenNotFound(f"no active token named {name!r}; `fleetboot token list` shows them")
    row.revoked_at = time.time()
    return _view(row)


def verify(session: Session, secret: str) -> Caller | None:
    """The caller a secret belongs to, or None (unknown or revoked)."""
    if not secret.startswith(PREFIX):
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_secret(secret)))
    if row is None or row.revoked_at is not None:
        return None
    return Caller(row.name, row.role)


def matches_admin_token(secret: str, admin_token: str | None) -> bool:
    return bool(admin_token) and hmac.compare_digest(secret.encode(), str(admin_token).encode())
