"""Real calls of every operation against a live stack, each answer checked against what
/openapi.json says of its status: status documented, body valid, required headers present."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devstack.gatehouse import Gatehouse
from tests.openapi.conformance import problems
from tests.openapi.test_document import operations

PASSWORD = "password1"
# Its own loopback address: these calls' failed logins count against no other test's client.
CLIENT_ADDRESS = "127.0.0.62"


@pytest.fixture
async def client(openapi_stack: Gatehouse) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(local_address=CLIENT_ADDRESS)
    async with httpx.AsyncClient(
        base_url=openapi_stack.url(), transport=transport, timeout=15.0, trust_env=False
    ) as opened:
        yield opened


class Calls:
    """Makes calls and keeps, for each, whether its answer is what the document says."""

    def __init__(self, client: httpx.AsyncClient, document: dict[str, Any]) -> None:
        self.client = client
        self.document = document
        self.found: list[str] = []
        self.called: set[tuple[str, str]] = set()
        self.statuses: dict[tuple[str, str], set[int]] = {}

    async def call(
        self, method: str, path: str, *, url: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        response = await self.client.request(method, url or path, **kwargs)
        self.found.extend(problems(self.document, path, response))
        self.called.add((method, path))
        self.statuses.setdefault((method, path), set()).add(response.status_code)
        return response

    async def account(self) -> tuple[str, dict[str, str]]:
        username = f"oa{uuid.uuid4().hex[:12]}"
        credentials = {"username": username, "password": PASSWORD}
        created = await self.call("POST", "/api/v1/users", json=credentials)
        assert created.status_code == 201, created.text
        login = await self.call("POST", "/api/v1/sessions", json=credentials)
        assert login.status_code == 200, login.text
        return username, {"Authorization": f"Bearer {login.json()['token']}"}


async def test_every_operation_answers_as_the_document_says(client: httpx.AsyncClient) -> None:
    served = await client.get("/openapi.json")
    assert served.status_code == 200
    assert served.headers["cache-control"] == "public, max-age=300"
    document = served.json()
    calls = Calls(client, document)
    await calls.call("GET", "/openapi.json")

    username, auth = await calls.account()
    taken = await calls.call(
        "POST", "/api/v1/users", json={"username": username, "password": PASSWORD}
    )
    assert taken.status_code == 409
    await calls.call("POST", "/api/v1/users", json={"username": "x", "password": PASSWORD})
    await calls.call(
        "POST", "/api/v1/users", content=b"{", headers={"Content-Type": "application/json"}
    )
    await calls.call(
        "POST", "/api/v1/users", content=b"username=a", headers={"Content-Type": "text/plain"}
    )
    await calls.call(
        "POST", "/api/v1/sessions", json={"username": username, "password": "wrong-one"}
    )
    await calls.call(
        "POST",
        "/api/v1/sessions",
        json={"username": username, "password": PASSWORD},
        headers={"Origin": "https://elsewhere.example"},
    )
    await calls.call(
        "POST", "/api/v1/sessions", json={"username": username, "password": "x" * 70_000}
    )

    await calls.call("GET", "/api/v1/me", headers=auth)
    await calls.call("GET", "/api/v1/me")
    await calls.call("GET", "/api/v1/me", headers={"Authorization": "Bearer not-a-token"})
    await calls.call("PATCH", "/api/v1/me", headers=auth, json={"nickname": "Ada"})
    await calls.call("PATCH", "/api/v1/me", headers=auth, json={"nickname": "   "})
    await calls.call("PATCH", "/api/v1/me", headers=auth, json={"nickname": 5})
    await calls.call("GET", "/api/v1/sessions", headers=auth)
    await calls.call("GET", "/api/v1/me/export", headers=auth)
    await calls.call("PUT", "/api/v1/me/avatar", headers=auth, content=b"not a picture")
    await calls.call("PUT", "/api/v1/me/avatar", headers=auth, files={"other": ("a.png", b"x")})
    await calls.call(
        "PUT",
        "/api/v1/me/password",
        headers=auth,
        json={"current_password": "wrong-one", "new_password": "password2"},
    )
    await calls.call(
        "PUT",
        "/api/v1/me/password",
        headers=auth,
        json={"current_password": PASSWORD, "new_password": "short"},
    )
    await calls.call(
        "PUT",
        "/api/v1/me/password",
        headers=auth,
        json={"current_password": PASSWORD, "new_password": "password2"},
    )
    await calls.call(
        "DELETE", "/api/v1/sessions/{id}", url="/api/v1/sessions/no-such-session", headers=auth
    )
    await calls.call("DELETE", "/api/v1/me", headers=auth, json={"password": "wrong-one"})

    cookie_login = await calls.call(
        "POST", "/api/v1/sessions", json={"username": username, "password": "password2"}
    )
    cookie = {"Cookie": f"session={cookie_login.cookies['session']}"}
    await calls.call("DELETE", "/api/v1/sessions/current", headers=cookie)  # no CSRF header: 403
    await calls.call("DELETE", "/api/v1/sessions/current", headers=auth)
    await calls.call("GET", "/api/v1/sessions", headers=auth)  # its session has ended: 401

    _, auth = await calls.account()
    sessions = (await calls.call("GET", "/api/v1/sessions", headers=auth)).json()["sessions"]
    await calls.call(
        "DELETE", "/api/v1/sessions/{id}", url=f"/api/v1/sessions/{sessions[0]['id']}", headers=auth
    )
    _, auth = await calls.account()
    await calls.call("DELETE", "/api/v1/sessions", headers=auth)
    _, auth = await calls.account()
    await calls.call("DELETE", "/api/v1/me", headers=auth, json={"password": PASSWORD})

    partner = {"username": f"oa{uuid.uuid4().hex[:12]}", "password": PASSWORD}
    await calls.call("POST", "/open_api/v1/register", json=partner)
    await calls.call("POST", "/open_api/v1/register", json=partner)
    await calls.call("POST", "/open_api/v1/authenticate", json=partner)
    await calls.call("POST", "/open_api/v1/authenticate", json={**partner, "password": "wrong-one"})
    # Another site's form with a session cookie in the browser: refused whatever the path.
    elsewhere = {"Origin": "https://elsewhere.example", **cookie}
    for path in ("/open_api/v1/register", "/open_api/v1/authenticate"):
        refused = await calls.call("POST", path, json=partner, headers=elsewhere)
        assert refused.status_code == 403, refused.text

    assert calls.found == []
    assert calls.called == {(method, path) for method, path, _ in operations(document)}
    assert calls.statuses[("POST", "/api/v1/sessions")] == {200, 401, 403, 413}
    assert calls.statuses[("DELETE", "/api/v1/sessions/current")] == {204, 403}
    assert calls.statuses[("GET", "/api/v1/sessions")] == {200, 401}
