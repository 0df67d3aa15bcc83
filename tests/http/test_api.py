"""The API contract, end to end through the app to a stub auth replica found in real etcd."""

from __future__ import annotations

import re
import time
from datetime import datetime

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.contract import auth_pb2 as pb
from tests.http.gateway import Gateway
from tests.http.stub_auth_server import Answer, Handler

USER = pb.User(id=2**62 + 1, username="ann", nickname="Annie", created_at_ms=1, updated_at_ms=2)
USER_VIEW = {
    "id": str(2**62 + 1),
    "username": "ann",
    "nickname": "Annie",
    "avatar_url": f"/avatars/default/{2**62 + 1}.svg",  # no picture: the generated default
}


CSRF = "csrf-token-of-the-test-0123456789"
JSON = {"content-type": "application/json"}


def answer_with(
    status: pb.Status = pb.STATUS_OK, payload: bytes = b"", reason: str = "", message: str = ""
) -> Handler:
    async def handler(envelope: pb.Envelope) -> Answer:
        return Answer(status, payload, reason, message)

    return handler


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


def only_call(gateway: Gateway, method: int) -> pb.Envelope:
    assert [call.method for call in gateway.auth_server.calls] == [method]
    return gateway.auth_server.calls[0]


# POST /api/v1/users


async def test_register_creates_a_user(gateway: Gateway) -> None:
    gateway.auth_server.handler = answer_with(
        payload=pb.RegisterReply(user=USER).SerializeToString()
    )
    response = await gateway.client.post(
        "/api/v1/users",
        json={"username": "ann", "password": "correct horse", "nickname": "Annie", "x": 1},
    )
    assert response.status_code == 201
    assert response.json() == USER_VIEW
    assert response.headers["content-type"].startswith("application/json")
    request = pb.RegisterRequest.FromString(only_call(gateway, pb.METHOD_REGISTER).payload)
    assert (request.username, request.password, request.nickname) == (
        "ann",
        "correct horse",
        "Annie",
    )


async def test_register_without_nickname_leaves_it_to_the_auth_service(gateway: Gateway) -> None:
    gateway.auth_server.handler = answer_with(
        payload=pb.RegisterReply(user=USER).SerializeToString()
    )
    response = await gateway.client.post(
        "/api/v1/users", json={"username": "ann", "password": "pw12345678"}
    )
    assert response.status_code == 201
    assert pb.RegisterRequest.FromString(gateway.auth_server.calls[0].payload).nickname == ""


async def test_an_empty_nickname_is_refused(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/api/v1/users", json={"username": "ann", "password": "pw12345678", "nickname": ""}
    )
    assert error_of(response) == (400, "invalid_nickname")
    assert gateway.auth_server.calls == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            Answer(pb.STATUS_INVALID, reason="invalid_username", message="3-30 letters"),
            (400, "invalid_username"),
        ),
        (
            Answer(pb.STATUS_INVALID, reason="invalid_password", message="8-256"),
            (400, "invalid_password"),
        ),
        (
            Answer(pb.STATUS_INVALID, reason="invalid_nickname", message="1-30"),
            (400, "invalid_nickname"),
        ),
        (
            Answer(pb.STATUS_CONFLICT, reason="username_taken", message="taken"),
            (409, "username_taken"),
        ),
        (Answer(pb.STATUS_OVERLOADED, message="busy"), (503, "overloaded")),
        (Answer(pb.STATUS_UNAVAILABLE, message="no worker id"), (503, "unavailable")),
        (Answer(pb.STATUS_INTERNAL, message="bug"), (500, "internal_error")),
    ],
)
async def test_register_failures_map_to_api_errors(
    gateway: Gateway, answer: Answer, expected: tuple[int, str]
) -> None:
    gateway.auth_server.handler = answer_with(
        answer.status, reason=answer.reason, message=answer.message
    )
    response = await gateway.client.post(
        "/api/v1/users", json={"username": "ann", "password": "pw12345678"}
    )
    assert error_of(response) == expected
    if expected[0] == 503:
        assert response.headers["retry-after"] == "1"
    if expected[1].startswith("invalid_"):
        assert response.json()["error"]["message"] == answer.message


@pytest.mark.parametrize("field", ["username", "password", "nickname"])
async def test_lone_surrogates_are_refused_before_any_call(gateway: Gateway, field: str) -> None:
    fields = {"username": '"ann"', "password": '"pw12345678"', "nickname": '"Annie"'}
    fields[field] = '"a\\ud800b"'
    body = "{" + ",".join(f'"{name}": {value}' for name, value in fields.items()) + "}"
    response = await gateway.client.post("/api/v1/users", content=body.encode(), headers=JSON)
    assert error_of(response) == (400, f"invalid_{field}")
    assert gateway.auth_server.calls == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "invalid_json"),
        (b"[]", "invalid_request"),
        (b'{"username": "ann"}', "invalid_request"),
        (b'{"username": 1, "password": "pw12345678"}', "invalid_request"),
        (b'{"username": "ann", "password": "pw12345678", "nickname": 5}', "invalid_request"),
    ],
)
async def test_register_bodies_are_checked(gateway: Gateway, body: bytes, code: str) -> None:
    response = await gateway.client.post("/api/v1/users", content=body, headers=JSON)
    assert error_of(response) == (400, code)
    assert gateway.auth_server.calls == []


async def test_a_body_over_the_limit_is_refused(gateway: Gateway) -> None:
    password = "p" * (gateway.settings.max_body_bytes + 1)
    response = await gateway.client.post(
        "/api/v1/users", json={"username": "ann", "password": password}
    )
    assert error_of(response) == (413, "payload_too_large")
    assert gateway.auth_server.calls == []


# POST /api/v1/sessions


def authenticate_reply(lifetime: int = 86400) -> pb.AuthenticateReply:
    expires_at = int(time.time()) + lifetime
    return pb.AuthenticateReply(
        token="header.payload.signature", expires_at_ms=expires_at * 1000, user=USER
    )


async def test_login_returns_the_token_and_sets_the_cookie(gateway: Gateway) -> None:
    reply = authenticate_reply()
    gateway.auth_server.handler = answer_with(payload=reply.SerializeToString())
    response = await gateway.client.post(
        "/api/v1/sessions", json={"username": "ann", "password": "pw12345678"}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"  # a token: no cache keeps it
    body = response.json()
    assert body["token"] == reply.token
    assert body["token_type"] == "Bearer"
    assert body["user"] == USER_VIEW
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])
    assert datetime.fromisoformat(body["expires_at"]).timestamp() == reply.expires_at_ms / 1000
    cookie = response.headers["set-cookie"]
    match = re.fullmatch(r"session=(\S+); HttpOnly; SameSite=Lax; Path=/; Max-Age=(\d+)", cookie)
    assert match, cookie
    assert match.group(1) == reply.token
    assert abs(int(match.group(2)) - 86400) <= 1
    request = pb.AuthenticateRequest.FromString(only_call(gateway, pb.METHOD_AUTHENTICATE).payload)
    assert (request.username, request.password) == ("ann", "pw12345678")


@pytest.mark.parametrize(
    ("sent", "recorded"),
    [
        ("Mozilla/5.0 José 🦊".encode(), "Mozilla/5.0 José 🦊"),  # UTF-8, as clients send it
        (b"curl Jos\xe9", "curl José"),  # not UTF-8: read as HTTP reads headers, Latin-1
    ],
)
async def test_login_records_the_user_agent_as_its_client_wrote_it(
    gateway: Gateway, sent: bytes, recorded: str
) -> None:
    gateway.auth_server.handler = answer_with(payload=authenticate_reply().SerializeToString())
    response = await gateway.client.post(
        "/api/v1/sessions",
        json={"username": "ann", "password": "pw12345678"},
        headers={"User-Agent": sent},
    )
    assert response.status_code == 200
    request = pb.AuthenticateRequest.FromString(only_call(gateway, pb.METHOD_AUTHENTICATE).payload)
    assert request.user_agent == recorded


async def test_login_gives_the_new_sessions_csrf_token(gateway: Gateway) -> None:
    token = gateway.token(user_id=2**62 + 1, session_id="s-new")
    expires_at_ms = int(time.time() + 3600) * 1000
    reply = pb.AuthenticateReply(token=token, expires_at_ms=expires_at_ms, user=USER)
    gateway.auth_server.handler = answer_with(payload=reply.SerializeToString())
    response = await gateway.client.post(
        "/api/v1/sessions",
        json={"username": "ann", "password": "pw12345678"},
        headers={"Cookie": "csrf=planted-before-the-login-0123456789"},
    )
    assert response.status_code == 200
    session_cookie, csrf_cookie = response.headers.get_list("set-cookie")
    assert session_cookie.startswith(f"session={token};")
    assert csrf_cookie == f"csrf={gateway.csrf_token('s-new')}; SameSite=Lax; Path=/"


@pytest.mark.parametrize("status", [pb.STATUS_UNAUTHENTICATED, pb.STATUS_INVALID])
async def test_every_credential_failure_gets_one_answer(gateway: Gateway, status: int) -> None:
    gateway.auth_server.handler = answer_with(status, reason="whatever", message="unknown user")
    response = await gateway.client.post(
        "/api/v1/sessions", json={"username": "nobody", "password": "x"}
    )
    assert error_of(response) == (401, "invalid_credentials")
    assert response.json()["error"]["message"] == "the username or password is wrong"
    assert "set-cookie" not in response.headers


async def test_login_with_a_lone_surrogate_is_invalid_credentials(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/api/v1/sessions", content=b'{"username": "ann", "password": "pw\\udc00pw"}', headers=JSON
    )
    assert error_of(response) == (401, "invalid_credentials")
    assert gateway.auth_server.calls == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"nope", "invalid_json"),
        (b'{"username": "ann"}', "invalid_request"),
        (b'{"username": "ann", "password": 1}', "invalid_request"),
    ],
)
async def test_login_bodies_are_checked(gateway: Gateway, body: bytes, code: str) -> None:
    response = await gateway.client.post("/api/v1/sessions", content=body, headers=JSON)
    assert error_of(response) == (400, code)


async def test_login_when_the_auth_service_is_busy(gateway: Gateway) -> None:
    gateway.auth_server.handler = answer_with(pb.STATUS_OVERLOADED, message="hash queue full")
    response = await gateway.client.post(
        "/api/v1/sessions", json={"username": "ann", "password": "pw12345678"}
    )
    assert error_of(response) == (503, "overloaded")
    assert response.headers["retry-after"] == "1"


# GET / PATCH /api/v1/me


async def test_me_with_a_bearer_token(gateway: Gateway) -> None:
    gateway.auth_server.handler = answer_with(
        payload=pb.ProfileReply(user=USER).SerializeToString()
    )
    response = await gateway.client.get(
        "/api/v1/me",
        headers={"Authorization": f"Bearer {gateway.token(user_id=77, session_id='s-77')}"},
    )
    assert response.status_code == 200
    assert response.json() == USER_VIEW
    assert response.headers["cache-control"] == "no-store"  # personal data
    request = pb.GetProfileRequest.FromString(only_call(gateway, pb.METHOD_GET_PROFILE).payload)
    assert (request.session.user_id, request.session.session_id) == (77, "s-77")


async def test_me_with_the_session_cookie(gateway: Gateway) -> None:
    response = await gateway.client.get(
        "/api/v1/me", headers={"Cookie": f"session={gateway.token(user_id=5)}"}
    )
    assert response.status_code == 200
    request = pb.GetProfileRequest.FromString(only_call(gateway, pb.METHOD_GET_PROFILE).payload)
    assert request.session.user_id == 5


async def test_the_bearer_header_wins_over_the_cookie(gateway: Gateway) -> None:
    good, bad = gateway.token(user_id=8), "not-a-token"
    response = await gateway.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {good}", "Cookie": f"session={bad}"}
    )
    assert response.status_code == 200
    response = await gateway.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {bad}", "Cookie": f"session={good}"}
    )
    assert error_of(response) == (401, "unauthenticated")
    assert len(gateway.auth_server.calls) == 1


def bad_tokens(gateway: Gateway) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "42", "sid": "s", "iat": now, "exp": now + 600}
    return {
        "garbage": "garbage",
        "expired": gateway.token(iat=now - 7200, exp=now - 3600),
        "hs256": jwt.encode(claims, "secret" * 6, algorithm="HS256", headers={"kid": gateway.kid}),
        "unknown kid": jwt.encode(
            claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "nope"}
        ),
        "forged": jwt.encode(
            claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": gateway.kid}
        ),
        "no sid": jwt.encode(
            {**claims, "sid": None},
            gateway.signing_key,
            algorithm="EdDSA",
            headers={"kid": gateway.kid},
        ),
    }


@pytest.mark.parametrize("kind", ["garbage", "expired", "hs256", "unknown kid", "forged", "no sid"])
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_a_bad_token_never_reaches_the_auth_service(
    gateway: Gateway, kind: str, method: str
) -> None:
    token = bad_tokens(gateway)[kind]
    path = "/api/v1/sessions/current" if method == "DELETE" else "/api/v1/me"
    response = await gateway.client.request(
        method,
        path,
        headers={"Authorization": f"Bearer {token}"},
        json={"nickname": "x"} if method == "PATCH" else None,
    )
    assert error_of(response) == (401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"
    assert gateway.auth_server.calls == []


async def test_no_token_is_unauthenticated(gateway: Gateway) -> None:
    for headers in (
        {},
        {"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"},
        {"Authorization": "Bearer "},
    ):
        assert error_of(await gateway.client.get("/api/v1/me", headers=headers)) == (
            401,
            "unauthenticated",
        )
    assert gateway.auth_server.calls == []


async def test_a_revoked_session_is_unauthenticated(gateway: Gateway) -> None:
    gateway.auth_server.handler = answer_with(
        pb.STATUS_UNAUTHENTICATED, reason="session_revoked", message="revoked"
    )
    response = await gateway.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {gateway.token()}"}
    )
    assert error_of(response) == (401, "unauthenticated")


async def test_update_the_nickname(gateway: Gateway) -> None:
    renamed = pb.User(id=USER.id, username="ann", nickname="Ann B")
    gateway.auth_server.handler = answer_with(
        payload=pb.ProfileReply(user=renamed).SerializeToString()
    )
    response = await gateway.client.patch(
        "/api/v1/me",
        json={"nickname": "Ann B"},
        headers={"Authorization": f"Bearer {gateway.token(user_id=9)}"},
    )
    assert response.status_code == 200
    assert response.json()["nickname"] == "Ann B"
    request = pb.UpdateProfileRequest.FromString(
        only_call(gateway, pb.METHOD_UPDATE_PROFILE).payload
    )
    assert request.session.user_id == 9
    assert request.HasField("nickname") and request.nickname == "Ann B"
    assert not request.HasField("avatar_key")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{}", (400, "invalid_request")),
        (b'{"nickname": null}', (400, "invalid_request")),
        (b'{"nickname": "\\udfff"}', (400, "invalid_nickname")),
        (b"nickname=x", (400, "invalid_json")),
    ],
)
async def test_update_bodies_are_checked(
    gateway: Gateway, body: bytes, expected: tuple[int, str]
) -> None:
    response = await gateway.client.patch(
        "/api/v1/me", content=body, headers={**JSON, "Authorization": f"Bearer {gateway.token()}"}
    )
    assert error_of(response) == expected
    assert gateway.auth_server.calls == []


async def test_an_invalid_nickname_is_reported_by_the_auth_service(gateway: Gateway) -> None:
    gateway.auth_server.handler = answer_with(
        pb.STATUS_INVALID, reason="invalid_nickname", message="control characters"
    )
    response = await gateway.client.patch(
        "/api/v1/me",
        json={"nickname": "a\u0007"},
        headers={"Authorization": f"Bearer {gateway.token()}"},
    )
    assert error_of(response) == (400, "invalid_nickname")


# DELETE /api/v1/sessions/current


async def test_logout_revokes_and_clears_the_cookie(gateway: Gateway) -> None:
    response = await gateway.client.delete(
        "/api/v1/sessions/current",
        headers={
            "Cookie": f"session={gateway.token(user_id=3, session_id='s-3')}",
            "X-CSRF-Token": gateway.csrf_token("s-3"),
        },
    )
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["set-cookie"] == "session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
    request = pb.LogoutRequest.FromString(only_call(gateway, pb.METHOD_LOGOUT).payload)
    assert (request.session.user_id, request.session.session_id) == (3, "s-3")


# /open_api/v1


async def test_open_register(gateway: Gateway) -> None:
    gateway.auth_server.handler = answer_with(
        payload=pb.RegisterReply(user=USER).SerializeToString()
    )
    response = await gateway.client.post(
        "/open_api/v1/register", json={"username": "ann", "password": "pw12345678"}
    )
    assert response.status_code == 200
    assert response.json() == {"id": USER_VIEW["id"], "username": "ann"}


async def test_open_register_conflict_and_busy(gateway: Gateway) -> None:
    gateway.auth_server.handler = answer_with(pb.STATUS_CONFLICT, reason="username_taken")
    response = await gateway.client.post(
        "/open_api/v1/register", json={"username": "ann", "password": "pw12345678"}
    )
    assert error_of(response) == (409, "username_taken")
    gateway.auth_server.handler = answer_with(pb.STATUS_UNAVAILABLE)
    response = await gateway.client.post(
        "/open_api/v1/register", json={"username": "ann", "password": "pw12345678"}
    )
    assert error_of(response) == (503, "unavailable")


async def test_open_authenticate(gateway: Gateway) -> None:
    gateway.auth_server.handler = answer_with(payload=authenticate_reply().SerializeToString())
    response = await gateway.client.post(
        "/open_api/v1/authenticate", json={"username": "ann", "password": "pw12345678"}
    )
    assert response.status_code == 200
    assert response.json() == {"token": "header.payload.signature"}
    assert "set-cookie" not in response.headers


async def test_open_authenticate_credential_failures_are_one_404(gateway: Gateway) -> None:
    bodies = []
    for status in (pb.STATUS_UNAUTHENTICATED, pb.STATUS_INVALID):
        gateway.auth_server.handler = answer_with(status, message=f"detail {status}")
        response = await gateway.client.post(
            "/open_api/v1/authenticate", json={"username": "x", "password": "y"}
        )
        assert response.status_code == 404
        bodies.append(response.json())
    response = await gateway.client.post(
        "/open_api/v1/authenticate",
        content=b'{"username": "\\ud800", "password": "y"}',
        headers=JSON,
    )
    assert response.status_code == 404
    bodies.append(response.json())
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["error"]["code"] == "invalid_credentials"


async def test_open_authenticate_bodies_are_checked(gateway: Gateway) -> None:
    response = await gateway.client.post("/open_api/v1/authenticate", json={"username": "x"})
    assert error_of(response) == (400, "invalid_request")


@pytest.mark.parametrize(
    "path",
    ["/api/v1/users", "/api/v1/sessions", "/open_api/v1/register", "/open_api/v1/authenticate"],
)
async def test_a_text_plain_body_is_refused_415_before_any_call(
    gateway: Gateway, path: str
) -> None:
    # What a form on another site can send without a preflight: it must not log anyone in.
    response = await gateway.client.post(
        path,
        content=b'{"username": "ann", "password": "pw12345678"}',
        headers={"content-type": "text/plain"},
    )
    assert error_of(response) == (415, "unsupported_media_type")
    assert gateway.auth_server.calls == []
