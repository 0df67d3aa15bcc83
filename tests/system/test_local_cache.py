"""The auth replicas' in-process copies of Redis values through the whole system (two auth
replicas, two HTTP processes): a change through one replica is read at once through the other,
while warm reads are answered in process on both."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from devstack.gatehouse import Gatehouse
from devstack.ports import wait_until_async
from devstack.stack import DataStores
from tests.system.support import bearer, new_username, sample_sum, scrape

PASSWORD = "password1"
ROUNDS = 20
READS_PER_ROUND = 3


def answering(gatehouse: Gatehouse) -> bool:
    """Whether every auth replica's copies may answer now."""
    return all(
        sample_sum(
            scrape(f"http://127.0.0.1:{replica.ports['ops']}/metrics"),
            "gatehouse_auth_local_cache_answering",
        )
        == 1
        for replica in gatehouse.auth
    )


@dataclass(frozen=True)
class ReplicaPages:
    """One /metrics page of each auth replica. A replica renders its page at most once per
    RENDER_INTERVAL_SECONDS and serves that copy meanwhile, so a page may miss the last
    second's calls: `profile_reads` tells whether the pages count the calls a test made."""

    pages: list[dict[str, list[tuple[dict[str, str], float]]]]

    @classmethod
    def scrape(cls, gatehouse: Gatehouse) -> ReplicaPages:
        return cls(
            [
                scrape(f"http://127.0.0.1:{replica.ports['ops']}/metrics")
                for replica in gatehouse.auth
            ]
        )

    @property
    def local_hits(self) -> list[float]:
        """Reads each auth replica answered from its copies."""
        return [
            sample_sum(page, "gatehouse_auth_local_cache_lookups_total", result="hit")
            for page in self.pages
        ]

    @property
    def profile_reads(self) -> float:
        """GetProfile calls the replicas handled, together."""
        return sum(
            sample_sum(page, "gatehouse_auth_rpc_handler_seconds_count", method="get_profile")
            for page in self.pages
        )


async def pages_counting(gatehouse: Gatehouse, profile_reads: float) -> ReplicaPages:
    """The replicas' pages once they count at least `profile_reads` GetProfile calls."""
    found: list[ReplicaPages] = []

    def counted() -> bool:
        pages = ReplicaPages.scrape(gatehouse)
        found[:] = [pages]
        return pages.profile_reads >= profile_reads

    await wait_until_async(
        lambda: asyncio.to_thread(counted),
        10.0,
        f"the replicas' pages count {profile_reads:g} reads",
    )
    return found[0]


async def new_token(client: httpx.AsyncClient) -> str:
    username = new_username("lc")
    created = await client.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    assert created.status_code == 201, created.text
    login = await client.post("/api/v1/sessions", json={"username": username, "password": PASSWORD})
    assert login.status_code == 200, login.text
    token: str = login.json()["token"]
    return token


async def nicknames(clients: list[httpx.AsyncClient], token: str) -> set[str]:
    """The nickname every HTTP process reads, several times each (either auth replica)."""
    seen = set()
    for client in clients:
        for _ in range(READS_PER_ROUND):
            me = await client.get("/api/v1/me", headers=bearer(token))
            assert me.status_code == 200, me.text
            seen.add(str(me.json()["nickname"]))
    return seen


async def test_a_change_through_one_replica_is_read_at_once_through_the_other(
    clients: list[httpx.AsyncClient], gatehouse: Gatehouse
) -> None:
    token = await new_token(clients[0])
    await wait_until_async(
        lambda: asyncio.to_thread(answering, gatehouse), 10.0, "every replica's copies answer"
    )
    before = await asyncio.to_thread(ReplicaPages.scrape, gatehouse)
    for round_ in range(ROUNDS):
        nickname = f"Round {round_}"
        patched = await clients[round_ % 2].patch(
            "/api/v1/me", headers=bearer(token), json={"nickname": nickname}
        )
        assert patched.status_code == 200, patched.text
        assert await nicknames(clients, token) == {nickname}, f"round {round_}"
    # The rounds may take less than the replicas' render interval: pages read right after them
    # could be the very copies `before` was read from.
    reads = ROUNDS * len(clients) * READS_PER_ROUND
    after = await pages_counting(gatehouse, before.profile_reads + reads)
    assert all(a > b for a, b in zip(after.local_hits, before.local_hits, strict=True)), (
        f"not every auth replica answered from its copies: {before.local_hits} -> {after.local_hits}"
    )
    ended = await clients[1].delete("/api/v1/sessions/current", headers=bearer(token))
    assert ended.status_code in (200, 204), ended.text
    for client in clients:
        for _ in range(READS_PER_ROUND):
            me = await client.get("/api/v1/me", headers=bearer(token))
            assert me.status_code == 401, me.text


async def test_lost_invalidation_connections_never_leave_a_stale_read(
    clients: list[httpx.AsyncClient], data_stores: DataStores, gatehouse: Gatehouse
) -> None:
    """Each change is made right after every auth replica's invalidation connection was
    killed: Redis pushes its invalidation to nobody, and no read may return the old value."""
    token = await new_token(clients[0])
    redis = Redis.from_url(data_stores.redis_url, socket_timeout=5.0)
    try:
        for round_ in range(ROUNDS // 4):
            assert await nicknames(clients, token)  # copied, where the copies answer
            copies = [
                client
                for client in await redis.client_list()
                if client.get("name", "").startswith("gatehouse-copies-")
            ]
            for client in copies:
                await redis.client_kill_filter(_id=client["id"])
            nickname = f"Killed {round_}"
            patched = await clients[round_ % 2].patch(
                "/api/v1/me", headers=bearer(token), json={"nickname": nickname}
            )
            assert patched.status_code == 200, patched.text
            assert await nicknames(clients, token) == {nickname}, f"round {round_}"
            await wait_until_async(
                lambda: asyncio.to_thread(answering, gatehouse), 10.0, "the copies answer again"
            )
            assert await nicknames(clients, token) == {nickname}, f"round {round_}, reconnected"
    finally:
        await redis.aclose()
