"""Hostile picture uploads against real HTTP processes (Granian and Hypercorn workers, their
decoding children) and real auth replicas: what is refused before decoding, what the CPU and
memory limits stop, and that other people's uploads stay fast meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest

from devstack.gatehouse import Gatehouse, Service
from tests.hostile_pictures import busy_picture, encoded, many_scan_jpeg, tall_png
from tests.system.support import bearer, current_samples, new_username, sample_sum

DECODES = "gatehouse_http_picture_decodes_total"
# Decoding it would take several seconds of CPU (about 0.35 ms per scan); it has 20,010.
MANY_SCANS = many_scan_jpeg((4096, 4096), extra_scans=20_000)
TALL_PNG = tall_png(25_000_000)
# What the header checks let through but the limits of the `limited` process stop.
LIMITED_SETTINGS = {
    "GATEHOUSE_PICTURE_MAX_JPEG_SCANS": "1000000",
    "GATEHOUSE_PICTURE_CPU_SECONDS": "1",
    "GATEHOUSE_PICTURE_MEMORY_BYTES": str(96 * 1024 * 1024),
}


def small_png() -> bytes:
    return encoded(busy_picture((400, 300)), "PNG")


def decodes(service: Service, outcome: str | None = None) -> float:
    samples = current_samples(service)
    if outcome is not None:
        return sample_sum(samples, DECODES, outcome=outcome)
    return sample_sum(samples, DECODES)


async def signed_up(client: httpx.AsyncClient) -> str:
    """A new account's session token."""
    username = new_username("pic")
    credentials = {"username": username, "password": "password1"}
    created = await client.post("/api/v1/users", json=credentials)
    assert created.status_code == 201, created.text
    login = await client.post("/api/v1/sessions", json=credentials)
    assert login.status_code == 200, login.text
    client.cookies.clear()
    return str(login.json()["token"])


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.fixture(scope="module")
def extra_http(gatehouse: Gatehouse) -> Iterator[dict[str, Service]]:
    """URLs of two more HTTP processes: `limited` (low decode limits) and `hypercorn`."""
    started: list[Service] = []
    try:
        started.append(gatehouse.start_http(LIMITED_SETTINGS))
        started.append(gatehouse.start_http({"GATEHOUSE_HTTP_SERVER": "hypercorn"}))
        yield {"limited": started[0], "hypercorn": started[1]}
    finally:
        for service in started:
            service.process.stop()
            gatehouse.http.remove(service)  # other tests expect the system's own processes only


async def test_an_upload_with_a_logged_out_session_is_refused_without_decoding(
    clients: list[httpx.AsyncClient], gatehouse: Gatehouse
) -> None:
    client = clients[0]
    token = await signed_up(client)
    assert (
        await client.delete("/api/v1/sessions/current", headers=bearer(token))
    ).status_code == 204
    before = decodes(gatehouse.http[0])
    refused = await client.put("/api/v1/me/avatar", content=small_png(), headers=bearer(token))
    assert error_of(refused) == (401, "unauthenticated")
    assert decodes(gatehouse.http[0]) == before
    # A live session's upload is decoded, and counted.
    live = await signed_up(client)
    accepted = await client.put("/api/v1/me/avatar", content=small_png(), headers=bearer(live))
    assert accepted.status_code == 200, accepted.text
    assert decodes(gatehouse.http[0]) == before + 1


@pytest.mark.parametrize(
    ("upload", "why"),
    [(MANY_SCANS, "more than 64 scans"), (TALL_PNG, "1x25000000 pixels")],
    ids=["progressive JPEG of 20,010 scans", "PNG of 1x25,000,000 pixels"],
)
async def test_the_hostile_pictures_of_the_review_are_refused_quickly(
    clients: list[httpx.AsyncClient], upload: bytes, why: str
) -> None:
    client = clients[0]
    token = await signed_up(client)
    began = time.monotonic()
    response = await client.put("/api/v1/me/avatar", content=upload, headers=bearer(token))
    seconds = time.monotonic() - began
    assert error_of(response) == (400, "invalid_image")
    assert why in response.json()["error"]["message"]
    assert seconds < 1.0, f"answered after {seconds:.2f} s"


@asynccontextmanager
async def four_uploaders(
    gatehouse: Gatehouse,
) -> AsyncIterator[list[tuple[httpx.AsyncClient, str]]]:
    """Four clients from four addresses, each logged in to its own account: one address or
    account may have only GATEHOUSE_MAX_UPLOADS_PER_CLIENT (2) uploads in progress."""
    opened = [
        httpx.AsyncClient(
            base_url=gatehouse.url(0),
            transport=httpx.AsyncHTTPTransport(local_address=f"127.0.0.{11 + i}"),
            timeout=30.0,
            trust_env=False,
        )
        for i in range(4)
    ]
    try:
        yield [(client, await signed_up(client)) for client in opened]
    finally:
        for client in opened:
            await client.aclose()


async def test_a_small_upload_stays_fast_while_four_hostile_ones_run(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    client = clients[0]
    bystander = await signed_up(client)
    async with four_uploaders(gatehouse) as uploaders:
        attacks = [
            asyncio.create_task(
                attacker.put("/api/v1/me/avatar", content=upload, headers=bearer(token))
            )
            for (attacker, token), upload in zip(
                uploaders, (MANY_SCANS, TALL_PNG, MANY_SCANS, TALL_PNG), strict=True
            )
        ]
        began = time.monotonic()
        small = await client.put(
            "/api/v1/me/avatar", content=small_png(), headers=bearer(bystander)
        )
        seconds = time.monotonic() - began
        answers = await asyncio.gather(*attacks)
    assert small.status_code == 200, small.text
    assert seconds < 1.0, f"the small upload took {seconds:.2f} s"
    assert [error_of(answer) for answer in answers] == [(400, "invalid_image")] * 4


async def test_a_small_upload_stays_fast_while_four_large_ones_decode(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    # The costliest picture the limits allow: 4096x4096 RGBA WebP, about 0.3 s of CPU and
    # 270 MiB each. Four of them queue for the main lanes; the small one takes a fast lane.
    client = clients[0]
    bystander = await signed_up(client)
    large = encoded(busy_picture((4096, 4096), "RGBA"), "WEBP", quality=50, method=0)
    async with four_uploaders(gatehouse) as uploaders:
        await _four_large_ones_beside_a_small_one(client, bystander, uploaders, large)


async def _four_large_ones_beside_a_small_one(
    client: httpx.AsyncClient,
    bystander: str,
    uploaders: list[tuple[httpx.AsyncClient, str]],
    large: bytes,
) -> None:
    uploads = [
        asyncio.create_task(uploader.put("/api/v1/me/avatar", content=large, headers=bearer(token)))
        for uploader, token in uploaders
    ]
    try:
        began = time.monotonic()
        small = await client.put(
            "/api/v1/me/avatar", content=small_png(), headers=bearer(bystander)
        )
        seconds = time.monotonic() - began
        assert small.status_code == 200, small.text
        assert not all(upload.done() for upload in uploads), "the large uploads ended first"
        assert seconds < 1.0, f"the small upload took {seconds:.2f} s"
    finally:
        answers = await asyncio.gather(*uploads)
    assert [answer.status_code for answer in answers] == [200] * 4


async def test_decodes_over_the_cpu_or_memory_limit_are_stopped_and_the_process_serves_on(
    extra_http: dict[str, Service],
) -> None:
    limited = extra_http["limited"]
    url = f"http://127.0.0.1:{limited.ports['http']}"
    async with httpx.AsyncClient(base_url=url, timeout=30.0, trust_env=False) as client:
        token = await signed_up(client)
        killed, out_of_memory = decodes(limited, "killed"), decodes(limited, "out_of_memory")
        # 20,010 scans pass this process's header checks; 1 s of CPU does not decode them.
        over_cpu = await client.put("/api/v1/me/avatar", content=MANY_SCANS, headers=bearer(token))
        assert error_of(over_cpu) == (400, "invalid_image")
        assert "too much CPU time or memory" in over_cpu.json()["error"]["message"]
        # 4096x4096 RGBA is 64 MiB of pixels: more than 96 MiB of address space holds.
        large = encoded(busy_picture((4096, 4096), "RGBA"), "PNG")
        over_memory = await client.put("/api/v1/me/avatar", content=large, headers=bearer(token))
        assert error_of(over_memory) == (400, "invalid_image")
        assert "memory" in over_memory.json()["error"]["message"]
        assert decodes(limited, "killed") == killed + 1
        assert (
            decodes(limited, "out_of_memory") + decodes(limited, "killed")
            == out_of_memory + killed + 2
        )
        served = await client.put("/api/v1/me/avatar", content=small_png(), headers=bearer(token))
        assert served.status_code == 200, served.text
        ready = await client.get("/readyz")
        assert ready.status_code == 200


async def test_pictures_are_decoded_under_hypercorn_too(extra_http: dict[str, str]) -> None:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{extra_http['hypercorn'].ports['http']}",
        timeout=30.0,
        trust_env=False,
    ) as client:
        token = await signed_up(client)
        response = await client.put("/api/v1/me/avatar", content=small_png(), headers=bearer(token))
        assert response.status_code == 200, response.text
        refused = await client.put("/api/v1/me/avatar", content=TALL_PNG, headers=bearer(token))
        assert error_of(refused) == (400, "invalid_image")
