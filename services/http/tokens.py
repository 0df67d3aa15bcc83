"""Local verification of session tokens (EdDSA JWTs) before any call reaches the auth service.

Keys: the ones the auth replicas publish in etcd (chosen by the token's `kid`), plus PEMs from
GATEHOUSE_JWT_PUBLIC_KEYS, which are tried when the `kid` is not among the published ones.
The HTTP tier only ever holds public keys.

Claims: `iss` and `aud` must name this service (GATEHOUSE_TOKEN_ISSUER, _AUDIENCE), so a
token that a key signed for another purpose or environment is refused. A token without them
was issued before they existed and is accepted until it expires (at most GATEHOUSE_TOKEN_TTL).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.types import Options

log = logging.getLogger(__name__)

ALGORITHMS = ["EdDSA"]
REQUIRED_CLAIMS = ["exp", "iat", "sub", "sid"]
CLOCK_SKEW_SECONDS = 5
MAX_TOKEN_CHARS = 4096
# Signature checks cost ~180 us each; a verified token is remembered until it expires.
VERIFIED_CACHE_SIZE = 10_000

_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)
# `iss` and `aud` are checked by _check_issuer_and_audience: PyJWT would refuse tokens without.
_DECODE_OPTIONS: Options = {"require": REQUIRED_CLAIMS, "verify_aud": False, "verify_iss": False}


class InvalidToken(Exception):
    """The token is malformed, expired, or not signed by a trusted key."""


class UnknownKeyId(InvalidToken):
    """No known key verifies the token: its key id is not among the published keys, and no
    extra key verifies it. A key published a moment ago may (services.http.signing_keys)."""


@dataclass(frozen=True, slots=True)
class Session:
    user_id: int
    session_id: str
    expires_at: float  # Unix seconds
    # Issued before tokens carried `iss` and `aud`: accepted until it expires, and the only
    # kind still read from the pre-`__Host-` cookie name (services.http.sessions).
    issued_before_claims: bool = False


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def parse_public_keys(pems: str) -> tuple[Ed25519PublicKey, ...]:
    """Every PEM block in `pems` (GATEHOUSE_JWT_PUBLIC_KEYS), or ValueError."""
    blocks = _PEM_BLOCK.findall(pems.encode("utf-8", "surrogateescape"))
    if pems.strip() and not blocks:
        raise ValueError(
            "it holds no '-----BEGIN PUBLIC KEY-----' block; "
            "set it to Ed25519 public keys in PEM, or leave it empty"
        )
    keys = []
    for number, block in enumerate(blocks, start=1):
        try:
            keys.append(load_public_key(block))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(
                f"key #{number} is not usable ({exc}); "
                "give Ed25519 public keys in PEM (SubjectPublicKeyInfo)"
            ) from exc
    return tuple(keys)


def parse_published_key(raw: bytes) -> tuple[str, Ed25519PublicKey]:
    """(kid, key) from a published `{"kid","alg":"EdDSA","public_key"}`, or ValueError."""
    try:
        fields = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    kid, alg, pem = fields.get("kid"), fields.get("alg"), fields.get("public_key")
    if not isinstance(kid, str) or not kid:
        raise ValueError("kid missing")
    if alg != "EdDSA":
        raise ValueError(f"alg is {alg!r}, only 'EdDSA' is accepted")
    if not isinstance(pem, str):
        raise ValueError("public_key missing")
    return kid, load_public_key(pem.encode())


class TokenVerifier:
    def __init__(
        self,
        extra_keys: tuple[Ed25519PublicKey, ...] = (),
        *,
        issuer: str = "gatehouse",
        audience: str = "gatehouse",
    ) -> None:
        self._extra_keys = extra_keys
        self._issuer = issuer
        self._audience = audience
        self._published: dict[str, Ed25519PublicKey] = {}
        self._rejected: dict[str, bytes] = {}
        self._verified: dict[str, Session] = {}

    @property
    def key_count(self) -> int:
        return len(self._published) + len(self._extra_keys)

    def replace_published(self, values: dict[str, bytes]) -> None:
        """Take the key set published under the JWT keys prefix (a PrefixWatcher callback)."""
        published: dict[str, Ed25519PublicKey] = {}
        rejected: dict[str, bytes] = {}
        for name, raw in values.items():
            try:
                kid, key = parse_published_key(raw)
            except ValueError as exc:
                rejected[name] = raw
                if self._rejected.get(name) != raw:
                    log.warning("ignoring malformed published JWT key %r: %s", name, exc)
                continue
            published[kid] = key
        self._rejected = rejected
        self._published = published
        # A key may have been withdrawn: tokens it signed must be checked again.
        self._verified.clear()

    def verify(self, token: str) -> Session:
        now = time.time()
        session = self._verified.get(token)
        if session is not None:
            if session.expires_at > now - CLOCK_SKEW_SECONDS:
                return session
            del self._verified[token]
            raise InvalidToken("the token has expired")
        session = self._verify_signed(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = session
        return session

    def _verify_signed(self, token: str) -> Session:
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise InvalidToken(
                f"the token is not a JWT (ASCII, at most {MAX_TOKEN_CHARS} characters)"
            )
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            published = self._published.get(kid) if isinstance(kid, str) else None
            if published is not None:
                claims = _decode(token, published)
            else:
                claims = self._decode_with_extra_keys(token, kid)
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        issued_before_claims = _check_issuer_and_audience(claims, self._issuer, self._audience)
        return _session_from_claims(claims, issued_before_claims)

    def _decode_with_extra_keys(self, token: str, kid: object) -> dict[str, Any]:
        unknown = UnknownKeyId(f"the token's key id {kid!r} is not a known signing key")
        if not self._extra_keys:
            raise unknown
        try:
            return _decode_with_any(token, self._extra_keys)
        except jwt.InvalidSignatureError:
            raise unknown from None


def _decode_with_any(token: str, keys: tuple[Ed25519PublicKey, ...]) -> dict[str, Any]:
    """The claims of `token` as verified by the first of `keys` whose signature matches."""
    for key in keys[:-1]:
        try:
            return _decode(token, key)
        except jwt.InvalidSignatureError:
            continue
    return _decode(token, keys[-1])


def _decode(token: str, key: Ed25519PublicKey) -> dict[str, Any]:
    return jwt.decode(
        token, key, algorithms=ALGORITHMS, options=_DECODE_OPTIONS, leeway=CLOCK_SKEW_SECONDS
    )


def _check_issuer_and_audience(claims: dict[str, Any], issuer: str, audience: str) -> bool:
    """Refuse a token whose `iss` or `aud` names something else, or that has only one of them
    (no release ever issued such a token). True for a token with neither: one issued before
    the claims existed."""
    if "iss" not in claims and "aud" not in claims:
        return True
    if "iss" not in claims or "aud" not in claims:
        raise InvalidToken("the token carries only one of the iss and aud claims")
    if claims["iss"] != issuer:
        raise InvalidToken(f"the token's issuer is not {issuer!r}")
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or audience not in audiences:
        raise InvalidToken(f"the token's audience is not {audience!r}")
    return False


def _session_from_claims(claims: dict[str, Any], issued_before_claims: bool) -> Session:
    sub, sid, exp = claims["sub"], claims["sid"], claims["exp"]
    # PyJWT checked that sub is a string and exp a number.
    if not (len(sub) <= 20 and sub.isascii() and sub.isdigit() and 0 < int(sub) < 2**64):
        raise InvalidToken("the token's sub claim is not a user id")
    if not isinstance(sid, str) or not sid:
        raise InvalidToken("the token's sid claim is not a session id")
    return Session(
        user_id=int(sub),
        session_id=sid,
        expires_at=float(exp),
        issued_before_claims=issued_before_claims,
    )
