"""The auth replicas' in-process copies of Redis values through the whole system (two auth
replicas, two HTTP processes): a change through one replica is read at once through the other,
while warm reads are answered in process on both."""

from __future__ import annotations

import asyncio

import httpx

from devstack.gatehouse import Gatehouse
from tests.system.support import bearer, new_username, sample_sum, scrape

PASSWORD = "password1"
ROUNDS = 20
READS_PER_ROUND = 3


def local_hits(gatehouse: Gatehouse) -> list[float]:
    """Reads each auth replica answered from its copies so far."""
    return [
        sample_sum(
            scrape(f"http://127.0.0.1:{replica.ports['ops']}/metrics"),
            "gatehouse_auth_local_cache_lookups_total",
            result="hit",
        )
        for replica in gatehouse.auth
    ]


async def test_a_change_through_one_replica_is_read_at_once_through_the_other(
    clients: list[httpx.AsyncClient], gatehouse: Gatehouse
) -> None:
    username = new_username("lc")
    created = await clients[0].post(
        "/api/v1/users", json={"username": username, "password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    login = await clients[0].post(
        "/api/v1/sessions", json={"username": username, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    token = login.json()["token"]
    before = await asyncio.to_thread(local_hits, gatehouse)
    for round_ in range(ROUNDS):
        nickname = f"Round {round_}"
        patched = await clients[round_ % 2].patch(
            "/api/v1/me", headers=bearer(token), json={"nickname": nickname}
        )
        assert patched.status_code == 200, patched.text
        for client in clients:
            for _ in range(READS_PER_ROUND):
                me = await client.get("/api/v1/me", headers=bearer(token))
                assert me.status_code == 200, me.text
                assert me.json()["nickname"] == nickname, f"round {round_}"
    after = await asyncio.to_thread(local_hits, gatehouse)
    assert all(a > b for a, b in zip(after, before, strict=True)), (
        f"not every auth replica answered from its copies: {before} -> {after}"
    )
    ended = await clients[1].delete("/api/v1/sessions/current", headers=bearer(token))
    assert ended.status_code in (200, 204), ended.text
    for client in clients:
        for _ in range(READS_PER_ROUND):
            me = await client.get("/api/v1/me", headers=bearer(token))
            assert me.status_code == 401, me.text
