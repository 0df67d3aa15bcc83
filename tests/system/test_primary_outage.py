"""The whole system while the MySQL primary is frozen (SIGSTOP): reads go on, logouts hold,
writes and logins are refused at once without a hash, and writes resume quickly afterwards."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import jwt
import pytest
from redis import Redis

from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from devstack.stack import DataStores
from tests.system.support import bearer, new_username, sample_sum, scrape

OUTAGE_READS_SECONDS = 3.0  # past the 2 s MySQL timeout and many revocation leases
FAST = 0.1  # the bound on refusing a write or login while the primary is down
RECOVERY = 1.0  # the bound on writes working again after the primary is back
DOWN_LINE = "the MySQL primary is down ("


def claims(token: str) -> dict[str, str]:
    decoded: dict[str, str] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def auth_samples(auth: Service) -> dict[str, list[tuple[dict[str, str], float]]]:
    return scrape(f"http://127.0.0.1:{auth.ports['ops']}/metrics")


def total(gatehouse: Gatehouse, name: str, **labels: str) -> float:
    return sum(sample_sum(auth_samples(auth), name, **labels) for auth in gatehouse.auth)


def log_size(service: Service) -> int:
    return service.process.log_path.stat().st_size


def warnings_since(service: Service, offset: int) -> list[str]:
    """The warning lines `service` logged past `offset` bytes of its log."""
    with open(service.process.log_path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return [line for line in lines if '"level": "warning"' in line]


async def replica_heartbeat_passes_now(data_stores: DataStores) -> None:
    """Until the replica has applied a heartbeat written after everything so far, so that
    reads of every user so far may go to it."""
    now = (await asyncio.to_thread(data_stores.primary.execute, "SELECT NOW(6) AS now"))[0]["now"]
    database = data_stores.app_database

    def applied() -> bool:
        rows = data_stores.replica.execute(
            f"SELECT beat FROM `{database}`.replication_heartbeat WHERE id = 1"
        )
        return bool(rows) and rows[0]["beat"] >= now

    await wait_until_async(
        lambda: asyncio.to_thread(applied), 10.0, "the replica applies a newer heartbeat"
    )


async def sign_up_and_log_in(client: httpx.AsyncClient) -> tuple[str, str]:
    username = new_username("po")
    created = await client.post(
        "/api/v1/users", json={"username": username, "password": "password1"}
    )
    assert created.status_code == 201, created.text
    login = await client.post(
        "/api/v1/sessions", json={"username": username, "password": "password1"}
    )
    assert login.status_code == 200, login.text
    return username, login.json()["token"]


async def timed_refusal(call: Callable[[], Awaitable[httpx.Response]]) -> float:
    started = time.monotonic()
    response = await call()
    took = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.headers.get("Retry-After") == "1"
    assert response.json()["error"]["code"] == "unavailable"
    return took


@pytest.mark.slow
async def test_a_primary_outage_keeps_reads_refuses_writes_at_once_and_recovers(
    gatehouse: Gatehouse, data_stores: DataStores, clients: list[httpx.AsyncClient]
) -> None:
    client = clients[0]
    redis = Redis.from_url(data_stores.redis_url, socket_timeout=5.0)
    reader_name, reader = await sign_up_and_log_in(client)
    _, logged_out = await sign_up_and_log_in(client)
    _, writer = await sign_up_and_log_in(client)
    for token in (reader, logged_out, writer):  # every replica has raised gh:since by now
        for http_client in clients:
            assert (await http_client.get("/api/v1/me", headers=bearer(token))).status_code == 200
    assert (
        await client.delete("/api/v1/sessions/current", headers=bearer(logged_out))
    ).status_code == 204
    assert redis.delete(f"gh:s:{claims(logged_out)['sid']}") == 1  # its tombstone is lost

    await replica_heartbeat_passes_now(data_stores)
    await asyncio.to_thread(data_stores.replication.stop_sql_thread)
    try:
        # The writer's last write is on the primary only; the profile cache cannot answer.
        patched = await client.patch(
            "/api/v1/me", headers=bearer(writer), json={"nickname": "Unreplicated"}
        )
        assert patched.status_code == 200, patched.text
        assert redis.delete(f"gh:p:{claims(writer)['sub']}") == 1

        processes = [*gatehouse.auth, *gatehouse.http]
        logged_before = [log_size(service) for service in processes]
        await asyncio.to_thread(data_stores.primary.process.pause)
        try:
            await wait_until_async(
                lambda: total(gatehouse, "gatehouse_auth_primary_available") == 0,
                10.0,
                "every auth replica counts the primary as down",
            )
            # Those scrapes were rendered after the pause, so after every hash of the set-up.
            hashes_before = total(gatehouse, "gatehouse_auth_password_hashes_total")
            reads = 0
            deadline = time.monotonic() + OUTAGE_READS_SECONDS
            while time.monotonic() < deadline:
                for http_client in clients:
                    me = await http_client.get("/api/v1/me", headers=bearer(reader))
                    assert me.status_code == 200, f"read {reads}: {me.text}"
                    gone = await http_client.get("/api/v1/me", headers=bearer(logged_out))
                    assert gone.status_code == 401, f"read {reads} of a logout: {gone.text}"
                    reads += 2
            needs_primary = await client.get("/api/v1/me", headers=bearer(writer))
            assert needs_primary.status_code == 503, needs_primary.text

            refused_before = total(gatehouse, "gatehouse_auth_primary_refusals_total")
            took: list[float] = []
            for _ in range(5):
                took.append(
                    await timed_refusal(
                        lambda: client.post(
                            "/api/v1/sessions",
                            json={"username": reader_name, "password": "password1"},
                        )
                    )
                )
                took.append(
                    await timed_refusal(
                        lambda: client.post(
                            "/api/v1/users",
                            json={"username": new_username("po"), "password": "password1"},
                        )
                    )
                )
                took.append(
                    await timed_refusal(
                        lambda: client.patch(
                            "/api/v1/me", headers=bearer(reader), json={"nickname": "Down"}
                        )
                    )
                )
            assert statistics.median(took) < FAST, sorted(took)
            assert max(took) < 1.0, sorted(took)  # never the MySQL timeout (2 s)
            # Once the scrape shows the 15 refusals, it shows every hash before them too.
            await wait_until_async(
                lambda: (
                    total(gatehouse, "gatehouse_auth_primary_refusals_total")
                    >= refused_before + len(took)
                ),
                10.0,
                "the refusals show in the metrics",
            )
            assert total(gatehouse, "gatehouse_auth_password_hashes_total") == hashes_before
        finally:
            await asyncio.to_thread(data_stores.primary.process.resume)
        resumed = time.monotonic()

        async def writes_again() -> bool:
            response = await client.patch(
                "/api/v1/me", headers=bearer(reader), json={"nickname": "Back"}
            )
            return response.status_code == 200

        await wait_until_async(writes_again, 10.0, "a write succeeds after the outage")
        recovered_after = time.monotonic() - resumed
        # One replica took that write; each sees the primary back at its own next heartbeat, and
        # the stack is shared with the tests after this one, whose writes may go to either.
        await wait_until_async(
            lambda: total(gatehouse, "gatehouse_auth_primary_available") == len(gatehouse.auth),
            10.0,
            "every auth replica sees the primary again",
        )
    finally:
        await asyncio.to_thread(data_stores.replication.start_sql_thread)
        redis.close()
    assert recovered_after < RECOVERY, f"writes worked again {recovered_after:.2f} s after"
    # One line per auth replica says the primary is down; nothing logs per request.
    logged = [
        warnings_since(service, offset)
        for service, offset in zip(processes, logged_before, strict=True)
    ]
    for service, lines in zip(processes, logged, strict=True):
        if service in gatehouse.auth:
            assert sum(DOWN_LINE in line for line in lines) == 1, lines
        assert len(lines) <= 2, f"{service.name} logged {len(lines)} warnings: {lines}"
    for http_client in clients:
        assert (await http_client.get("/api/v1/me", headers=bearer(logged_out))).status_code == 401
        me = await http_client.get("/api/v1/me", headers=bearer(writer))
        assert me.status_code == 200 and me.json()["nickname"] == "Unreplicated", me.text
