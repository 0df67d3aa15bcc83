"""The README's "Verifying a token from another service" example, run as written against the
live stack with a real session token, so the README cannot drift from what the service does."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack.gatehouse import REPO_ROOT, Gatehouse
from tests.system.support import signed_up_token

README = REPO_ROOT / "README.md"
SECTION = "### Verifying a token from another service"
PLACEHOLDER_URL = "https://gatehouse.example.com"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def readme_example(readme: Path = README) -> str:
    """The first Python block of the README's section on verifying a token."""
    text = readme.read_text()
    assert SECTION in text, f"README.md lost its {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert blocks, f"no ```python block in {SECTION!r}"
    code: str = blocks[0]
    assert code.count(PLACEHOLDER_URL) == 1, "the example names the JWKS URL once"
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 15, "the example is meant to stay short"
    return code


def example_against(base_url: str) -> dict[str, Any]:
    """The example's module namespace, its JWKS URL pointed at `base_url`."""
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(readme_example().replace(PLACEHOLDER_URL, base_url), namespace)
    return namespace


async def test_the_readme_example_verifies_a_real_token(
    gatehouse: Gatehouse,
    clients: list[httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in PROXY_VARIABLES:  # urllib (PyJWKClient) would go through a proxy
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)
    _, token = await signed_up_token(clients[0])
    me = await clients[1].get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    example = example_against(gatehouse.url(1))

    claims = await asyncio.to_thread(example["verify"], token)

    assert claims["sub"] == me.json()["id"]
    assert claims["sid"] and claims["exp"] > time.time()
    jwks = (await clients[1].get("/.well-known/jwks.json")).json()
    assert jwt.get_unverified_header(token)["kid"] in [key["kid"] for key in jwks["keys"]]

    forged = jwt.encode(
        {**claims, "sub": "1"},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": jwt.get_unverified_header(token)["kid"]},
    )
    with pytest.raises(jwt.PyJWTError):
        await asyncio.to_thread(example["verify"], forged)
