"""The web pages through the app to a stub auth replica: forms, errors beside their fields,
redirects, CSRF, cookies and security headers. (tests/web drives them in a real browser.)"""

from __future__ import annotations

import asyncio
import dataclasses
import encodings
import re
import time
from html.parser import HTMLParser

import httpx
import pytest
from prometheus_client import REGISTRY

from devstack import DataStores
from devstack.ports import wait_until_async
from services.contract import auth_pb2 as pb
from services.http.bodies import FORM_MAX_FIELDS
from services.http.openapi.fields import PASSWORD_MAX_CODE_POINTS
from services.http.settings import HttpSettings
from tests.http.gateway import Gateway, running_gateway
from tests.http.stub_auth_server import Answer, Handler

USER = pb.User(id=77, username="ann", nickname="Annie <b>")


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, and the ids that labels point at."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def all(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def by_id(self, element_id: str) -> dict[str, str]:
        (found,) = [attrs for _, attrs in self.tags if attrs.get("id") == element_id]
        return found


def answers(by_method: dict[int, Answer]) -> Handler:
    async def handler(envelope: pb.Envelope) -> Answer:
        return by_method.get(envelope.method, Answer())

    return handler


def login_reply(token: str = "fresh.session.token") -> Answer:
    reply = pb.AuthenticateReply(
        token=token, expires_at_ms=int(time.time() + 3600) * 1000, user=USER
    )
    return Answer(payload=reply.SerializeToString())


def profile_reply(user: pb.User = USER) -> Answer:
    return Answer(payload=pb.ProfileReply(user=user).SerializeToString())


async def form_page(gateway: Gateway, path: str) -> tuple[str, Elements]:
    """GET a page; its CSRF token, checked to equal the cookie it set."""
    response = await gateway.client.get(path)
    assert response.status_code == 200
    cookie = response.headers["set-cookie"]
    match = re.fullmatch(r"csrf=([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+); SameSite=Lax; Path=/", cookie)
    assert match, cookie
    elements = Elements(response.text)
    tokens = {
        attrs["value"] for attrs in elements.all("input") if attrs.get("name") == "csrf_token"
    }
    assert tokens == {match.group(1)}
    return match.group(1), elements


def session_cookie(gateway: Gateway, csrf: str = "") -> dict[str, str]:
    value = f"session={gateway.token(user_id=USER.id)}"
    return {"Cookie": f"{value}; csrf={csrf}" if csrf else value}


def field_error(elements: Elements, name: str) -> str:
    field = elements.by_id(name)
    assert field.get("aria-invalid") == "true"
    assert f"{name}-error" in field["aria-describedby"]
    return elements.by_id(f"{name}-error")["id"]


# GET pages


@pytest.mark.parametrize("path", ["/login", "/signup"])
async def test_forms_have_a_label_for_every_field_and_a_csrf_token(
    gateway: Gateway, path: str
) -> None:
    _, elements = await form_page(gateway, path)
    labelled = {attrs["for"] for attrs in elements.all("label")}
    fields = {attrs["id"] for attrs in elements.all("input") if attrs.get("type") != "hidden"}
    assert fields and fields == labelled
    assert gateway.auth_server.calls == []


async def test_pages_send_the_security_headers(gateway: Gateway) -> None:
    response = await gateway.client.get("/login")
    csp = {
        directive.split()[0]: directive.split()[1:]
        for directive in response.headers["content-security-policy"].split(";")
    }
    assert "'unsafe-inline'" not in csp.get("script-src", csp["default-src"])
    assert csp["frame-ancestors"] == ["'none'"]
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "no-store" in response.headers["cache-control"]


@pytest.mark.parametrize("path", ["/login", "/signup"])
async def test_a_head_of_a_form_page_is_answered_as_its_get(gateway: Gateway, path: str) -> None:
    """Link checkers and uptime probes send HEAD: it is no form post, so neither a 403 nor a
    CSRF refusal counted in gatehouse_http_csrf_refusals_total."""
    refusals = REGISTRY.get_sample_value("gatehouse_http_csrf_refusals_total", {"reason": "token"})
    response = await gateway.client.head(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    after = REGISTRY.get_sample_value("gatehouse_http_csrf_refusals_total", {"reason": "token"})
    assert after == refusals
    assert gateway.auth_server.calls == []


async def test_a_page_keeps_the_browsers_csrf_token(gateway: Gateway) -> None:
    token, _ = await form_page(gateway, "/login")
    again = await gateway.client.get("/signup", headers={"Cookie": f"csrf={token}"})
    assert "set-cookie" not in again.headers
    assert f'value="{token}"' in again.text


async def test_the_stylesheet_is_served_by_the_app(gateway: Gateway) -> None:
    page = await gateway.client.get("/login")
    links = Elements(page.text).all("link")
    (stylesheet,) = [attrs["href"] for attrs in links if attrs["rel"] == "stylesheet"]
    css = await gateway.client.get(stylesheet)
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "@media" in css.text


async def test_home_goes_to_login_or_profile(gateway: Gateway) -> None:
    anonymous = await gateway.client.get("/")
    assert (anonymous.status_code, anonymous.headers["location"]) == (303, "/login")
    signed_in = await gateway.client.get("/", headers=session_cookie(gateway))
    assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/profile")
    stale = await gateway.client.get("/", headers={"Cookie": "session=not-a-token"})
    assert stale.headers["location"] == "/login"
    assert gateway.auth_server.calls == []


# Sign up and log in


async def test_login_sets_the_session_and_goes_to_the_profile(gateway: Gateway) -> None:
    session_token = gateway.token(user_id=USER.id, session_id="s-login")
    gateway.auth_server.handler = answers({pb.METHOD_AUTHENTICATE: login_reply(session_token)})
    token, _ = await form_page(gateway, "/login")
    response = await gateway.client.post(
        "/login",
        data={"username": "ann", "password": "pw12345678", "csrf_token": token},
        headers={"Cookie": f"csrf={token}"},
    )
    assert (response.status_code, response.headers["location"]) == (303, "/profile")
    session, new_csrf = response.headers.get_list("set-cookie")
    assert re.fullmatch(
        rf"session={re.escape(session_token)}; HttpOnly; SameSite=Lax; Path=/; Max-Age=\d+",
        session,
    )
    # The new session's own token replaces the pre-session one, which is worthless after it.
    assert new_csrf == f"csrf={gateway.csrf_token('s-login')}; SameSite=Lax; Path=/"
    request = pb.AuthenticateRequest.FromString(gateway.auth_server.calls[0].payload)
    assert (request.username, request.password) == ("ann", "pw12345678")


async def test_a_wrong_password_is_shown_beside_the_password_and_keeps_the_username(
    gateway: Gateway,
) -> None:
    gateway.auth_server.handler = answers(
        {pb.METHOD_AUTHENTICATE: Answer(pb.STATUS_UNAUTHENTICATED, reason="invalid_credentials")}
    )
    token, _ = await form_page(gateway, "/login")
    response = await gateway.client.post(
        "/login",
        data={"username": "ann<x>", "password": "wrong-password", "csrf_token": token},
        headers={"Cookie": f"csrf={token}"},
    )
    assert response.status_code == 400
    assert "set-cookie" not in response.headers
    elements = Elements(response.text)
    field_error(elements, "password")
    assert "The username or password is wrong." in response.text
    assert elements.by_id("username")["value"] == "ann<x>"
    assert "ann<x>" not in response.text  # escaped
    assert "wrong-password" not in response.text


async def test_signup_creates_logs_in_and_goes_to_the_profile(gateway: Gateway) -> None:
    gateway.auth_server.handler = answers(
        {
            pb.METHOD_REGISTER: Answer(payload=pb.RegisterReply(user=USER).SerializeToString()),
            pb.METHOD_AUTHENTICATE: login_reply(),
        }
    )
    token, _ = await form_page(gateway, "/signup")
    response = await gateway.client.post(
        "/signup",
        data={"username": "ann", "nickname": "", "password": "pw12345678", "csrf_token": token},
        headers={"Cookie": f"csrf={token}"},
    )
    assert (response.status_code, response.headers["location"]) == (303, "/profile")
    assert response.headers.get_list("set-cookie")[0].startswith("session=fresh.session.token;")
    register = pb.RegisterRequest.FromString(gateway.auth_server.calls[0].payload)
    assert (register.username, register.nickname) == ("ann", "")  # empty: the username


async def test_the_calls_of_one_page_share_one_deadline(data_stores: DataStores) -> None:
    """GATEHOUSE_CALL_TIMEOUT bounds all of a request's RPCs: after a signup that took 0.6 of it,
    the login that follows has 0.4 left, and a replica that answers in 0.6 misses it (each call
    with a deadline of its own made the page take 1.2x the setting, and more with more calls)."""
    async with running_gateway(data_stores, call_timeout=2.0) as gateway:
        gateway.auth_server.handler = answers(
            {
                pb.METHOD_REGISTER: Answer(payload=pb.RegisterReply(user=USER).SerializeToString()),
                pb.METHOD_AUTHENTICATE: login_reply(),
            }
        )
        token, _ = await form_page(gateway, "/signup")
        gateway.auth_server.delay = 1.2
        response = await gateway.client.post(
            "/signup",
            data={"username": "ann", "password": "pw12345678", "csrf_token": token},
            headers={"Cookie": f"csrf={token}"},
        )
    assert response.status_code == 503, response.text
    assert "Your account was created, but logging in failed" in response.text
    calls = [call.method for call in gateway.auth_server.calls]
    assert calls == [pb.METHOD_REGISTER, pb.METHOD_AUTHENTICATE]  # the login sent, and missed


async def test_a_form_whose_call_used_the_deadline_says_why_it_failed(
    data_stores: DataStores,
) -> None:
    """A password change the auth service does not answer in GATEHOUSE_CALL_TIMEOUT leaves the
    profile page's reads no time: the page says what the change met, with its Retry-After,
    not that the profile is unavailable."""
    async with running_gateway(data_stores, call_timeout=1.0) as gateway:
        gateway.auth_server.delay = 1.5
        token = gateway.csrf_token()
        response = await gateway.client.post(
            "/profile/password",
            data={"current_password": "old", "new_password": "new-password", "csrf_token": token},
            headers=session_cookie(gateway, token),
        )
    assert (response.status_code, response.headers.get("retry-after")) == (503, "1")
    assert "Your request did not go through" in response.text
    assert "Your profile is unavailable" not in response.text
    assert "The auth service cannot be reached right now" in response.text
    assert [call.method for call in gateway.auth_server.calls] == [pb.METHOD_CHANGE_PASSWORD]


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        (
            Answer(pb.STATUS_INVALID, reason="invalid_username", message="use 3 to 30 letters"),
            "username",
        ),
        (Answer(pb.STATUS_CONFLICT, reason="username_taken"), "username"),
        (
            Answer(pb.STATUS_INVALID, reason="invalid_password", message="at least 8 characters"),
            "password",
        ),
        (
            Answer(pb.STATUS_INVALID, reason="invalid_nickname", message="no control characters"),
            "nickname",
        ),
    ],
)
async def test_signup_errors_are_shown_beside_their_field(
    gateway: Gateway, answer: Answer, field: str
) -> None:
    gateway.auth_server.handler = answers({pb.METHOD_REGISTER: answer})
    token, _ = await form_page(gateway, "/signup")
    response = await gateway.client.post(
        "/signup",
        data={"username": "ann", "nickname": "Nick", "password": "pw", "csrf_token": token},
        headers={"Cookie": f"csrf={token}"},
    )
    assert response.status_code in (400, 409)
    elements = Elements(response.text)
    field_error(elements, field)
    assert (elements.by_id("username")["value"], elements.by_id("nickname")["value"]) == (
        "ann",
        "Nick",
    )


async def test_when_the_auth_service_is_down_the_form_says_so(gateway: Gateway) -> None:
    gateway.auth_server.handler = answers({pb.METHOD_AUTHENTICATE: Answer(pb.STATUS_UNAVAILABLE)})
    token, _ = await form_page(gateway, "/login")
    response = await gateway.client.post(
        "/login",
        data={"username": "ann", "password": "pw12345678", "csrf_token": token},
        headers={"Cookie": f"csrf={token}"},
    )
    assert response.status_code == 503
    assert 'role="alert"' in response.text and "retry" in response.text


# CSRF on forms


@pytest.mark.parametrize(
    "path",
    [
        "/login",
        "/signup",
        "/logout",
        "/profile/nickname",
        "/profile/avatar",
        "/profile/password",
        "/profile/delete",
    ],
)
async def test_a_form_post_without_the_csrf_token_is_refused(gateway: Gateway, path: str) -> None:
    token, _ = await form_page(gateway, "/login")
    attempts = [
        {"data": {"username": "ann", "password": "pw12345678"}, "cookie": f"csrf={token}"},
        {
            "data": {"username": "ann", "csrf_token": "forged-token-0123456789"},
            "cookie": f"csrf={token}",
        },
        {"data": {"username": "ann", "csrf_token": token}, "cookie": ""},
        # A token planted in the cookie and echoed, and the pre-session token once logged in.
        {"data": {"username": "ann", "csrf_token": "x"}, "cookie": "csrf=x"},
        {"data": {"username": "ann", "csrf_token": token}, "cookie": f"csrf={token}"},
    ]
    for attempt in attempts:
        cookie = f"session={gateway.token(user_id=USER.id)}; {attempt['cookie']}"
        response = await gateway.client.post(path, data=attempt["data"], headers={"Cookie": cookie})
        assert response.status_code == 403, attempt
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        pre_session_echoed = attempt is attempts[2] or attempt is attempts[4]
        if path in ("/login", "/signup") and pre_session_echoed:
            # A pre-session token with a session: the form is shown again with the session's
            # token, as one opened before a login in another tab
            # (test_a_form_opened_before_a_login_in_another_tab_is_shown_again).
            assert "You logged in from another tab or window" in response.text
        else:
            assert "CSRF" in response.text
    # A picture upload's session is proved live (a read) before its body is read; no form
    # refused for CSRF changes anything.
    allowed = {pb.METHOD_GET_PROFILE} if path == "/profile/avatar" else set()
    assert {call.method for call in gateway.auth_server.calls} <= allowed


async def test_a_planted_csrf_cookie_cannot_log_anyone_in(gateway: Gateway) -> None:
    gateway.auth_server.handler = answers({pb.METHOD_AUTHENTICATE: login_reply()})
    for planted in ("x", "csrf-token-of-the-test-0123456789", "nonce.not-its-mac"):
        response = await gateway.client.post(
            "/login",
            data={"username": "ann", "password": "pw12345678", "csrf_token": planted},
            headers={"Cookie": f"csrf={planted}"},
        )
        assert response.status_code == 403, planted
    assert gateway.auth_server.calls == []


async def test_a_signed_in_page_carries_the_sessions_token(gateway: Gateway) -> None:
    gateway.auth_server.handler = answers({pb.METHOD_GET_PROFILE: profile_reply()})
    pre_session, _ = await form_page(gateway, "/login")
    response = await gateway.client.get(
        "/profile", headers={"Cookie": f"{session_cookie(gateway)['Cookie']}; csrf={pre_session}"}
    )
    bound = gateway.csrf_token()
    assert response.headers["set-cookie"] == f"csrf={bound}; SameSite=Lax; Path=/"
    tokens = {
        attrs["value"]
        for attrs in Elements(response.text).all("input")
        if attrs.get("name") == "csrf_token"
    }
    assert tokens == {bound}


@pytest.mark.parametrize("path", ["/login", "/signup"])
async def test_a_form_opened_before_a_login_in_another_tab_is_shown_again(
    gateway: Gateway, path: str
) -> None:
    """Two tabs on the login page, one logs in: the other's form still carries the pre-session
    token that the session's replaced. It is shown again with the session's token, what was
    typed and why, not the refusal that blames another site; nothing is called."""
    pre_session, _ = await form_page(gateway, path)
    bound = gateway.csrf_token()
    response = await gateway.client.post(
        path,
        data={"username": "ann", "password": "pw12345678", "csrf_token": pre_session},
        headers=session_cookie(gateway, bound),
    )
    assert response.status_code == 403
    assert "You logged in from another tab or window" in response.text
    assert "another site" not in response.text
    elements = Elements(response.text)
    assert elements.by_id("username")["value"] == "ann"
    tokens = {
        attrs["value"] for attrs in elements.all("input") if attrs.get("name") == "csrf_token"
    }
    assert tokens == {bound}
    assert gateway.auth_server.calls == []


async def test_a_login_form_with_a_foreign_token_is_still_refused(gateway: Gateway) -> None:
    """Only a pre-session token is taken for a form opened before a login: another session's
    token, or none, still gets the CSRF refusal."""
    bound = gateway.csrf_token()
    for echoed in (gateway.csrf_token("session-2"), ""):
        response = await gateway.client.post(
            "/login",
            data={"username": "ann", "password": "pw12345678", "csrf_token": echoed},
            headers=session_cookie(gateway, bound),
        )
        assert response.status_code == 403
        assert "another site tried to act on your behalf" in response.text
    assert gateway.auth_server.calls == []


# The profile


async def test_the_profile_shows_username_nickname_and_picture(gateway: Gateway) -> None:
    gateway.auth_server.handler = answers({pb.METHOD_GET_PROFILE: profile_reply()})
    response = await gateway.client.get("/profile", headers=session_cookie(gateway))
    assert response.status_code == 200
    elements = Elements(response.text)
    assert elements.by_id("avatar")["src"] == "/avatars/default/77.svg"
    assert "Annie &lt;b&gt;" in response.text and "Annie <b>" not in response.text
    assert elements.by_id("nickname")["value"] == "Annie <b>"
    forms = {attrs["action"]: attrs for attrs in elements.all("form")}
    assert set(forms) == {
        "/logout",
        "/profile/nickname",
        "/profile/avatar",
        "/profile/sessions/end-all",
        "/profile/password",
        "/profile/delete",
    }
    assert forms["/profile/avatar"]["enctype"] == "multipart/form-data"
    assert all(attrs["method"] == "post" for attrs in forms.values())
    request = pb.GetProfileRequest.FromString(gateway.auth_server.calls[0].payload)
    assert request.session.user_id == USER.id


async def test_the_profile_without_a_session_goes_to_login(gateway: Gateway) -> None:
    for headers in ({}, {"Cookie": "session=garbage"}):
        response = await gateway.client.get("/profile", headers=headers)
        assert (response.status_code, response.headers["location"]) == (303, "/login")
    assert gateway.auth_server.calls == []


async def test_an_ended_session_clears_the_cookie_and_goes_to_login(gateway: Gateway) -> None:
    gateway.auth_server.handler = answers(
        {pb.METHOD_GET_PROFILE: Answer(pb.STATUS_UNAUTHENTICATED)}
    )
    response = await gateway.client.get("/profile", headers=session_cookie(gateway))
    assert (response.status_code, response.headers["location"]) == (303, "/login")
    assert response.headers["set-cookie"] == "session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"


async def test_change_the_nickname(gateway: Gateway) -> None:
    gateway.auth_server.handler = answers({pb.METHOD_UPDATE_PROFILE: profile_reply()})
    token = gateway.csrf_token()
    response = await gateway.client.post(
        "/profile/nickname",
        data={"nickname": "Nick", "csrf_token": token},
        headers=session_cookie(gateway, token),
    )
    assert (response.status_code, response.headers["location"]) == (303, "/profile?saved=nickname")
    request = pb.UpdateProfileRequest.FromString(gateway.auth_server.calls[0].payload)
    assert request.nickname == "Nick" and not request.HasField("avatar_key")
    gateway.auth_server.handler = answers({pb.METHOD_GET_PROFILE: profile_reply()})
    page = await gateway.client.get("/profile?saved=nickname", headers=session_cookie(gateway))
    assert "Your nickname was changed." in page.text


async def test_an_invalid_nickname_is_shown_beside_the_field(gateway: Gateway) -> None:
    gateway.auth_server.handler = answers(
        {
            pb.METHOD_UPDATE_PROFILE: Answer(
                pb.STATUS_INVALID, reason="invalid_nickname", message="a nickname cannot be empty"
            ),
            pb.METHOD_GET_PROFILE: profile_reply(),
        }
    )
    token = gateway.csrf_token()
    response = await gateway.client.post(
        "/profile/nickname",
        data={"nickname": "", "csrf_token": token},
        headers=session_cookie(gateway, token),
    )
    assert response.status_code == 400
    elements = Elements(response.text)
    field_error(elements, "nickname")
    assert "A nickname cannot be empty." in response.text
    assert elements.by_id("nickname")["value"] == ""


async def test_a_nickname_change_refused_for_now_keeps_its_retry_after(gateway: Gateway) -> None:
    """The profile page shown again with the refusal beside the field carries the refusal's
    Retry-After, as the password and deletion forms' do."""
    gateway.auth_server.handler = answers(
        {
            pb.METHOD_UPDATE_PROFILE: Answer(pb.STATUS_UNAVAILABLE, reason="primary_down"),
            pb.METHOD_GET_PROFILE: profile_reply(),
        }
    )
    token = gateway.csrf_token()
    response = await gateway.client.post(
        "/profile/nickname",
        data={"nickname": "Nick", "csrf_token": token},
        headers=session_cookie(gateway, token),
    )
    assert (response.status_code, response.headers.get("retry-after")) == (503, "1")
    field_error(Elements(response.text), "nickname")


async def test_an_upload_that_is_no_picture_is_shown_beside_the_file_field(
    gateway: Gateway,
) -> None:
    gateway.auth_server.handler = answers({pb.METHOD_GET_PROFILE: profile_reply()})
    token = gateway.csrf_token()
    response = await gateway.client.post(
        "/profile/avatar",
        data={"csrf_token": token},
        files={"file": ("notes.txt", b"just text", "text/plain")},
        headers=session_cookie(gateway, token),
    )
    assert response.status_code == 415
    field_error(Elements(response.text), "file")
    # Once to prove the session live before the body is read, once to render (with the
    # sessions the page lists).
    assert [call.method for call in gateway.auth_server.calls] == [
        pb.METHOD_GET_PROFILE,
        pb.METHOD_GET_PROFILE,
        pb.METHOD_LIST_SESSIONS,
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/profile/nickname",
        "/profile/avatar",
        "/profile/password",
        "/profile/delete",
        "/profile/sessions/end",
        "/profile/sessions/end-all",
        "/logout",
    ],
)
async def test_a_forms_address_opened_by_get_leads_to_the_profile(
    gateway: Gateway, path: str
) -> None:
    """A form's error is shown at the form's address: Enter in the address bar then GETs it,
    which leads back to the profile rather than to the API's JSON 405, and acts on nothing."""
    response = await gateway.client.get(path, headers=session_cookie(gateway))
    assert (response.status_code, response.headers["location"]) == (303, "/profile")
    assert "set-cookie" not in response.headers
    assert gateway.auth_server.calls == []


async def test_the_picture_forms_errors_are_in_the_pages_words(gateway: Gateway) -> None:
    """An empty file, and one over GATEHOUSE_MAX_AVATAR_BYTES: the page says so in MiB, as its
    hint does, not in the API's words (request body bytes, the multipart field `file`)."""
    gateway.auth_server.handler = answers({pb.METHOD_GET_PROFILE: profile_reply()})
    token = gateway.csrf_token()
    too_big = b"\x89PNG" + b"\0" * (5 * 1024 * 1024)
    for content, status, message in (
        (b"", 400, "Choose a picture to upload: a PNG, JPEG, WebP or GIF file that is not empty."),
        (too_big, 413, "The picture is larger than 5 MiB. Choose a smaller one."),
    ):
        response = await gateway.client.post(
            "/profile/avatar",
            data={"csrf_token": token},
            files={"file": ("photo.png", content, "image/png")},
            headers=session_cookie(gateway, token),
        )
        assert response.status_code == status
        elements = Elements(response.text)
        field_error(elements, "file")
        assert f'<p class="field-error" id="file-error">{message}</p>' in response.text


async def test_a_picture_form_that_cannot_be_read_is_not_called_empty(gateway: Gateway) -> None:
    """Two files, or a field past FORM_MAX_FIELD_BYTES, beside a picture: the form cannot be
    read, and the page says so, not that no picture was chosen."""
    gateway.auth_server.handler = answers({pb.METHOD_GET_PROFILE: profile_reply()})
    token = gateway.csrf_token()
    png = ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")
    for data, files, message in (
        ({"csrf_token": token}, [("file", png), ("file", png)], "Too many files"),
        ({"csrf_token": token, "note": "x" * 70_000}, [("file", png)], "Part exceeded"),
    ):
        response = await gateway.client.post(
            "/profile/avatar", data=data, files=files, headers=session_cookie(gateway, token)
        )
        assert response.status_code == 400
        field_error(Elements(response.text), "file")
        shown = re.search(r'<p class="field-error" id="file-error">([^<]*)</p>', response.text)
        assert shown and shown.group(1).startswith("The form cannot be read: "), response.text
        assert message in shown.group(1)


async def test_logout_ends_the_session_and_goes_to_login(gateway: Gateway) -> None:
    token = gateway.csrf_token()
    response = await gateway.client.post(
        "/logout", data={"csrf_token": token}, headers=session_cookie(gateway, token)
    )
    assert (response.status_code, response.headers["location"]) == (303, "/login")
    assert response.headers["set-cookie"] == "session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
    request = pb.LogoutRequest.FromString(gateway.auth_server.calls[0].payload)
    assert request.session.user_id == USER.id


async def test_logout_of_an_ended_session_still_goes_to_login(gateway: Gateway) -> None:
    gateway.auth_server.handler = answers({pb.METHOD_LOGOUT: Answer(pb.STATUS_UNAUTHENTICATED)})
    token = gateway.csrf_token()
    response = await gateway.client.post(
        "/logout", data={"csrf_token": token}, headers=session_cookie(gateway, token)
    )
    assert (response.status_code, response.headers["location"]) == (303, "/login")


@pytest.mark.parametrize(
    ("method", "path"), [(pb.METHOD_GET_PROFILE, "/profile"), (pb.METHOD_LOGOUT, "/logout")]
)
async def test_a_page_the_auth_service_cannot_serve_says_when_to_retry(
    gateway: Gateway, method: int, path: str
) -> None:
    """Its 503 carries Retry-After, as the API's do."""
    unavailable = Answer(pb.STATUS_UNAVAILABLE, reason="primary_unavailable", message="try again")
    gateway.auth_server.handler = answers({method: unavailable})
    token = gateway.csrf_token()
    if path == "/logout":
        response = await gateway.client.post(
            path, data={"csrf_token": token}, headers=session_cookie(gateway, token)
        )
    else:
        response = await gateway.client.get(path, headers=session_cookie(gateway))
    assert (response.status_code, response.headers.get("retry-after")) == (503, "1")
    assert response.headers["content-type"] == "text/html; charset=utf-8"


def refusal_page(response: httpx.Response) -> str:
    """The message of a page that refuses a form (a browser shows it, not a JSON body)."""
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-frame-options"] == "DENY"
    messages: list[str] = re.findall(r'<p class="message">([^<]*)</p>', response.text)
    (message,) = messages
    return message


async def test_a_malformed_form_is_a_client_error_shown_on_a_page(gateway: Gateway) -> None:
    token, _ = await form_page(gateway, "/login")
    response = await gateway.client.post(
        "/login",
        content=b"--x\r\nnot a part",
        headers={"Cookie": f"csrf={token}", "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 400
    assert refusal_page(response).startswith("The form cannot be read")
    huge = await gateway.client.post(
        "/login",
        data={"username": "a" * 70_000, "csrf_token": token},
        headers={"Cookie": f"csrf={token}"},
    )
    assert huge.status_code == 413
    assert "exceeds 65536 bytes" in refusal_page(huge)
    assert gateway.auth_server.calls == []


async def test_a_nickname_too_long_to_post_is_refused_on_a_page(gateway: Gateway) -> None:
    """The nickname field has no length limit in the browser: a paste of 70,000 characters
    makes a form over GATEHOUSE_MAX_BODY_BYTES, which the browser shows as a page."""
    token = gateway.csrf_token()
    response = await gateway.client.post(
        "/profile/nickname",
        data={"nickname": "x" * 70_000, "csrf_token": token},
        headers=session_cookie(gateway, token),
    )
    assert response.status_code == 413
    assert "exceeds 65536 bytes" in refusal_page(response)
    assert gateway.auth_server.calls == []


async def test_the_least_body_limit_takes_a_password_change_of_the_longest_passwords(
    data_stores: DataStores,
) -> None:
    """A password may be sent as PASSWORD_MAX_CODE_POINTS code points, each up to 4 UTF-8 bytes
    that the form percent-encodes to 12: at the least GATEHOUSE_MAX_BODY_BYTES the settings
    take, such a form still reaches the auth service instead of a 413 page."""
    (field,) = [
        f
        for f in dataclasses.fields(HttpSettings)
        if f.metadata.get("env") == "GATEHOUSE_MAX_BODY_BYTES"
    ]
    least = field.metadata["bounds"].at_least
    async with running_gateway(data_stores, max_body_bytes=least) as gateway:
        gateway.auth_server.handler = answers(
            {
                pb.METHOD_GET_PROFILE: profile_reply(),
                pb.METHOD_CHANGE_PASSWORD: Answer(pb.STATUS_OK),
            }
        )
        longest = "\U0001f511" * PASSWORD_MAX_CODE_POINTS
        token = gateway.csrf_token()
        response = await gateway.client.post(
            "/profile/password",
            data={"current_password": longest, "new_password": longest, "csrf_token": token},
            headers=session_cookie(gateway, token),
        )
        assert response.status_code != 413
        assert pb.METHOD_CHANGE_PASSWORD in {call.method for call in gateway.auth_server.calls}


def multipart_form(fields: dict[str, bytes], content_type: str) -> tuple[bytes, dict[str, str]]:
    """A multipart form with the boundary "b", and its headers with `content_type`."""
    parts = [
        b'--b\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + value
        for name, value in fields.items()
    ]
    body = b"\r\n".join(parts) + b"\r\n--b--\r\n"
    return body, {"Content-Type": content_type}


@pytest.mark.parametrize(
    ("charset", "path", "field", "value"),
    [
        # UTF-7 spells U+D800 as "+2AA-": a page that echoed it back could not encode itself.
        ("utf-7", "/login", "username", b"+2AA-"),
        ("utf-7", "/signup", "nickname", b"+2AA-"),
        # Python's punycode and idna codecs raise an error Starlette does not catch (it was a
        # 500 with a traceback), after a decode quadratic in the field's length.
        ("punycode", "/login", "username", b"abc-9999999"),
        ("idna", "/signup", "username", b"a" * 70),
        ("latin-1", "/signup", "nickname", b"Jos\xe9"),
        ("no-such-charset", "/login", "username", b"ann"),
    ],
)
async def test_a_multipart_form_in_another_charset_than_utf8_is_a_client_error(
    gateway: Gateway, charset: str, path: str, field: str, value: bytes
) -> None:
    token, _ = await form_page(gateway, path)
    fields = {"username": b"ann", "password": b"pw12345678", "csrf_token": token.encode()}
    body, headers = multipart_form(
        {**fields, field: value}, f"multipart/form-data; boundary=b; charset={charset}"
    )
    response = await gateway.client.post(
        path, content=body, headers={**headers, "Cookie": f"csrf={token}"}
    )
    assert response.status_code == 400
    assert "charset must be UTF-8" in refusal_page(response)
    assert gateway.auth_server.calls == []


async def test_a_made_up_charset_is_not_remembered(gateway: Gateway) -> None:
    """Python's encodings package keeps every name codecs.lookup did not know, forever."""
    token, _ = await form_page(gateway, "/login")
    fields = {"username": b"ann", "password": b"pw12345678", "csrf_token": token.encode()}
    known_before = len(encodings._cache)  # type: ignore[attr-defined]
    for made_up in range(20):
        body, headers = multipart_form(
            fields, f"multipart/form-data; boundary=b; charset=x-made-up-{made_up}"
        )
        response = await gateway.client.post(
            "/login", content=body, headers={**headers, "Cookie": f"csrf={token}"}
        )
        assert response.status_code == 400
    assert len(encodings._cache) == known_before  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=b; charset=UTF-8",
        'Multipart/Form-Data; CHARSET="utf8"; boundary=b',
        "multipart/form-data; boundary=b",
    ],
)
async def test_a_multipart_form_in_utf8_is_read(gateway: Gateway, content_type: str) -> None:
    gateway.auth_server.handler = answers(
        {pb.METHOD_AUTHENTICATE: Answer(pb.STATUS_UNAUTHENTICATED, reason="invalid_credentials")}
    )
    token, _ = await form_page(gateway, "/login")
    fields = {"username": "zoë".encode(), "password": b"pw12345678", "csrf_token": token.encode()}
    body, headers = multipart_form(fields, content_type)
    response = await gateway.client.post(
        "/login", content=body, headers={**headers, "Cookie": f"csrf={token}"}
    )
    assert "The username or password is wrong." in response.text
    (call,) = gateway.auth_server.calls
    assert pb.AuthenticateRequest.FromString(call.payload).username == "zoë"


async def test_a_form_urlencoded_with_raw_utf8_keeps_its_text(gateway: Gateway) -> None:
    """`curl -d nickname=José` sends the é as two raw UTF-8 bytes, not percent-encoded; read as
    Latin-1 they would be stored as "JosÃ©"."""
    gateway.auth_server.handler = answers(
        {
            pb.METHOD_REGISTER: Answer(payload=pb.RegisterReply(user=USER).SerializeToString()),
            pb.METHOD_AUTHENTICATE: login_reply(),
        }
    )
    token, _ = await form_page(gateway, "/signup")
    body = f"username=ann&nickname=José+%C3%A9&password=pw12345678&csrf_token={token}"
    response = await gateway.client.post(
        "/signup",
        content=body.encode(),
        headers={
            "Cookie": f"csrf={token}",
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        },
    )
    assert response.status_code == 303, response.text
    register = pb.RegisterRequest.FromString(gateway.auth_server.calls[0].payload)
    assert register.nickname == "José é"


@pytest.mark.parametrize("nickname", [b"Jos\xe9", b"Jos%E9", b"%ED%A0%80"])
async def test_a_form_urlencoded_that_is_not_utf8_is_a_client_error(
    gateway: Gateway, nickname: bytes
) -> None:
    """Latin-1 bytes, raw or percent-encoded, and an encoded surrogate: refused, not stored
    as U+FFFD or as other letters."""
    token, _ = await form_page(gateway, "/signup")
    body = b"username=ann&password=pw12345678&nickname=" + nickname
    response = await gateway.client.post(
        "/signup",
        content=body + b"&csrf_token=" + token.encode(),
        headers={"Cookie": f"csrf={token}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert "not UTF-8 text" in refusal_page(response)
    assert gateway.auth_server.calls == []


async def test_a_form_urlencoded_with_too_many_fields_is_a_client_error(gateway: Gateway) -> None:
    token, _ = await form_page(gateway, "/login")
    extra = "&".join(f"f{index}=x" for index in range(FORM_MAX_FIELDS))
    response = await gateway.client.post(
        "/login",
        content=f"username=ann&password=pw12345678&csrf_token={token}&{extra}".encode(),
        headers={"Cookie": f"csrf={token}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert f"more than {FORM_MAX_FIELDS} fields" in refusal_page(response)
    assert gateway.auth_server.calls == []


class HeldUpload:
    """A picture form's ASGI request whose body arrives only when `arrive` is set."""

    def __init__(self, body: bytes) -> None:
        self.waiting = asyncio.Event()  # the app asked for the body
        self.arrive = asyncio.Event()
        self.sent: list[dict[str, object]] = []
        self._body = body

    async def receive(self) -> dict[str, object]:
        self.waiting.set()
        await self.arrive.wait()
        body, self._body = self._body, b""
        if not body:
            await asyncio.Event().wait()  # sent all; the client neither sends nor leaves
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(self, message: dict[str, object]) -> None:
        self.sent.append(message)


async def test_a_picture_form_refused_for_overload_is_answered_503_without_rendering_the_page(
    data_stores: DataStores,
) -> None:
    """Its body arrives while the worker's one slot is taken: 503 with Retry-After, as any other
    refusal, and no call to the auth service to render the profile page without a slot."""
    async with running_gateway(data_stores, admission_concurrency=1) as gateway:
        read_held = asyncio.Event()

        async def holds_the_second_read(envelope: pb.Envelope) -> Answer:
            if len(gateway.auth_server.calls) == 2:  # the read's
                await read_held.wait()
            return profile_reply()

        gateway.auth_server.handler = holds_the_second_read
        token = gateway.csrf_token()
        body = (
            b'--gh\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
            + token.encode()
            + b'\r\n--gh\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            + b"Content-Type: image/png\r\n\r\n\x89PNG\r\n--gh--\r\n"
        )
        headers = {
            **session_cookie(gateway, token),
            "Content-Type": "multipart/form-data; boundary=gh",
            "Content-Length": str(len(body)),
            "Host": "gatehouse.test",
        }
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/profile/avatar",
            "raw_path": b"/profile/avatar",
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
        }
        upload = HeldUpload(body)
        posting = asyncio.create_task(gateway.app(scope, upload.receive, upload.send))
        await asyncio.wait_for(upload.waiting.wait(), 5)  # its slot is free while it waits
        reading = asyncio.create_task(
            gateway.client.get(
                "/api/v1/me", headers={"Authorization": f"Bearer {gateway.token(USER.id)}"}
            )
        )
        await wait_until_async(lambda: len(gateway.auth_server.calls) == 2, 5.0, "the read")

        upload.arrive.set()
        await asyncio.wait_for(posting, 5)
        read_held.set()
        assert (await reading).status_code == 200
        start = next(m for m in upload.sent if m["type"] == "http.response.start")
        answered = {bytes(k).decode().lower(): bytes(v).decode() for k, v in start["headers"]}  # type: ignore[attr-defined]
        assert (start["status"], "retry-after" in answered) == (503, True)
        assert answered["content-type"] == "application/json"
        assert [call.method for call in gateway.auth_server.calls] == [pb.METHOD_GET_PROFILE] * 2
