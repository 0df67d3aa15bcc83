"""A deleted picture stops being served: at once by every worker of the HTTP process that
deleted it, and by other HTTP processes once their memory of it has expired
(GATEHOUSE_PICTURE_CACHE_SECONDS). Real HTTP processes of two workers each, real auth replicas,
MariaDB primary and replica. The deletion is a picture replacement, which deletes the old blob
the way an account deletion does."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from tests.hostile_pictures import busy_picture, encoded
from tests.system.support import bearer, current_samples, new_username

CACHE_BYTES = "gatehouse_http_picture_cache_bytes"
# The process that deletes keeps pictures for the longest lifetime allowed: only forgetting
# can make it answer 404 at once. The other keeps them briefly, so the test waits little.
DELETER_LIFETIME = "60"
OTHER_LIFETIME = 2.0
# Fresh connections tried to reach every worker of a process (the kernel hands each to any).
MAX_TRIES = 200


@pytest.fixture(scope="module")
def processes(gatehouse: Gatehouse) -> Iterator[dict[str, Service]]:
    started: list[Service] = []
    try:
        started.append(gatehouse.start_http({"GATEHOUSE_PICTURE_CACHE_SECONDS": DELETER_LIFETIME}))
        started.append(
            gatehouse.start_http({"GATEHOUSE_PICTURE_CACHE_SECONDS": str(OTHER_LIFETIME)})
        )
        yield {"deleter": started[0], "other": started[1]}
    finally:
        for service in started:
            service.process.stop()
            gatehouse.http.remove(service)  # other tests expect the system's own processes only


def url_of(service: Service) -> str:
    return f"http://127.0.0.1:{service.ports['http']}"


def cached_bytes_per_worker(service: Service) -> dict[str, float]:
    return {labels["pid"]: value for labels, value in current_samples(service).get(CACHE_BYTES, [])}


def workers_of(service: Service) -> int:
    assert service.process.env is not None
    return int(service.process.env["GATEHOUSE_HTTP_WORKERS"])


async def get_on_a_new_connection(service: Service, path: str) -> int:
    async with httpx.AsyncClient(base_url=url_of(service), trust_env=False) as client:
        return (await client.get(path)).status_code


async def warm_every_worker(service: Service, path: str) -> None:
    """GET `path` on new connections until every worker of `service` keeps it in memory."""
    workers = workers_of(service)
    for _ in range(MAX_TRIES):
        assert await get_on_a_new_connection(service, path) == 200
        holding = [value for value in cached_bytes_per_worker(service).values() if value > 0]
        if len(holding) == workers:
            return
    pytest.fail(f"not every worker of {service.name} served {path} in {MAX_TRIES} tries")


async def upload(client: httpx.AsyncClient, token: str, side: int) -> str:
    picture = encoded(busy_picture((side, side)), "PNG")
    answer = await client.put("/api/v1/me/avatar", content=picture, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["avatar_url"])


async def test_a_deleted_picture_is_404_at_once_from_its_pod_and_soon_from_the_others(
    processes: dict[str, Service],
) -> None:
    deleter, other = processes["deleter"], processes["other"]
    async with httpx.AsyncClient(base_url=url_of(deleter), trust_env=False) as client:
        credentials = {"username": new_username("pic"), "password": "password1"}
        assert (await client.post("/api/v1/users", json=credentials)).status_code == 201
        login = await client.post("/api/v1/sessions", json=credentials)
        assert login.status_code == 200, login.text
        client.cookies.clear()
        token = str(login.json()["token"])
        old_picture = await upload(client, token, 300)
        await warm_every_worker(deleter, old_picture)
        await warm_every_worker(other, old_picture)

        assert await upload(client, token, 320) != old_picture  # deletes the old blob
        deleted_at = time.monotonic()

    # Every worker of the deleting process answers 404 from the first request it gets.
    for _ in range(MAX_TRIES):
        assert await get_on_a_new_connection(deleter, old_picture) == 404
        if not any(cached_bytes_per_worker(deleter).values()):
            break
    else:
        pytest.fail(f"not every worker of the deleting process was asked in {MAX_TRIES} tries")

    async def other_answers_404_everywhere() -> bool:
        answers = [await get_on_a_new_connection(other, old_picture) for _ in range(10)]
        return set(answers) == {404} and not any(cached_bytes_per_worker(other).values())

    # Its lifetime, and room for a loaded machine.
    await wait_until_async(
        other_answers_404_everywhere, OTHER_LIFETIME + 10.0, "the other process answers 404"
    )
    assert time.monotonic() - deleted_at < OTHER_LIFETIME + 10.0
