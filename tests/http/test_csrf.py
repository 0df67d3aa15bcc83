"""The double-submit CSRF token: issued by pages, echoed by forms and headers."""

from __future__ import annotations

from starlette.requests import Request

from services.http.csrf import CSRF_COOKIE, echo_matches, header_matches, page_token

TOKEN = "A" * 43


def request_with(cookie: str | None = None, header: str | None = None) -> Request:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{CSRF_COOKIE}={cookie}".encode()))
    if header is not None:
        headers.append((b"x-csrf-token", header.encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_a_page_issues_a_token_cookie_when_the_browser_has_none() -> None:
    token, cookie = page_token(request_with(), secure_cookie=False)
    assert len(token) >= 32
    assert cookie == f"csrf={token}; SameSite=Lax; Path=/"  # readable by the site's own scripts


def test_the_cookie_is_secure_when_configured() -> None:
    _, cookie = page_token(request_with(), secure_cookie=True)
    assert cookie is not None and cookie.endswith("; Secure")


def test_tokens_are_random() -> None:
    assert len({page_token(request_with(), secure_cookie=False)[0] for _ in range(20)}) == 20


def test_a_page_reuses_the_browsers_token() -> None:
    assert page_token(request_with(TOKEN), secure_cookie=False) == (TOKEN, None)


def test_a_malformed_cookie_is_replaced() -> None:
    for bad in ("short", "x" * 200, "a" * 20 + "!", "a" * 20 + "<"):
        token, cookie = page_token(request_with(bad), secure_cookie=False)
        assert token != bad and cookie is not None, bad


def test_the_echo_must_equal_the_cookie() -> None:
    assert echo_matches(request_with(TOKEN), TOKEN)
    assert not echo_matches(request_with(TOKEN), TOKEN[:-1] + "B")
    assert not echo_matches(request_with(TOKEN), None)
    assert not echo_matches(request_with(TOKEN), "")
    assert not echo_matches(request_with(), TOKEN)
    assert not echo_matches(request_with(""), "")


def test_the_header_echo() -> None:
    assert header_matches(request_with(TOKEN, header=TOKEN))
    assert not header_matches(request_with(TOKEN))
    assert not header_matches(request_with(TOKEN, header="other"))
