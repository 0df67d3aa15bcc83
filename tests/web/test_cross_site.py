"""Login CSRF in a real browser: a page of another site submits a form that logs the visitor
into the attacker's account. Chromium sends the visitor's request with the other site's
`Origin`; Gatehouse refuses it and the visitor gets no session cookie."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from playwright.async_api import Browser, Route

from devstack.gatehouse import Gatehouse
from tests.system.support import new_username

# Another site on the loopback interface (localhost is not the site 127.0.0.1), so that
# Chromium's local network access rules do not stop the request before it is sent.
EVIL_PAGE = "http://localhost:9/win-a-prize"
# A text/plain form sends `name=value`: the attacker hides the `=` inside the password.
PASSWORD_PREFIX, PASSWORD_SUFFIX = "attacker password", "x"


def attack_page(action: str, username: str, *, enctype: str) -> str:
    if enctype == "text/plain":
        name = f'{{"username": "{username}", "password": "{PASSWORD_PREFIX}'
        value = f'{PASSWORD_SUFFIX}"}}'
        fields = f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
    else:
        fields = (
            f'<input type="hidden" name="username" value="{username}">'
            f'<input type="hidden" name="password" value="{PASSWORD_PREFIX}={PASSWORD_SUFFIX}">'
        )
    return (
        f'<!doctype html><form id="f" method="post" action="{action}" enctype="{enctype}">'
        f"{fields}</form><script>document.getElementById('f').submit()</script>"
    )


def serving(body: str) -> Callable[[Route], Awaitable[None]]:
    async def fulfil(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html", body=body)

    return fulfil


async def test_another_site_cannot_log_the_visitor_in(
    browser: Browser, gatehouse: Gatehouse, screenshots: Path
) -> None:
    target = gatehouse.url(0)
    username = new_username("Attacker")
    password = f"{PASSWORD_PREFIX}={PASSWORD_SUFFIX}"
    async with httpx.AsyncClient(base_url=target, trust_env=False) as api:
        created = await api.post("/api/v1/users", json={"username": username, "password": password})
        assert created.status_code == 201, created.text

    for action, enctype in (
        (f"{target}/api/v1/sessions", "text/plain"),
        (f"{target}/login", "application/x-www-form-urlencoded"),
    ):
        context = await browser.new_context()
        try:
            page = await context.new_page()

            await page.route(EVIL_PAGE, serving(attack_page(action, username, enctype=enctype)))
            async with page.expect_response(action) as answer:
                await page.goto(EVIL_PAGE)
            response = await answer.value
            request_headers = await response.request.all_headers()
            assert request_headers["origin"] == "http://localhost:9", request_headers
            assert response.status == 403, await response.text()
            assert "csrf_failed" in await response.text()
            cookies = {cookie["name"] for cookie in await context.cookies(target)}
            assert not cookies & {"session", "__Host-session"}, cookies
            await page.screenshot(path=screenshots / "login-csrf-refused.png", full_page=True)
        finally:
            await context.close()
