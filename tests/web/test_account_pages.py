"""Changing the password and deleting the account on the profile page, in a real browser
(Debian's Chromium through Playwright) against the whole system, desktop and phone width. Each
step saves a screenshot in test-output/screenshots/."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from devstack.gatehouse import Gatehouse
from tests.system.support import bearer, new_username
from tests.web.test_browser import PASSWORD, portrait_png, sign_up

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
async def api(gatehouse: Gatehouse) -> AsyncIterator[httpx.AsyncClient]:
    """The second HTTP process's API, for a session on another "device"."""
    async with httpx.AsyncClient(base_url=gatehouse.url(1), trust_env=False) as client:
        yield client


@pytest.fixture
async def phone(browser: Browser, gatehouse: Gatehouse) -> AsyncIterator[Page]:
    """A fresh browser context on the first HTTP process, phone-sized."""
    context = await browser.new_context(
        base_url=gatehouse.url(0), viewport={"width": 390, "height": 844}
    )
    context.set_default_timeout(15_000)
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def other_device(api: httpx.AsyncClient, username: str, password: str = PASSWORD) -> str:
    login = await api.post("/api/v1/sessions", json={"username": username, "password": password})
    assert login.status_code == 200, login.text
    api.cookies.clear()
    return str(login.json()["token"])


async def profile_status(api: httpx.AsyncClient, token: str) -> int:
    return (await api.get("/api/v1/me", headers=bearer(token))).status_code


async def test_change_the_password(page: Page, api: httpx.AsyncClient, screenshots: Path) -> None:
    username = new_username("Pwd")
    await sign_up(page, username)
    elsewhere = await other_device(api, username)

    await page.get_by_label("Current password").fill("not my password")
    await page.get_by_label("New password").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Change password").click()
    await expect(page.locator("#current_password-error")).to_have_text("The password is wrong.")
    await page.locator("#current_password").scroll_into_view_if_needed()
    await page.screenshot(path=screenshots / "profile-password-wrong.png", full_page=True)
    assert await profile_status(api, elsewhere) == 200

    await page.get_by_label("Current password").fill(PASSWORD)
    await page.get_by_label("New password").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Change password").click()
    await expect(page.get_by_role("status")).to_have_text(
        "Your password was changed. Your other sessions have ended."
    )
    await page.screenshot(path=screenshots / "profile-password-changed.png", full_page=True)
    assert await profile_status(api, elsewhere) == 401  # the other device is logged out
    await page.reload()
    await expect(page.locator("#username")).to_have_text(username)  # this one is not
    assert await other_device(api, username, NEW_PASSWORD)


async def test_delete_the_account_from_the_danger_zone(
    page: Page, phone: Page, api: httpx.AsyncClient, screenshots: Path, tmp_path: Path
) -> None:
    username = new_username("Del")
    await sign_up(page, username, nickname="Soon Gone")
    await page.get_by_label("Picture").set_input_files(portrait_png(tmp_path / "picture.png"))
    await page.get_by_role("button", name="Upload picture").click()
    await expect(page.get_by_role("status")).to_have_text("Your picture was updated.")
    picture_url = await page.locator("#avatar").get_attribute("src")
    assert picture_url is not None
    elsewhere = await other_device(api, username)

    # The danger zone stands apart: its own card, bordered in the danger colour.
    danger_zone = page.locator(".danger-zone")
    await expect(danger_zone.get_by_role("heading", name="Danger zone")).to_be_visible()
    border = await danger_zone.evaluate("zone => getComputedStyle(zone).borderTopColor")
    button = danger_zone.get_by_role("button", name="Delete my account")
    assert border == await button.evaluate("b => getComputedStyle(b).backgroundColor")
    other_card = page.locator(".card").filter(has_text="Change your nickname")
    assert border != await other_card.evaluate("card => getComputedStyle(card).borderTopColor")
    await danger_zone.scroll_into_view_if_needed()
    await page.screenshot(path=screenshots / "profile-danger-zone.png", full_page=True)

    # On a phone, in the same session's cookie jar of its own: log in there too.
    await phone.goto("/login")
    await phone.get_by_label("Username").fill(username)
    await phone.get_by_label("Password").fill(PASSWORD)
    await phone.get_by_role("button", name="Log in").click()
    await expect(phone).to_have_url(re.compile(r"/profile$"))
    phone_zone = phone.locator(".danger-zone")
    await phone_zone.get_by_label("Your password, to confirm").fill("wrong password")
    await phone_zone.get_by_role("button", name="Delete my account").click()
    await expect(phone.locator("#password-error")).to_have_text("The password is wrong.")
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing overflows sideways at phone width
    await phone.screenshot(
        path=screenshots / "profile-phone-delete-wrong-password.png", full_page=True
    )
    assert await profile_status(api, elsewhere) == 200  # a wrong password deleted nothing

    await phone.locator(".danger-zone").get_by_label("Your password, to confirm").fill(PASSWORD)
    await phone.locator(".danger-zone").get_by_role("button", name="Delete my account").click()
    await expect(phone.get_by_role("heading", name="Your account was deleted")).to_be_visible()
    await phone.screenshot(path=screenshots / "account-deleted-phone.png", full_page=True)
    assert "session" not in {cookie["name"] for cookie in await phone.context.cookies()}

    # Every session ended: the desktop's, the API's; the picture is gone from the store.
    assert await profile_status(api, elsewhere) == 401
    await page.goto("/profile")
    await expect(page).to_have_url(re.compile(r"/login$"))
    assert (await api.get(picture_url)).status_code == 404
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#password-error")).to_be_visible()
    await page.screenshot(path=screenshots / "login-deleted-account.png", full_page=True)
