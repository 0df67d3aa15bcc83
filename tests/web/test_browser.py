"""The pages in a real browser (Debian's Chromium through Playwright) against the whole system:
sign up, log in, the profile, a new nickname, a picture upload, log out, a wrong password and a
form without its CSRF token. Each step saves a screenshot in test-output/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from PIL import Image, ImageDraw
from playwright.async_api import Browser, Page, expect

from devstack.gatehouse import Gatehouse
from devstack.ports import wait_until_async
from tests.system.support import new_username

PASSWORD = "correct horse battery"


def portrait_png(path: Path) -> Path:
    """A 900x600 PNG: sky, sun and hills, so a crop and a resize show in the screenshot."""
    image = Image.new("RGB", (900, 600), (120, 180, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((520, 90, 700, 270), fill=(255, 205, 60))
    draw.polygon(
        [(0, 600), (0, 380), (300, 300), (620, 420), (900, 330), (900, 600)], fill=(60, 150, 80)
    )
    image.save(path, format="PNG")
    return path


async def sign_up(page: Page, username: str, nickname: str = "") -> None:
    await page.goto("/signup")
    await page.get_by_label("Username").fill(username)
    if nickname:
        await page.get_by_label("Nickname (optional)").fill(nickname)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page).to_have_url(re.compile(r"/profile$"))


async def natural_size(page: Page) -> tuple[int, int]:
    """The profile picture's size as decoded by the browser, once it has loaded."""
    avatar = page.locator("#avatar")
    await expect(avatar).to_have_js_property("complete", True)
    width, height = await avatar.evaluate("image => [image.naturalWidth, image.naturalHeight]")
    return int(width), int(height)


async def uploaded_picture_size(page: Page) -> tuple[int, int]:
    """The size of the picture the profile shows once it is an uploaded one (the default picture
    is 256 by 256 too)."""
    avatar = page.locator("#avatar")
    await expect(avatar).to_have_attribute("src", re.compile(r"^/avatars/\d+/[0-9a-f]{64}\.webp$"))
    return await natural_size(page)


async def test_sign_up_lands_on_the_profile(page: Page, screenshots: Path) -> None:
    username = new_username("Web")
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.get_by_role("link", name="Sign up").click()
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Nickname (optional)").fill("Web Person")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.screenshot(path=screenshots / "signup.png", full_page=True)
    await page.get_by_role("button", name="Sign up").click()

    await expect(page).to_have_url(re.compile(r"/profile$"))
    await expect(page.locator("#username")).to_have_text(username)
    await expect(page.locator("#current-nickname")).to_have_text("Web Person")
    assert await natural_size(page) == (256, 256)  # the default picture, never a broken one
    await page.screenshot(path=screenshots / "profile-new-account.png", full_page=True)


async def test_log_in_and_see_the_profile(
    page: Page, gatehouse: Gatehouse, screenshots: Path
) -> None:
    username = new_username("Login")
    async with httpx.AsyncClient(base_url=gatehouse.url(1), trust_env=False) as api:
        created = await api.post("/api/v1/users", json={"username": username, "password": PASSWORD})
        assert created.status_code == 201, created.text

    await page.goto("/profile")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.screenshot(path=screenshots / "login.png", full_page=True)
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()

    await expect(page).to_have_url(re.compile(r"/profile$"))
    await expect(page.locator("#username")).to_have_text(username)
    await expect(page.locator("#current-nickname")).to_have_text(username)
    cookies = {cookie["name"]: cookie for cookie in await page.context.cookies()}
    assert cookies["session"]["httpOnly"] and cookies["session"]["sameSite"] == "Lax"


async def test_change_the_nickname(page: Page, screenshots: Path) -> None:
    await sign_up(page, new_username("Nick"))
    await page.get_by_label("Nickname", exact=True).fill("Zoë Quinn")
    await page.get_by_role("button", name="Save nickname").click()
    await expect(page.get_by_role("status")).to_have_text("Your nickname was changed.")
    await expect(page.locator("#current-nickname")).to_have_text("Zoë Quinn")
    await page.screenshot(path=screenshots / "profile-nickname-changed.png", full_page=True)

    await page.get_by_label("Nickname", exact=True).fill("")
    await page.get_by_role("button", name="Save nickname").click()  # `required` stops an empty one
    await expect(page.locator("#current-nickname")).to_have_text("Zoë Quinn")


async def test_upload_a_png_and_see_it_at_256_by_256(
    page: Page, browser: Browser, s3_http_url: str, screenshots: Path, tmp_path: Path
) -> None:
    picture = portrait_png(tmp_path / "landscape.png")
    await sign_up(page, new_username("Pic"), nickname="Picture Person")
    await page.get_by_label("Picture").set_input_files(picture)
    await page.get_by_role("button", name="Upload picture").click()

    await expect(page.get_by_role("status")).to_have_text("Your picture was updated.")
    assert await uploaded_picture_size(page) == (256, 256)
    await page.screenshot(path=screenshots / "profile.png", full_page=True)

    # The same upload on the HTTP process whose blob store is S3.
    context = await browser.new_context(
        base_url=s3_http_url, viewport={"width": 390, "height": 844}
    )
    try:
        phone = await context.new_page()
        await sign_up(phone, new_username("S3Pic"), nickname="S3 Person")
        await phone.get_by_label("Picture").set_input_files(picture)
        await phone.get_by_role("button", name="Upload picture").click()
        await expect(phone.get_by_role("status")).to_have_text("Your picture was updated.")
        assert await uploaded_picture_size(phone) == (256, 256)
        await phone.screenshot(path=screenshots / "profile-phone-s3.png", full_page=True)
    finally:
        await context.close()


async def test_an_upload_that_is_no_picture_shows_the_error_beside_the_field(
    page: Page, screenshots: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"these are notes, not a picture")
    await sign_up(page, new_username("Bad"))
    await page.get_by_label("Picture").set_input_files(notes)
    await page.get_by_role("button", name="Upload picture").click()
    await expect(page.locator("#file-error")).to_contain_text("not a PNG, JPEG, WebP or GIF")
    assert await natural_size(page) == (256, 256)  # still the default picture
    await page.screenshot(path=screenshots / "profile-upload-error.png", full_page=True)


async def test_log_out_lands_on_the_login_page(page: Page, screenshots: Path) -> None:
    await sign_up(page, new_username("Out"))
    # The header's; "Your sessions" has a Log out per session too.
    await page.get_by_role("banner").get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await page.screenshot(path=screenshots / "logged-out.png", full_page=True)
    await page.goto("/profile")
    await expect(page).to_have_url(re.compile(r"/login$"))


async def test_a_wrong_password_shows_the_error(page: Page, screenshots: Path) -> None:
    username = new_username("Wrong")
    await sign_up(page, username)
    await page.context.clear_cookies()
    await page.goto("/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Log in").click()

    await expect(page.locator("#password-error")).to_have_text("The username or password is wrong.")
    await expect(page.get_by_label("Username")).to_have_value(username)
    await expect(page.get_by_label("Password")).to_have_value("")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.screenshot(path=screenshots / "login-wrong-password.png", full_page=True)


async def test_a_form_post_without_the_csrf_token_is_refused(page: Page, screenshots: Path) -> None:
    username = new_username("Csrf")
    await sign_up(page, username)
    # What a forged form lacks: the token. Remove it from the page, then submit.
    await page.locator("input[name=csrf_token]").evaluate_all(
        "inputs => inputs.forEach(i => i.remove())"
    )
    await page.get_by_label("Nickname", exact=True).fill("Forged")
    async with page.expect_response(re.compile(r"/profile/nickname$")) as answer:
        await page.get_by_role("button", name="Save nickname").click()
    assert (await answer.value).status == 403
    await expect(page.get_by_role("heading", name="Form refused")).to_be_visible()
    await expect(page.locator("body")).to_contain_text("CSRF")
    await page.screenshot(path=screenshots / "csrf-refused.png", full_page=True)

    await page.goto("/profile")
    await expect(page.locator("#current-nickname")).to_have_text(username)  # unchanged


async def test_normal_use_leaves_nothing_in_the_console(page: Page) -> None:
    """Sign up, a new nickname, log out, log in: no CSP violation and no failed resource. The
    tab's icon is served (Chromium asks for /favicon.ico of a page that names none, a 404 in
    the console of every page); Playwright reports no icon request, the DevTools protocol
    does."""
    console: list[str] = []
    page.on(
        "console",
        lambda message: (
            console.append(f"{message.type}: {message.text}")
            if message.type in ("error", "warning")
            else None
        ),
    )
    icons: list[tuple[str, int]] = []
    devtools = await page.context.new_cdp_session(page)
    await devtools.send("Network.enable")
    devtools.on(
        "Network.responseReceived",
        lambda event: (
            icons.append((event["response"]["url"], event["response"]["status"]))
            if "icon" in event["response"]["url"]
            else None
        ),
    )
    username = new_username("Console")
    await sign_up(page, username)
    await page.get_by_label("Nickname", exact=True).fill("Quiet Console")
    await page.get_by_role("button", name="Save nickname").click()
    await expect(page.locator("#current-nickname")).to_have_text("Quiet Console")
    await page.get_by_role("banner").get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(re.compile(r"/profile$"))
    await wait_until_async(lambda: icons, 10, "the tab's icon to be fetched")
    assert {status for _, status in icons} == {200}, icons
    assert console == []
