"""A running HTTP tier app wired to real etcd (discovery, JWT keys) and a stub auth replica."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aetcd
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette

from devstack import DataStores
from devstack.ports import wait_until_async
from services.foundation.discovery import registration
from services.foundation.etcd import LeasedKey
from services.foundation.jwk import legacy_kid, thumbprint_kid
from services.http.app import create_app
from services.http.csrf import CsrfTokens
from services.http.settings import HttpSettings
from tests.etcd_settings import etcd_settings
from tests.http.stub_auth_server import StubAuthServer, answer_ok

# GATEHOUSE_CSRF_SECRET of the tests' HTTP tiers.
TEST_CSRF_SECRET = "csrf-secret-of-the-tests-0123456789abcdef"


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _raw_public_key(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid_of(key: Ed25519PrivateKey) -> str:
    """The key id the auth service gives `key`: its RFC 7638 thumbprint."""
    return thumbprint_kid(_raw_public_key(key))


def legacy_kid_of(key: Ed25519PrivateKey) -> str:
    """The key id releases before the thumbprint gave `key`."""
    return legacy_kid(_raw_public_key(key))


@dataclass
class Gateway:
    app: Starlette
    client: httpx.AsyncClient
    settings: HttpSettings
    etcd: aetcd.Client
    auth_server: StubAuthServer
    auth_registration: LeasedKey
    signing_key: Ed25519PrivateKey
    kid: str

    def token(
        self,
        user_id: int = 42,
        session_id: str = "session-1",
        *,
        key: Ed25519PrivateKey | None = None,
        kid: str | None = None,
        **claims: object,
    ) -> str:
        """A session token signed like the auth service signs them (by default with its key)."""
        now = int(time.time())
        payload: dict[str, object] = {
            "sub": str(user_id),
            "sid": session_id,
            "iat": now,
            "exp": now + 3600,
        }
        payload.update(claims)
        return jwt.encode(
            payload,
            key or self.signing_key,
            algorithm="EdDSA",
            headers={"kid": kid or kid_of(key or self.signing_key)},
        )

    def csrf_token(self, session_id: str = "session-1") -> str:
        """The CSRF token the app expects of a cookie call in the session `session_id`."""
        return CsrfTokens(TEST_CSRF_SECRET, secure_cookie=False).of_session(session_id)

    async def publish_key(self, kid: str, key: Ed25519PrivateKey) -> None:
        """Put `key`'s record under `kid`, as an auth replica does (kid_of(key)) or an older
        release did (its legacy kid)."""
        record = {"kid": kid, "alg": "EdDSA", "public_key": public_pem(key)}
        await self.etcd.put(
            f"{self.settings.jwt_keys_prefix}{kid}".encode(), json.dumps(record).encode()
        )

    def reset(self) -> None:
        self.client.cookies.clear()  # a login's Set-Cookie must not leak into the next test
        self.auth_server.handler = answer_ok
        self.auth_server.delay = 0.0
        self.auth_server.calls.clear()


@asynccontextmanager
async def running_gateway(data_stores: DataStores, **overrides: Any) -> AsyncIterator[Gateway]:
    """An app in its lifespan, its prefixes unique to this call, one stub replica registered."""
    namespace = f"/test-http-{uuid.uuid4().hex}/"
    settings = dataclasses.replace(
        HttpSettings(
            **etcd_settings(data_stores.etcd_access()),
            discovery_prefix=f"{namespace}services/auth/",
            jwt_keys_prefix=f"{namespace}jwt-keys/",
            call_timeout=5.0,
            csrf_secret=TEST_CSRF_SECRET,
        ),
        **overrides,
    )
    etcd = data_stores.etcd_client()
    auth_server = await StubAuthServer(name="stub-1").start()
    auth_registration = registration(
        settings.etcd_access, settings.discovery_prefix, auth_server.record(), ttl=10
    )
    app = create_app(settings)
    signing_key = Ed25519PrivateKey.generate()
    gateway = Gateway(
        app=app,
        client=httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gatehouse.test"
        ),
        settings=settings,
        etcd=etcd,
        auth_server=auth_server,
        auth_registration=auth_registration,
        signing_key=signing_key,
        kid=kid_of(signing_key),
    )
    await gateway.publish_key(gateway.kid, gateway.signing_key)
    await auth_registration.start()
    try:
        async with app.router.lifespan_context(app):
            await wait_until_async(
                lambda: app.state.auth.readiness() is None and app.state.tokens.key_count > 0,
                10.0,
                "the app to discover the stub replica and the signing key",
            )
            yield gateway
    finally:
        await gateway.client.aclose()
        await auth_registration.stop()
        await auth_server.stop()
        await etcd.delete_prefix(namespace.encode())
        await etcd.close()
