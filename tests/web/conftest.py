"""Fixtures of the browser and picture tests on the whole system (the `gatehouse` fixture of
tests/conftest.py): an extra HTTP process whose blob store is S3 (moto's server), Debian's
Chromium driven by Playwright, and the folder screenshots go to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from devstack.gatehouse import REPO_ROOT, Gatehouse
from tests.s3_server import CREDENTIALS, S3Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO_ROOT / "test-output" / "screenshots"
S3_KEY_PREFIX = "avatars/"


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


# Module scope: the process is stopped with its module's tests, before a worker of the suite
# (pytest-xdist) runs other files on the same system, which expect its own processes only.
@pytest.fixture(scope="module")
def s3_http_url(gatehouse: Gatehouse, s3_server: S3Server, s3_bucket: str) -> Iterator[str]:
    """One more HTTP process of the system, keeping pictures in S3 instead of MySQL."""
    service = gatehouse.start_http(
        {
            "GATEHOUSE_BLOB_STORE": "s3",
            "GATEHOUSE_S3_BUCKET": s3_bucket,
            "GATEHOUSE_S3_ENDPOINT_URL": s3_server.endpoint_url,
            "GATEHOUSE_S3_KEY_PREFIX": S3_KEY_PREFIX,
            **CREDENTIALS,
        }
    )
    try:
        yield f"http://127.0.0.1:{service.ports['http']}"
    finally:
        service.process.stop()
        gatehouse.http.remove(service)  # other tests expect the system's own processes only


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 - one stat at session start
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    async with async_playwright() as playwright:
        # A persistent context would pin one cookie jar; launch() gives each test a fresh
        # context, and Playwright starts Chromium with an empty temporary user data dir.
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser, gatehouse: Gatehouse) -> AsyncIterator[Page]:
    """A fresh browser context (no cookies) on the first HTTP process, desktop-sized."""
    context = await browser.new_context(
        base_url=gatehouse.url(0), viewport={"width": 1100, "height": 900}
    )
    context.set_default_timeout(15_000)
    opened = await context.new_page()
    try:
        yield opened
    finally:
        await context.close()
