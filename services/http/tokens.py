"""Local verification of session tokens (EdDSA JWTs) before any call reaches the auth service.

Keys: the ones the auth replicas publish in etcd, plus PEMs from GATEHOUSE_JWT_PUBLIC_KEYS,
all indexed by their thumbprint and legacy kids (services.http.public_keys). The token's `kid`
picks the one key its signature is checked with; a token without a kid is refused. The HTTP
tier only ever holds public keys.

Claims: `iss` and `aud` must name this service (GATEHOUSE_TOKEN_ISSUER, _AUDIENCE), so a
token that a key signed for another purpose or environment is refused. A token without them
was issued before they existed and is accepted until it expires (at most GATEHOUSE_TOKEN_TTL).

Cache: a token that passed all of this is remembered (services.http.verified_tokens); seen
again, only its expiry, issuer and audience are checked. A withdrawn key's tokens are forgotten
with it. Revocation is the auth service's: it checks the session on every call that needs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.types import Options

from services.foundation.key_attestation import AttestationCheck
from services.foundation.log_throttle import RepeatedWarnings
from services.http.public_keys import KeySet, held_key, parse_published_key
from services.http.settings import DEFAULT_TOKEN_CACHE_SIZE
from services.http.verified_tokens import VerifiedToken, VerifiedTokens

log = logging.getLogger(__name__)
# A refused published record is logged when it appears or changes, and a record that keeps
# changing at most once per this many seconds.
REFUSED_RECORD_LOG_INTERVAL = 60.0
# Records refused by one change of the set that get a line each; the rest, one line together
# (a writer flooding the prefix would otherwise log a line per record on every worker).
REFUSED_RECORDS_LOGGED = 5

ALGORITHMS = ["EdDSA"]
REQUIRED_CLAIMS = ["exp", "iat", "sub", "sid"]
CLOCK_SKEW_SECONDS = 5
MAX_TOKEN_CHARS = 4096
# `iss` and `aud` are checked by _check_issuer_and_audience: PyJWT would refuse tokens without.
_DECODE_OPTIONS: Options = {"require": REQUIRED_CLAIMS, "verify_aud": False, "verify_iss": False}


class InvalidToken(Exception):
    """The token is malformed, expired, or not signed by a trusted key."""


class UnknownKeyId(InvalidToken):
    """No held key has the token's key id. A key published a moment ago may
    (services.http.signing_keys)."""


@dataclass(frozen=True, slots=True)
class Session:
    user_id: int
    session_id: str
    expires_at: float  # Unix seconds
    # Issued before tokens carried `iss` and `aud`: accepted until it expires, and the only
    # kind still read from the pre-`__Host-` cookie name (services.http.sessions).
    issued_before_claims: bool = False


class TokenVerifier:
    def __init__(
        self,
        extra_keys: tuple[Ed25519PublicKey, ...] = (),
        *,
        issuer: str = "gatehouse",
        audience: str = "gatehouse",
        cache_size: int = DEFAULT_TOKEN_CACHE_SIZE,
        attestation: AttestationCheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._extra_keys = tuple(held_key(key) for key in extra_keys)
        # With the RPC's mutual TLS, only records an auth replica's certificate vouches for.
        self._attestation = attestation
        self._attested: set[str] = set()
        self._checked_against: tuple[x509.Certificate, ...] | None = None
        self._issuer = issuer
        self._audience = audience
        self._keys = KeySet(self._extra_keys)
        self._rejected: dict[str, bytes] = {}
        self._refusals = RepeatedWarnings(log, REFUSED_RECORD_LOG_INTERVAL)
        self._verified = VerifiedTokens(cache_size)
        self._clock = clock  # Unix seconds, for tokens found in the cache

    @property
    def keys(self) -> KeySet:
        """The keys held now: the published ones and GATEHOUSE_JWT_PUBLIC_KEYS."""
        return self._keys

    @property
    def key_count(self) -> int:
        return len(self._keys)

    @property
    def cached_count(self) -> int:
        """Tokens remembered as verified."""
        return len(self._verified)

    def replace_published(self, values: dict[str, bytes]) -> None:
        """Take the key set published under the JWT keys prefix (a PrefixWatcher callback)."""
        published = []
        rejected: dict[str, bytes] = {}
        newly_rejected = 0
        authorities = self._attestation_authorities()
        # Parsed again only when the CA changed: a flood of refused records costs a lookup each.
        same_authorities = authorities is self._checked_against
        self._checked_against = authorities
        for name, raw in values.items():
            if same_authorities and self._rejected.get(name) == raw:
                rejected[name] = raw
                continue
            try:
                key, fields = parse_published_key(name, raw)
                # A key once taken attested stays taken while it stays published: an auth
                # replica of the release before rewrites its record plain during an upgrade.
                if self._attestation is not None and key.kid not in self._attested:
                    self._attestation.check(fields, authorities)
                published.append(key)
            except Exception as exc:  # noqa: BLE001 -- one record, however malformed, is refused
                # alone: anything escaping here would leave the whole key set as it was, a
                # withdrawn key still verifying, a new one never taken.
                rejected[name] = raw
                if self._rejected.get(name) != raw:
                    newly_rejected += 1
                    if newly_rejected <= REFUSED_RECORDS_LOGGED:
                        self._refusals.warn(
                            name, "ignoring the published JWT key %r: %s", name[:200], exc
                        )
        if newly_rejected > REFUSED_RECORDS_LOGGED:
            log.warning(
                "ignoring %d more published JWT keys (malformed or misfiled, not logged one by one)",
                newly_rejected - REFUSED_RECORDS_LOGGED,
            )
        self._rejected = rejected
        self._attested = {key.kid for key in published}
        keys = KeySet([*published, *self._extra_keys])
        # Tokens of a withdrawn key must be checked again; a key added leaves every verified
        # token as good as it was.
        self._verified.drop_kids(self._keys.kids_lost_in(keys))
        self._keys = keys

    def _attestation_authorities(self) -> tuple[x509.Certificate, ...]:
        """The CA certificates records are checked against, read now (none without TLS, or
        when the file cannot be read: then no record is taken that was not taken before)."""
        if self._attestation is None:
            return ()
        try:
            return self._attestation.authorities()
        except (OSError, ValueError) as exc:
            self._refusals.warn(
                "attestation CA",
                "cannot read GATEHOUSE_RPC_TLS_CA to check the published JWT keys (%s)",
                exc,
            )
            return ()

    def verify(self, token: str) -> Session:
        cached = self._verified.get(token)
        if cached is None:
            return self._verify_signed(token)
        if cached.session.expires_at <= self._clock() - CLOCK_SKEW_SECONDS:
            self._verified.drop_expired(token)
            raise InvalidToken("the token has expired")
        if cached.issuer is not None and (
            cached.issuer != self._issuer or cached.audience != self._audience
        ):
            raise InvalidToken(
                f"the token's issuer or audience is not {self._issuer!r}, {self._audience!r}"
            )
        return cached.session

    def _verify_signed(self, token: str) -> Session:
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise InvalidToken(
                f"the token is not a JWT (ASCII, at most {MAX_TOKEN_CHARS} characters)"
            )
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if not isinstance(kid, str) or not kid:
                raise InvalidToken("the token's header names no key id (kid)")
            key = self._keys.find(kid)
            if key is None:
                raise UnknownKeyId(f"the token's key id {kid[:100]!r} is not a known signing key")
            claims = _decode(token, key.key)
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        issued_before_claims = _check_issuer_and_audience(claims, self._issuer, self._audience)
        session = _session_from_claims(claims, issued_before_claims)
        self._verified.add(
            token,
            VerifiedToken(
                session,
                # The key set's own string: entries share it rather than each holding a copy.
                key.kid if kid == key.kid else key.legacy_kid,
                None if issued_before_claims else self._issuer,
                None if issued_before_claims else self._audience,
            ),
        )
        return session


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
        # PyJWT's own expiry check truncates `exp`: a cached token expires as it would uncached.
        expires_at=float(int(exp)),
        issued_before_claims=issued_before_claims,
    )
