"""Bearer tokens with roles, for the activator's publishing and admin routes.

Tokens are configured in a JSON file (``KGRID_TOKENS_FILE``) or the ``KGRID_TOKENS`` variable::

    {"tokens": [{"name": "alice", "roles": ["publish"], "sha256": "<hex of sha256(token)>"},
                {"name": "ops", "roles": ["admin", "publish"], "token": "<the token itself>"}]}

Prefer ``sha256``: the file then holds no secret. Roles are explicit (``admin`` does not imply
``publish``). A presented token is hashed and compared with every configured digest using
:func:`hmac.compare_digest`, without stopping at a match, so timing says nothing about which
token or how much of it matched. Tokens never appear in messages, reprs or logs: a principal is
known by its ``name``, which is what the audit log records.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kgrid_py.curation.errors import CurationError, Forbidden, Unauthorized
from kgrid_py.digest import sha256_bytes

__all__ = ["ROLES", "Principal", "TokenStore", "bearer_token", "generate_token", "hash_token"]

ROLES = ("publish", "admin")


@dataclass(frozen=True)
class Principal:
    """Who presented a valid token."""

    name: str
    roles: frozenset[str]


def hash_token(token: str) -> str:
    return sha256_bytes(token.encode("utf-8"))


def generate_token() -> str:
    """A new random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class TokenStore:
    """The configured tokens (as digests) and their roles."""

    def __init__(self, entries: list[tuple[str, bytes, frozenset[str]]]) -> None:
        self._entries = entries

    def __repr__(self) -> str:
        return f"<TokenStore with {len(self._entries)} token(s)>"

    @classmethod
    def from_config(cls, config: Any) -> TokenStore:
        tokens = config.get("tokens") if isinstance(config, Mapping) else None
        if not isinstance(tokens, list):
            raise CurationError("token config must be an object with a 'tokens' list")
        entries = []
        for i, item in enumerate(tokens):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise CurationError(f"token config entry {i} needs a 'name'")
            roles = item.get("roles")
            if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
                raise CurationError(f"token {item['name']!r}: 'roles' must be a non-empty list from {list(ROLES)}")
            if isinstance(item.get("sha256"), str) and re.fullmatch("[0-9a-fA-F]{64}", item["sha256"]):
                digest = bytes.fromhex(item["sha256"])
            elif isinstance(item.get("token"), str) and len(item["token"]) >= 16:
                digest = bytes.fromhex(hash_token(item["token"]))
            else:
                raise CurationError(f"token {item['name']!r} needs 'sha256' (64 hex) or a 'token' of 16+ characters")
            entries.append((item["name"], digest, frozenset(roles)))
        return cls(entries)

    @classmethod
    def from_file(cls, path: Path) -> TokenStore:
        try:
            config = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CurationError(f"cannot read token config {path}: {exc.__class__.__name__}") from None
        return cls.from_config(config)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenStore:
        """``KGRID_TOKENS_FILE``, else ``KGRID_TOKENS``, else no tokens (every request is 401)."""
        environ = os.environ if environ is None else environ
        if environ.get("KGRID_TOKENS_FILE"):
            return cls.from_file(Path(environ["KGRID_TOKENS_FILE"]))
        if environ.get("KGRID_TOKENS"):
            try:
                config = json.loads(environ["KGRID_TOKENS"])
            except ValueError:
                raise CurationError("KGRID_TOKENS is not valid JSON") from None
            return cls.from_config(config)
        return cls([])

    def authenticate(self, token: str | None) -> Principal:
        """The principal a token belongs to; :class:`Unauthorized` if none or unknown."""
        if not token:
            raise Unauthorized("a bearer token is required")
        presented = bytes.fromhex(hash_token(token))
        found: Principal | None = None
        for name, digest, roles in self._entries:  # no early exit: constant time over the store
            if hmac.compare_digest(presented, digest):
                found = Principal(name, roles)
        if found is None:
            raise Unauthorized("the bearer token is not valid")
        return found

    def authorize(self, authorization: str | None, role: str) -> Principal:
        """Check an ``Authorization`` header for ``role``: 401 without a valid token, 403 without the role."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        principal = self.authenticate(bearer_token(authorization))
        if role not in principal.roles:
            raise Forbidden(f"{principal.name} does not have the {role!r} role")
        return principal
