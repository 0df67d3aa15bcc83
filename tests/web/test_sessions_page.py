"""The profile page's "Your sessions" and "Download your data" in a real browser (Chromium
through Playwright) against the whole system. Each step saves a screenshot in
test-output/screenshots/."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
from playwright.async_api import Browser, Page, expect

from devstack.gatehouse import Gatehouse
from tests.system.support import bearer, new_username
from tests.web.test_browser import PASSWORD, sign_up

# Markup in a User-Agent is shown as text, never rendered.
OTHER_DEVICE = "Other device <b>(Android 15; Firefox 140)</b>"


async def log_in_elsewhere(gatehouse: Gatehouse, username: str) -> str:
    """A session of `username` opened through the API, as another device would."""
    async with httpx.AsyncClient(base_url=gatehouse.url(1), trust_env=False) as api:
        login = await api.post(
            "/api/v1/sessions",
            json={"username": username, "password": PASSWORD},
            headers={"User-Agent": OTHER_DEVICE},
        )
    assert login.status_code == 200, login.text
    token: str = login.json()["token"]
    return token


async def status_of(gatehouse: Gatehouse, token: str) -> int:
    async with httpx.AsyncClient(base_url=gatehouse.url(0), trust_env=False) as api:
        return (await api.get("/api/v1/me", headers=bearer(token))).status_code


async def test_your_sessions_marks_this_device_and_logs_out_another(
    page: Page, gatehouse: Gatehouse, screenshots: Path
) -> None:
    username = new_username("Sess")
    await sign_up(page, username)
    other = await log_in_elsewhere(gatehouse, username)
    await page.reload()

    rows = page.locator("#sessions .session")
    await expect(rows).to_have_count(2)
    this_device = page.locator("#sessions .session--current")
    await expect(this_device).to_have_count(1)
    await expect(this_device).to_contain_text("This device")
    await expect(this_device).to_contain_text("Chrome")  # this browser's User-Agent
    elsewhere = rows.filter(has_text=OTHER_DEVICE)
    await expect(elsewhere).to_contain_text("From 127.0.0.1")
    await expect(page.get_by_role("button", name="Log out everywhere")).to_be_visible()
    await page.screenshot(path=screenshots / "profile-sessions.png", full_page=True)

    await elsewhere.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/profile\?saved=session$"))
    await expect(page.get_by_role("status")).to_have_text("That session was logged out.")
    await expect(rows).to_have_count(1)
    await expect(page.locator("#sessions .session--current")).to_have_count(1)
    assert await status_of(gatehouse, other) == 401
    await page.screenshot(path=screenshots / "profile-session-ended.png", full_page=True)

    # This device's own "Log out" ends this browser's session.
    await page.locator("#sessions .session--current").get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.goto("/profile")
    await expect(page).to_have_url(re.compile(r"/login$"))


async def test_log_out_everywhere_ends_this_browser_and_the_others(
    page: Page, gatehouse: Gatehouse, screenshots: Path
) -> None:
    username = new_username("All")
    await sign_up(page, username)
    others = [await log_in_elsewhere(gatehouse, username) for _ in range(2)]
    await page.reload()
    await expect(page.locator("#sessions .session")).to_have_count(3)
    await page.get_by_role("button", name="Log out everywhere").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.screenshot(path=screenshots / "logged-out-everywhere.png", full_page=True)
    assert [await status_of(gatehouse, token) for token in others] == [401, 401]
    await page.goto("/profile")
    await expect(page).to_have_url(re.compile(r"/login$"))


async def test_a_session_form_without_the_csrf_token_is_refused(
    page: Page, gatehouse: Gatehouse
) -> None:
    username = new_username("Csrf")
    await sign_up(page, username)
    other = await log_in_elsewhere(gatehouse, username)
    await page.reload()
    await page.locator("#sessions input[name=csrf_token]").first.evaluate(
        "field => { field.value = 'forged' }"
    )
    await page.locator("#sessions .session").first.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Form refused")).to_be_visible()
    assert await status_of(gatehouse, other) == 200


async def test_download_your_data(page: Page, screenshots: Path) -> None:
    username = new_username("Data")
    await sign_up(page, username, nickname="Data Person")
    link = page.get_by_role("link", name="Download your data")
    await expect(link).to_be_visible()
    await page.locator("#export").screenshot(path=screenshots / "profile-download-data.png")
    async with page.expect_download() as started:
        await link.click()
    download = await started.value
    assert download.suggested_filename == f"gatehouse-{username}.json"
    saved = await download.path()
    exported = json.loads(await asyncio.to_thread(Path(saved).read_text, encoding="utf-8"))
    assert exported["user"]["username"] == username
    assert exported["user"]["nickname"] == "Data Person"
    assert [session["current"] for session in exported["sessions"]] == [True]
    assert exported["avatar"] is None


async def test_your_sessions_at_phone_width(
    browser: Browser, gatehouse: Gatehouse, screenshots: Path
) -> None:
    context = await browser.new_context(
        base_url=gatehouse.url(0), viewport={"width": 390, "height": 844}
    )
    try:
        phone = await context.new_page()
        username = new_username("Phone")
        await sign_up(phone, username)
        await log_in_elsewhere(gatehouse, username)
        await phone.reload()
        await expect(phone.locator("#sessions .session")).to_have_count(2)
        overflow = await phone.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page is {overflow}px wider than the phone"
        for button in await phone.locator("#sessions button").all():
            box = await button.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        await phone.screenshot(path=screenshots / "profile-sessions-phone.png", full_page=True)
    finally:
        await context.close()
