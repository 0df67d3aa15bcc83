"""CSRF tokens bound to the session (HMAC of the session id), and pre-session tokens that
verify under the secret: a planted cookie value is worth nothing."""

from __future__ import annotations

import re

import pytest
from starlette.requests import Request

from services.http.csrf import CsrfTokens
from services.http.tokens import Session

SECRET = "csrf-secret-of-the-unit-tests-0123456789"
TOKENS = CsrfTokens(SECRET, secure_cookie=False)
SESSION = Session(user_id=7, session_id="session-7", expires_at=2e9)
OTHER_SESSION = Session(user_id=7, session_id="session-8", expires_at=2e9)


def request_with(
    cookie: str | None = None, header: str | None = None, *, name: str = "csrf"
) -> Request:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{name}={cookie}".encode()))
    if header is not None:
        headers.append((b"x-csrf-token", header.encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_the_session_token_is_an_hmac_of_the_session_id() -> None:
    token = TOKENS.of_session("session-7")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert token == CsrfTokens(SECRET, secure_cookie=True).of_session("session-7")  # every pod
    assert token != TOKENS.of_session("session-8")
    other_secret = CsrfTokens("another-secret-0123456789abcdef-xyz", secure_cookie=False)
    assert token != other_secret.of_session("session-7")


@pytest.mark.parametrize("planted", ["x", "A" * 43, "csrf-token-of-the-test-0123456789"])
def test_a_planted_cookie_is_refused_with_or_without_a_session(planted: str) -> None:
    request = request_with(planted, header=planted)
    assert not TOKENS.header_matches(request, SESSION)
    assert not TOKENS.header_matches(request, None)
    assert TOKENS.expected(request, None) is None


def test_with_a_session_the_echo_must_be_that_sessions_token() -> None:
    token = TOKENS.of_session(SESSION.session_id)
    assert TOKENS.header_matches(request_with(token, header=token), SESSION)
    assert TOKENS.header_matches(request_with(header=token), SESSION)  # the cookie only carries it
    assert not TOKENS.header_matches(request_with(token, header=token), OTHER_SESSION)
    assert not TOKENS.header_matches(request_with(token), SESSION)
    assert not TOKENS.header_matches(request_with(token, header=""), SESSION)
    assert not TOKENS.header_matches(request_with(token, header=token[:-1] + "B"), SESSION)


def test_a_pre_session_token_verifies_under_the_secret() -> None:
    token = TOKENS.new_pre_session()
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}", token)
    assert TOKENS.is_pre_session(token)
    assert TOKENS.echo_matches(request_with(token), None, token)
    assert not TOKENS.echo_matches(request_with(token), None, TOKENS.new_pre_session())
    nonce, _, mac = token.partition(".")
    altered_mac = mac[:-1] + ("B" if mac.endswith("A") else "A")  # always another MAC
    for forged in (f"{nonce}.{altered_mac}", f"other{nonce}.{mac}", nonce, f".{mac}", f"{nonce}."):
        assert not TOKENS.is_pre_session(forged), forged
    other_pod_secret = CsrfTokens("another-secret-0123456789abcdef-xyz", secure_cookie=False)
    assert not other_pod_secret.is_pre_session(token)


def test_a_pre_session_token_is_worthless_once_logged_in() -> None:
    token = TOKENS.new_pre_session()
    assert not TOKENS.echo_matches(request_with(token), SESSION, token)


def test_a_page_issues_a_pre_session_token_when_the_browser_has_none() -> None:
    token, cookie = TOKENS.page_token(request_with(), None)
    assert TOKENS.is_pre_session(token)
    assert cookie == f"csrf={token}; SameSite=Lax; Path=/"  # readable by the site's own scripts
    assert len({TOKENS.page_token(request_with(), None)[0] for _ in range(20)}) == 20


def test_a_page_keeps_a_valid_token_and_replaces_others() -> None:
    pre_session = TOKENS.new_pre_session()
    assert TOKENS.page_token(request_with(pre_session), None) == (pre_session, None)
    bound = TOKENS.of_session(SESSION.session_id)
    assert TOKENS.page_token(request_with(bound), SESSION) == (bound, None)
    # Logged in with a pre-session cookie: the page gives the session's token.
    assert TOKENS.page_token(request_with(pre_session), SESSION) == (bound, TOKENS.cookie(bound))
    for planted in ("x", "A" * 43, "x" * 200, bound):
        token, cookie = TOKENS.page_token(request_with(planted), None)
        assert token != planted and TOKENS.is_pre_session(token) and cookie is not None


def test_under_https_the_cookie_is_host_prefixed_and_secure() -> None:
    secure = CsrfTokens(SECRET, secure_cookie=True)
    token, cookie = secure.page_token(request_with(), None)
    assert cookie == f"__Host-csrf={token}; SameSite=Lax; Path=/; Secure"
    # The plain `csrf` cookie, which a sibling subdomain could plant, is not read.
    assert secure.expected(request_with(token), None) is None
    assert secure.expected(request_with(token, name="__Host-csrf"), None) == token


def test_oversized_or_non_ascii_echoes_are_refused() -> None:
    token = TOKENS.new_pre_session()
    assert not TOKENS.echo_matches(request_with(token), None, token + "A" * 10_000)
    assert not TOKENS.echo_matches(request_with(token), None, "é" * 66)
    assert not TOKENS.is_pre_session("é." + "A" * 43)
    assert not TOKENS.is_pre_session("A" * 64 + "." + "A" * 200)
