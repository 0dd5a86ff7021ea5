"""Verify the JWT a CDS Client (the EHR) sends with every CDS Hooks call (CDS Hooks 2.0, Security).

Only asymmetric algorithms are accepted (ES256, ES384, RS256, RS384); ``none`` and HMAC are
refused before any key is looked at. The issuer must be on the allow-list, the signature must
verify with a key from that issuer's JWKS, ``aud`` must equal the URL of the service called,
``exp``, ``iat`` and ``jti`` must be present, and a ``jti`` is accepted once (replay cache).
Tokens are never logged: errors name the claim at fault, never the token.

Trusted issuers come from a JSON file::

    {
      "issuers": [
        {"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/.well-known/jwks.json"},
        {"iss": "https://sandbox.example.org", "jwks_file": "keys/sandbox-jwks.json"}
      ],
      "leeway_s": 30,
      "max_lifetime_s": 3600
    }

- ``iss``: the issuer exactly as it appears in the token's ``iss`` claim.
- ``jwks_url`` or ``jwks_file`` (one of them): the issuer's public keys as a JWK Set. A relative
  ``jwks_file`` is read relative to the configuration file. A ``jwks_url`` is fetched on first use
  and again when a token names a key id (``kid``) it does not hold (key rotation).
- ``leeway_s`` (default 30): clock skew allowed on ``exp`` and ``iat``.
- ``max_lifetime_s`` (default 3600): tokens whose ``exp`` is further than this after ``iat`` are refused.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

__all__ = ["ALLOWED_ALGORITHMS", "AuthError", "JwtVerifier", "TrustedIssuer"]

ALLOWED_ALGORITHMS = ("ES256", "ES384", "RS256", "RS384")


class AuthError(Exception):
    """Raised when a call's JWT is absent or invalid; the message is safe to return (no token in it)."""


@dataclass
class TrustedIssuer:
    """One issuer on the allow-list and where its keys are."""

    iss: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    jwks: dict[str, Any] | None = None  # an inline JWK Set (tests, or a config built in code)
    _client: PyJWKClient | None = field(default=None, repr=False)

    def key_for(self, kid: str | None) -> PyJWK:
        if self.jwks_url:
            if self._client is None:
                self._client = PyJWKClient(self.jwks_url, cache_keys=True, lifespan=300, timeout=5)
            try:
                if kid is None:
                    keys = self._client.get_signing_keys()
                    if len(keys) != 1:
                        raise AuthError("the token has no 'kid' and the issuer's JWKS holds several keys")
                    return keys[0]
                return self._client.get_signing_key(kid)
            except jwt.PyJWKClientError as exc:
                raise AuthError(f"no usable key for this token from the issuer's JWKS ({exc})") from None
        data = self.jwks
        if data is None:
            assert self.jwks_file is not None
            data = json.loads(self.jwks_file.read_text(encoding="utf-8"))
            self.jwks = data
        try:
            keys = PyJWKSet.from_dict(data).keys
        except jwt.PyJWTError as exc:
            raise AuthError(f"the issuer's JWKS is unusable ({exc})") from None
        if kid is None:
            if len(keys) != 1:
                raise AuthError("the token has no 'kid' and the issuer's JWKS holds several keys")
            return keys[0]
        for key in keys:
            if key.key_id == kid:
                return key
        raise AuthError(f"the issuer's JWKS has no key {kid!r}")


class JwtVerifier:
    """Checks CDS Hooks bearer tokens against an issuer allow-list, with a ``jti`` replay cache."""

    def __init__(self, issuers: list[TrustedIssuer], *, leeway_s: float = 30, max_lifetime_s: float = 3600) -> None:
        self.issuers = {i.iss: i for i in issuers}
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path) -> JwtVerifier:
        """Read the issuer configuration file (format in this module's docstring)."""
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        issuers = []
        for entry in data.get("issuers", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("iss"), str):
                raise ValueError(f"{path}: each issuer needs an 'iss' string")
            url, file = entry.get("jwks_url"), entry.get("jwks_file")
            if (url is None) == (file is None):
                raise ValueError(f"{path}: issuer {entry['iss']!r} needs exactly one of 'jwks_url' and 'jwks_file'")
            jwks_file = None if file is None else (path.parent / file if not Path(file).is_absolute() else Path(file))
            issuers.append(TrustedIssuer(entry["iss"], jwks_url=url, jwks_file=jwks_file))
        return cls(
            issuers, leeway_s=float(data.get("leeway_s", 30)), max_lifetime_s=float(data.get("max_lifetime_s", 3600))
        )

    def verify_header(self, authorization: str | None, audience: str | list[str]) -> dict[str, Any]:
        """Verify an ``Authorization: Bearer <jwt>`` header value; the claims, or :class:`AuthError`."""
        if not authorization:
            raise AuthError("a bearer token is required (Authorization: Bearer <JWT>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <JWT>'")
        return self.verify(token.strip(), audience)

    def verify(self, token: str, audience: str | list[str]) -> dict[str, Any]:
        """Verify one JWT for the service at ``audience``; the claims, or :class:`AuthError`."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("the bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthError(f"JWT algorithm {alg!r} is not accepted (allowed: {', '.join(ALLOWED_ALGORITHMS)})")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError(f"issuer {iss!r} is not trusted")
        key = issuer.key_for(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=audience,
                issuer=iss,
                leeway=self.leeway_s,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the JWT has expired") from None
        except jwt.InvalidAudienceError:
            shown = audience if isinstance(audience, str) else " or ".join(audience)
            raise AuthError(f"the JWT's 'aud' is not this service's URL ({shown})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the JWT lacks the {exc.claim!r} claim") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the JWT's 'iat' is in the future") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the JWT's signature does not verify with the issuer's key") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"the JWT is invalid ({type(exc).__name__})") from None
        now = time.time()
        if float(claims["iat"]) > now + self.leeway_s:
            raise AuthError("the JWT's 'iat' is in the future")
        if float(claims["exp"]) - float(claims["iat"]) > self.max_lifetime_s:
            raise AuthError(f"the JWT lives longer than {self.max_lifetime_s:g} s")
        self._remember(iss, str(claims["jti"]), float(claims["exp"]) + self.leeway_s, now)
        return claims

    def _remember(self, iss: str, jti: str, until: float, now: float) -> None:
        with self._lock:
            if len(self._seen) > 1024:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            if self._seen.get((iss, jti), 0) > now:
                raise AuthError("the JWT's 'jti' was already used (replay)")
            self._seen[(iss, jti)] = until
