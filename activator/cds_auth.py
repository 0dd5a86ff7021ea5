"""Verify the JWT a CDS Client (the EHR) sends with every CDS Hooks call (CDS Hooks 2.0, Security).

Only asymmetric algorithms are accepted (ES256, ES384, RS256, RS384); ``none`` and HMAC are
refused before any key is looked at, and the key a ``kid`` names must be of the algorithm's type
(an RSA key never verifies an ES256 token). The issuer must be on the allow-list, the signature
must verify with a key from that issuer's JWKS, ``aud`` must equal the URL of the service called
(built from the configured public URL, never from the request), ``exp``, ``iat`` and ``jti`` must
be present and sane, and a ``jti`` is accepted once (:class:`activator.cds_store.CdsStore`, shared
by every worker). Tokens are never logged: errors name the claim at fault, never the token.

Trusted issuers come from a JSON file::

    {
      "issuers": [
        {"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/.well-known/jwks.json",
         "fhir_servers": ["https://fhir.ehr.example.org/r4"]},
        {"iss": "https://sandbox.example.org", "jwks_file": "keys/sandbox-jwks.json"}
      ],
      "leeway_s": 30,
      "max_lifetime_s": 3600,
      "jwks_refresh_s": 30
    }

- ``iss``: the issuer exactly as it appears in the token's ``iss`` claim.
- ``jwks_url`` or ``jwks_file`` (one of them): the issuer's public keys as a JWK Set. A relative
  ``jwks_file`` is read relative to the configuration file. A ``jwks_url`` is fetched without
  blocking the server (httpx, 5 s timeout, 1 MiB at most), cached for 5 minutes, and fetched again
  when a token names a key id (``kid``) it does not hold (key rotation), but at most once every
  ``jwks_refresh_s`` seconds per issuer: forged tokens with random ``kid``s cannot make it fetch.
- ``fhir_servers`` (default none): the FHIR base URLs this issuer's calls may name as
  ``fhirServer``; the service fetches missing prefetch or further pages only from these.
- ``leeway_s`` (default 30): clock skew allowed on ``exp`` and ``iat``.
- ``max_lifetime_s`` (default 3600): tokens whose ``exp`` is further than this after ``iat`` are refused.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
from jwt import PyJWK, PyJWKSet

from activator.cds_store import CdsStore

__all__ = ["ALLOWED_ALGORITHMS", "AuthError", "JwtVerifier", "TrustedIssuer"]

ALLOWED_ALGORITHMS = ("ES256", "ES384", "RS256", "RS384")
log = logging.getLogger("activator.cds")
_KEY_TYPES = {"ES": "EC", "RS": "RSA"}
JWKS_TIMEOUT_S = 5.0
JWKS_MAX_BYTES = 1_048_576
JWKS_LIFESPAN_S = 300.0
MAX_JTI_CHARS = 256
_MAX_NUMERIC_DATE = 2**40  # year ~36800: any honest exp/iat is far below; bigger ones are hostile


class AuthError(Exception):
    """Raised when a call's JWT is absent or invalid; the message is safe to return (no token in it)."""


@dataclass
class TrustedIssuer:
    """One issuer on the allow-list, where its keys are, and which FHIR servers its calls may name."""

    iss: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    jwks: dict[str, Any] | None = None  # an inline JWK Set (tests, or a config built in code)
    fhir_servers: tuple[str, ...] = ()
    _keys: list[PyJWK] | None = field(default=None, repr=False)
    _fetched_at: float = field(default=-math.inf, repr=False)
    _attempted_at: float = field(default=-math.inf, repr=False)
    _lock: anyio.Lock | None = field(default=None, repr=False)

    async def key_for(self, kid: str | None, *, refresh_s: float = 30.0) -> PyJWK:
        """The key ``kid`` names (or the only key); fetches a ``jwks_url`` as the docstring says."""
        if self.jwks_url is None:
            if self._keys is None:
                data = self.jwks
                if data is None:
                    assert self.jwks_file is not None
                    data = json.loads(self.jwks_file.read_text(encoding="utf-8"))
                self._keys = _key_set(data)
            return _pick(self._keys, kid)
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:  # concurrent calls with one unknown kid wait for one fetch
            now = time.monotonic()
            stale = now - self._fetched_at > JWKS_LIFESPAN_S
            unknown = self._keys is None or (kid is not None and all(k.key_id != kid for k in self._keys))
            if (stale or unknown) and now - self._attempted_at >= refresh_s:
                self._attempted_at = now
                try:
                    self._keys = await _fetch_jwks(self.jwks_url)
                    self._fetched_at = time.monotonic()
                except AuthError:
                    if self._keys is None:
                        raise
                    log.warning("CDS Hooks: refreshing the JWKS of %s failed; keeping the keys held", self.iss)
        if self._keys is None:
            raise AuthError("the issuer's JWKS could not be fetched; try again later")
        return _pick(self._keys, kid)


async def _fetch_jwks(url: str) -> list[PyJWK]:
    try:
        async with (
            httpx.AsyncClient(timeout=JWKS_TIMEOUT_S, follow_redirects=False) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as answer,
        ):
            if answer.status_code != 200:
                raise AuthError("the issuer's JWKS could not be fetched")
            body = b""
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise AuthError("the issuer's JWKS is too large")
        data = json.loads(body)
    except (httpx.HTTPError, ValueError):
        raise AuthError("the issuer's JWKS could not be fetched") from None
    return _key_set(data)


def _key_set(data: Any) -> list[PyJWK]:
    if not isinstance(data, dict):
        raise AuthError("the issuer's JWKS is unusable (not a JWK Set)")
    try:
        return list(PyJWKSet.from_dict(data).keys)
    except jwt.PyJWTError as exc:
        raise AuthError(f"the issuer's JWKS is unusable ({type(exc).__name__})") from None


def _pick(keys: list[PyJWK], kid: str | None) -> PyJWK:
    if kid is None:
        if len(keys) != 1:
            raise AuthError("the token has no 'kid' and the issuer's JWKS holds several keys")
        return keys[0]
    for key in keys:
        if key.key_id == kid:
            return key
    raise AuthError(f"the issuer's JWKS has no key {kid!r}")


def _check_key_type(key: PyJWK, alg: str) -> None:
    """Refuse a key of another type or curve than ``alg`` (PyJWT would raise TypeError: a 500)."""
    if key.key_type != _KEY_TYPES[alg[:2]]:
        raise AuthError(f"the key the token names is {key.key_type}, not usable with {alg}")
    if key.key_type == "EC" and key.algorithm_name != alg:
        raise AuthError(f"the key the token names is for {key.algorithm_name}, not {alg}")


def _check_claims(claims: dict[str, Any]) -> None:
    """Refuse claims PyJWT or the replay store would crash on (an ``exp`` of 1e400, a non-string jti)."""
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AuthError(f"the JWT's {name!r} is not a number")
        if not (isinstance(value, int) or math.isfinite(value)) or not 0 <= value < _MAX_NUMERIC_DATE:
            raise AuthError(f"the JWT's {name!r} is not a plausible time")
    jti = claims.get("jti")
    if jti is not None:
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise AuthError(f"the JWT's 'jti' must be a string of 1 to {MAX_JTI_CHARS} characters")
        try:
            jti.encode("utf-8")
        except UnicodeEncodeError:
            raise AuthError("the JWT's 'jti' is not valid Unicode") from None


class JwtVerifier:
    """Checks CDS Hooks bearer tokens against an issuer allow-list, with a shared ``jti`` replay store."""

    def __init__(
        self,
        issuers: list[TrustedIssuer],
        *,
        leeway_s: float = 30,
        max_lifetime_s: float = 3600,
        jwks_refresh_s: float = 30,
        store: CdsStore | None = None,
    ) -> None:
        self.issuers = {i.iss: i for i in issuers}
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        self.jwks_refresh_s = jwks_refresh_s
        self.store = store or CdsStore()

    @classmethod
    def from_file(cls, path: str | Path, *, store: CdsStore | None = None) -> JwtVerifier:
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
            servers = entry.get("fhir_servers", [])
            if not isinstance(servers, list) or not all(
                isinstance(s, str) and s.startswith(("http://", "https://")) for s in servers
            ):
                raise ValueError(f"{path}: issuer {entry['iss']!r}: 'fhir_servers' must be a list of http(s) URLs")
            jwks_file = None if file is None else (path.parent / file if not Path(file).is_absolute() else Path(file))
            issuers.append(TrustedIssuer(entry["iss"], jwks_url=url, jwks_file=jwks_file, fhir_servers=tuple(servers)))
        return cls(
            issuers,
            leeway_s=float(data.get("leeway_s", 30)),
            max_lifetime_s=float(data.get("max_lifetime_s", 3600)),
            jwks_refresh_s=float(data.get("jwks_refresh_s", 30)),
            store=store,
        )

    async def verify_header(self, authorization: str | None, audience: str | list[str]) -> dict[str, Any]:
        """Verify an ``Authorization: Bearer <jwt>`` header value; the claims, or :class:`AuthError`."""
        if not authorization:
            raise AuthError("a bearer token is required (Authorization: Bearer <JWT>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <JWT>'")
        return await self.verify(token.strip(), audience)

    async def verify(self, token: str, audience: str | list[str]) -> dict[str, Any]:
        """Verify one JWT for the service at ``audience``; the claims, or :class:`AuthError`."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, RecursionError):
            raise AuthError("the bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthError(f"JWT algorithm {alg!r} is not accepted (allowed: {', '.join(ALLOWED_ALGORITHMS)})")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError(f"issuer {iss!r} is not trusted")
        _check_claims(unverified)
        key = await issuer.key_for(header.get("kid"), refresh_s=self.jwks_refresh_s)
        _check_key_type(key, alg)
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
        until = float(claims["exp"]) + self.leeway_s
        fresh = await anyio.to_thread.run_sync(self.store.claim, iss, claims["jti"], until, now)
        if not fresh:
            raise AuthError("the JWT's 'jti' was already used (replay)")
        return claims
