"""Old and new contract versions interoperate, as two real processes each way.

The "new" contract is this one plus a field on `User` (`bio`), generated into a copy of the
code whose auth service fills it in; the old side must ignore it on the wire.

The "older" side is a copy of this code that speaks protocol 1..2 only (before the account
lifecycle's calls): against it, the calls both know keep working, and a new HTTP tier answers
the protocol-3 calls 503 with Retry-After at once.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from devstack.gatehouse import REPO_ROOT, Gatehouse
from services.foundation.rpc.protocol import PROTOCOL_MAX
from tests.system.support import bearer, copy_of_the_code, new_username

NEW_FIELD = "  string bio = 15;  // added by the compatibility test\n"


@pytest.fixture(scope="module")
def newer_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_of_the_code(tmp_path_factory.mktemp("newer-contract"), "proto", "tools")
    proto = root / "proto" / "gatehouse" / "v1" / "auth.proto"
    text = proto.read_text()
    anchor = "  int64 updated_at_ms = 6;\n"
    assert anchor in text, "the User message changed; update this test's anchor"
    proto.write_text(text.replace(anchor, anchor + NEW_FIELD))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.protogen",
            "--out",
            str(root / "services" / "contract"),
            "--proto-root",
            str(root / "proto"),
        ],
        cwd=root,
        check=True,
        capture_output=True,
    )
    handlers = root / "services" / "auth" / "handlers.py"
    source = handlers.read_text()
    anchor = "        username=user.username,\n"
    assert anchor in source, "user_message() changed; update this test's anchor"
    handlers.write_text(
        source.replace(anchor, anchor + '        bio="sent by a newer server",\n', 1)
    )
    return root


@pytest.fixture(scope="module")
def older_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_of_the_code(tmp_path_factory.mktemp("older-protocol"))
    protocol = root / "services" / "foundation" / "rpc" / "protocol.py"
    text = protocol.read_text()
    anchor = f"PROTOCOL_MAX = {PROTOCOL_MAX}\n"
    assert PROTOCOL_MAX >= 3 and anchor in text, "protocol.py changed; update this test's anchor"
    protocol.write_text(text.replace(anchor, "PROTOCOL_MAX = 2\n"))
    return root


async def exercise(http_url: str) -> None:
    async with httpx.AsyncClient(base_url=http_url, timeout=15.0, trust_env=False) as client:
        username = new_username("compat")
        assert (
            await client.post("/api/v1/users", json={"username": username, "password": "password1"})
        ).status_code == 201
        login = await client.post(
            "/api/v1/sessions", json={"username": username, "password": "password1"}
        )
        assert login.status_code == 200, login.text
        token = login.json()["token"]
        patched = await client.patch(
            "/api/v1/me", headers=bearer(token), json={"nickname": "compatible"}
        )
        assert patched.status_code == 200 and patched.json()["nickname"] == "compatible"
        assert (await client.get("/api/v1/me", headers=bearer(token))).json()[
            "username"
        ] == username
        assert (
            await client.delete("/api/v1/sessions/current", headers=bearer(token))
        ).status_code == 204


@pytest.mark.slow
@pytest.mark.parametrize("newer_side", ["auth", "http"])
async def test_old_and_new_contract_interoperate(
    gatehouse: Gatehouse, newer_checkout: Path, newer_side: str
) -> None:
    prefix = {"GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-compat-{uuid.uuid4().hex}/auth/"}
    auth_root = newer_checkout if newer_side == "auth" else REPO_ROOT
    http_root = newer_checkout if newer_side == "http" else REPO_ROOT
    auth = gatehouse.start_auth(prefix, code_root=auth_root)
    http = gatehouse.start_http(prefix, code_root=http_root)
    try:
        await exercise(f"http://127.0.0.1:{http.ports['http']}")
    finally:
        for service in (http, auth):
            service.process.stop()
        gatehouse.http.remove(http)
        gatehouse.auth.remove(auth)


async def protocol_3_calls_answer_at_once(http_url: str) -> None:
    async with httpx.AsyncClient(base_url=http_url, timeout=15.0, trust_env=False) as client:
        username = new_username("compat")
        created = await client.post(
            "/api/v1/users", json={"username": username, "password": "password1"}
        )
        assert created.status_code == 201
        login = await client.post(
            "/api/v1/sessions", json={"username": username, "password": "password1"}
        )
        token = login.json()["token"]
        for method, path in (
            ("GET", "/api/v1/sessions"),
            ("DELETE", "/api/v1/sessions/some-session-id"),
            ("DELETE", "/api/v1/sessions"),
            ("GET", "/api/v1/me/export"),
        ):
            started = time.monotonic()
            answer = await client.request(method, path, headers=bearer(token))
            assert time.monotonic() - started < 1.0, f"{method} {path} waited"
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "unavailable"
            assert int(answer.headers["retry-after"]) >= 1
        # The session is untouched: nothing of the refused calls ran.
        assert (await client.get("/api/v1/me", headers=bearer(token))).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("older_side", ["auth", "http"])
async def test_protocol_2_and_3_sides_interoperate_for_the_calls_both_know(
    gatehouse: Gatehouse, older_checkout: Path, older_side: str
) -> None:
    prefix = {"GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-compat-{uuid.uuid4().hex}/auth/"}
    auth_root = older_checkout if older_side == "auth" else REPO_ROOT
    http_root = older_checkout if older_side == "http" else REPO_ROOT
    auth = gatehouse.start_auth(prefix, code_root=auth_root)
    http = gatehouse.start_http(prefix, code_root=http_root)
    try:
        url = f"http://127.0.0.1:{http.ports['http']}"
        await exercise(url)
        if older_side == "auth":
            await protocol_3_calls_answer_at_once(url)
    finally:
        for service in (http, auth):
            service.process.stop()
        gatehouse.http.remove(http)
        gatehouse.auth.remove(auth)
