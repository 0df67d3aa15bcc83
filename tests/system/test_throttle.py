"""The login throttle against the running system: two auth replicas sharing Redis (or each on
its own while Redis is down), two HTTP processes, and clients on their own 127.0.0.x source
addresses. Default limits: 5 failures per (username, IP) in 15 min, 100 per IP."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack import DataStores
from devstack.gatehouse import Gatehouse
from devstack.ports import wait_until_async
from services.contract import auth_pb2 as pb
from tests.system.support import new_username, sample_sum, scrape
from tests.system.throttle_support import (
    ReplicaCaller,
    assert_too_many_attempts,
    client_at,
    form_post,
    is_throttled,
    log_in,
    ops_url,
    wait_until_the_replicas_count_in_redis,
)

PASSWORD = "correct horse"
FAILURES_ALLOWED = 5
IP_FAILURES_ALLOWED = 100


async def sign_up(client: httpx.AsyncClient, username: str) -> None:
    response = await client.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    assert response.status_code == 201, response.text


async def test_a_guesser_gets_429_on_every_entry_point_and_others_log_in(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    username = new_username("guessed")
    await sign_up(clients[0], username)
    async with (
        client_at("127.0.0.21", gatehouse.url(0)) as guesser_0,
        client_at("127.0.0.21", gatehouse.url(1)) as guesser_1,
        client_at("127.0.0.22", gatehouse.url(1)) as owner,
    ):
        for attempt in range(FAILURES_ALLOWED):
            wrong = await log_in((guesser_0, guesser_1)[attempt % 2], username, f"guess{attempt}")
            assert wrong.status_code == 401
        assert_too_many_attempts(await log_in(guesser_0, username, "guess-again"))
        # The right password is refused too: no confirmation leaks.
        assert_too_many_attempts(await log_in(guesser_1, username, PASSWORD))
        partner = await guesser_0.post(
            "/open_api/v1/authenticate", json={"username": username, "password": PASSWORD}
        )
        assert_too_many_attempts(partner)
        page = await form_post(guesser_1, "/login", {"username": username, "password": PASSWORD})
        assert page.status_code == 429 and int(page.headers["retry-after"]) >= 1
        assert "Too many attempts. Try again in" in page.text and 'class="alert"' in page.text
        # The owner, from another address, is not affected and gets a device cookie.
        welcome = await log_in(owner, username, PASSWORD)
        assert welcome.status_code == 200, welcome.text
        device_cookie = next(
            value for value in welcome.headers.get_list("set-cookie") if value.startswith("device=")
        )
        assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(device_cookie.split("; "))


async def test_more_right_password_logins_at_once_than_the_limit_all_get_in(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    """Each login in progress counts against the limit until it ends, so concurrent guesses
    cannot pass it together; logins beyond it wait for those to end instead of being refused
    (a success clears the key). Before, 5 got in and the rest got 429 with a Retry-After that
    doubled up to 900 s."""
    username = new_username("eager")
    await sign_up(clients[0], username)
    logins = 3 * FAILURES_ALLOWED
    async with contextlib.AsyncExitStack() as stack:
        each = [
            await stack.enter_async_context(client_at("127.0.0.31", gatehouse.url(i % 2)))
            for i in range(logins)
        ]
        answers = await asyncio.gather(*(log_in(client, username, PASSWORD) for client in each))
    assert [answer.status_code for answer in answers] == [200] * logins, [
        (answer.status_code, answer.text) for answer in answers if answer.status_code != 200
    ]


async def test_a_client_that_waits_the_retry_after_it_was_told_gets_back_in(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    username = new_username("patient")
    await sign_up(clients[0], username)
    async with client_at("127.0.0.24", gatehouse.url(0)) as patient:
        for attempt in range(FAILURES_ALLOWED):
            assert (await log_in(patient, username, f"typo{attempt}")).status_code == 401
        retry_after = assert_too_many_attempts(await log_in(patient, username, "typo-again"))
        # Waiting is the behaviour under test: exactly the Retry-After the refusal gave.
        await asyncio.sleep(retry_after)
        welcome = await log_in(patient, username, PASSWORD)
        assert welcome.status_code == 200, (retry_after, welcome.text)


async def test_failures_on_one_auth_replica_throttle_the_other(gatehouse: Gatehouse) -> None:
    username = new_username("shared")
    async with (
        ReplicaCaller.to(gatehouse, gatehouse.auth[0]) as first,
        ReplicaCaller.to(gatehouse, gatehouse.auth[1]) as second,
    ):
        assert (await first.register(username, PASSWORD)).status == pb.STATUS_OK
        for attempt in range(FAILURES_ALLOWED):
            answer = await (first, second)[attempt % 2].authenticate(
                username, "wrong", "198.51.100.10"
            )
            assert answer.status == pb.STATUS_UNAUTHENTICATED
        for replica in (first, second):
            refused = await replica.authenticate(username, PASSWORD, "198.51.100.10")
            assert is_throttled(refused) and refused.retry_after_seconds >= 1
        # Each refusal counts: the delay grows while the guessing goes on.
        later = await second.authenticate(username, PASSWORD, "198.51.100.10")
        assert is_throttled(later) and later.retry_after_seconds >= 4
        assert (
            await second.authenticate(username, PASSWORD, "198.51.100.11")
        ).status == pb.STATUS_OK


async def test_the_owner_with_a_device_cookie_is_not_locked_out(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    owner_name, other_name = new_username("owner"), new_username("other")
    await sign_up(clients[0], owner_name)
    await sign_up(clients[0], other_name)
    async with (
        client_at("127.0.0.31", gatehouse.url(0)) as same_network,
        client_at("127.0.0.32", gatehouse.url(1)) as sprayer,
    ):
        first = await log_in(same_network, owner_name, PASSWORD)
        device = first.cookies["device"]
        other_device = (await log_in(same_network, other_name, PASSWORD)).cookies["device"]
        # Someone on the owner's network guesses the owner's password.
        for attempt in range(FAILURES_ALLOWED + 2):
            await log_in(same_network, owner_name, f"guess{attempt}")
        assert_too_many_attempts(await log_in(same_network, owner_name, PASSWORD))
        assert (await log_in(same_network, owner_name, PASSWORD, device)).status_code == 200
        # A cookie of another account, or a forged one, exempts nothing.
        assert_too_many_attempts(await log_in(same_network, owner_name, PASSWORD, other_device))
        forged = device[:-2] + ("AA" if not device.endswith("AA") else "BB")
        assert_too_many_attempts(await log_in(same_network, owner_name, PASSWORD, forged))
        # An address spraying many names is refused past its limit; the owner's device is not.
        for attempt in range(IP_FAILURES_ALLOWED):
            wrong = await log_in(sprayer, new_username("spray"), "guess")
            assert wrong.status_code == 401, (attempt, wrong.text)
        assert_too_many_attempts(await log_in(sprayer, new_username("spray"), "guess"))
        assert_too_many_attempts(await log_in(sprayer, owner_name, PASSWORD))
        assert (await log_in(sprayer, owner_name, PASSWORD, device)).status_code == 200
        # The device's own counter has the (account, IP) key's limits.
        for attempt in range(FAILURES_ALLOWED):
            assert (await log_in(sprayer, owner_name, f"typo{attempt}", device)).status_code == 401
        assert_too_many_attempts(await log_in(sprayer, owner_name, PASSWORD, device))


async def test_with_redis_down_each_auth_replica_throttles_on_its_own(
    gatehouse: Gatehouse, data_stores: DataStores
) -> None:
    username = new_username("outage")
    async with ReplicaCaller.to(gatehouse, gatehouse.auth[0]) as first:
        assert (await first.register(username, PASSWORD)).status == pb.STATUS_OK
    logs = [ReplicaLog(service.process.log_path) for service in gatehouse.auth]
    await asyncio.to_thread(data_stores.redis.stop)
    try:
        async with (
            ReplicaCaller.to(gatehouse, gatehouse.auth[0]) as first,
            ReplicaCaller.to(gatehouse, gatehouse.auth[1]) as second,
        ):
            for replica in (first, second):
                for _ in range(FAILURES_ALLOWED):
                    answer = await replica.authenticate(username, "wrong", "198.51.100.20")
                    assert answer.status == pb.STATUS_UNAUTHENTICATED, answer
                refused = await replica.authenticate(username, PASSWORD, "198.51.100.20")
                assert is_throttled(refused), refused
            for index in (0, 1):
                samples = scrape(ops_url(gatehouse, index))
                assert sample_sum(samples, "gatehouse_auth_throttle_in_memory") == 1
                assert logs[index].count("the login throttle counts in this replica's memory") == 1
    finally:
        await asyncio.to_thread(data_stores.redis.start)
    await wait_until_the_replicas_count_in_redis(gatehouse)
    for log in logs:
        assert log.count("the login throttle counts in Redis again") == 1


class ReplicaLog:
    """What a replica logs from now on."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._start = path.stat().st_size

    def count(self, text: str) -> int:
        with self._path.open("rb") as log:
            log.seek(self._start)
            return log.read().decode(errors="replace").count(text)


async def test_signups_that_reveal_a_taken_name_are_limited_per_address(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    taken = new_username("taken")
    await sign_up(clients[0], taken)
    async with (
        client_at("127.0.0.41", gatehouse.url(0)) as prober,
        client_at("127.0.0.42", gatehouse.url(1)) as neighbour,
        client_at("127.0.0.43", gatehouse.url(1)) as load_test,
    ):
        for _ in range(3):
            assert (
                await prober.post(
                    "/api/v1/users", json={"username": new_username(), "password": PASSWORD}
                )
            ).status_code == 201
        for attempt in range(100):
            probe = await prober.post(
                "/api/v1/users", json={"username": taken, "password": PASSWORD}
            )
            assert probe.status_code == 409, (attempt, probe.text)
        refused = await prober.post("/api/v1/users", json={"username": taken, "password": PASSWORD})
        assert assert_too_many_attempts(refused) > 3500
        fresh = await prober.post(
            "/api/v1/users", json={"username": new_username(), "password": PASSWORD}
        )
        assert_too_many_attempts(fresh)
        partner = await prober.post(
            "/open_api/v1/register", json={"username": new_username(), "password": PASSWORD}
        )
        assert_too_many_attempts(partner)
        page = await form_post(
            prober, "/signup", {"username": new_username(), "password": PASSWORD}
        )
        assert page.status_code == 429 and "Too many attempts" in page.text
        assert (
            await neighbour.post("/api/v1/users", json={"username": taken, "password": PASSWORD})
        ).status_code == 409
        # Signups that create accounts never count, however many come from one address.
        for _ in range(120):
            created = await load_test.post(
                "/api/v1/users", json={"username": new_username("load"), "password": PASSWORD}
            )
            assert created.status_code == 201, created.text


async def test_a_refused_attempt_costs_no_hash_and_is_answered_at_once(
    gatehouse: Gatehouse,
) -> None:
    username = new_username("cheap")
    async with (
        ReplicaCaller.to(gatehouse, gatehouse.auth[0]) as first,
        ReplicaCaller.to(gatehouse, gatehouse.auth[1]) as second,
    ):
        replicas = (first, second)
        assert (await first.register(username, PASSWORD)).status == pb.STATUS_OK
        for _ in range(FAILURES_ALLOWED):
            await first.authenticate(username, "wrong", "198.51.100.30")

        async def refused_on(index: int) -> None:
            refused = await replicas[index].authenticate(username, PASSWORD, "198.51.100.30")
            assert is_throttled(refused)

        # Each replica's /metrics is a copy up to a second old. A copy counting more throttled
        # logins than one served after the last hash was rendered after that hash: the baseline.
        before = []
        for index in (0, 1):
            earlier = throttle_page(gatehouse, index)
            await refused_on(index)
            before.append(await newer_throttle_page(gatehouse, index, earlier.throttled + 1))
        durations = []
        for attempt in range(40):
            started = time.perf_counter()
            await refused_on(attempt % 2)
            durations.append(time.perf_counter() - started)
        after = [
            await newer_throttle_page(gatehouse, index, before[index].throttled + 20)
            for index in (0, 1)
        ]
        assert [page.hashes for page in after] == [page.hashes for page in before]
        assert statistics.median(durations) < 0.05, durations


@dataclass(frozen=True)
class ThrottlePage:
    """What one replica's /metrics copy counts: throttled logins, password hashes."""

    throttled: float
    hashes: float


def throttle_page(gatehouse: Gatehouse, index: int) -> ThrottlePage:
    samples = scrape(ops_url(gatehouse, index))
    return ThrottlePage(
        throttled=sample_sum(samples, "gatehouse_auth_logins_total", outcome="throttled"),
        hashes=sample_sum(samples, "gatehouse_auth_password_hashes_total"),
    )


async def newer_throttle_page(gatehouse: Gatehouse, index: int, throttled: float) -> ThrottlePage:
    """The first copy of replica `index`'s page that counts at least `throttled` throttled
    logins."""
    pages: list[ThrottlePage] = []

    def counts_them() -> bool:
        pages[:] = [throttle_page(gatehouse, index)]
        return pages[0].throttled >= throttled

    await wait_until_async(counts_them, 10.0, f"auth-{index}'s /metrics to count {throttled:g}")
    return pages[0]


async def test_unknown_and_known_names_fail_in_the_same_time(gatehouse: Gatehouse) -> None:
    """At bcrypt cost 4 a hash is about 1 ms, so the comparison sees the work around it (the
    lookups, the throttle's Redis call) that a real cost would drown."""
    known = [new_username("timed") for _ in range(4)]
    async with ReplicaCaller.to(gatehouse, gatehouse.auth[0]) as replica:
        for username in known:
            assert (await replica.register(username, PASSWORD)).status == pb.STATUS_OK
        durations: dict[str, list[float]] = {"known": [], "unknown": []}
        for round_number in range(160):
            # Fresh client IPs keep every attempt below the limits: each is a plain failure.
            ip = f"203.0.{round_number // 200}.{round_number % 200 + 1}"
            for kind in ("known", "unknown") if round_number % 2 else ("unknown", "known"):
                username = known[round_number % 4] if kind == "known" else new_username("nobody")
                started = time.perf_counter()
                answer = await replica.authenticate(username, f"wrong{uuid.uuid4().hex}", ip)
                elapsed = time.perf_counter() - started
                assert answer.status == pb.STATUS_UNAUTHENTICATED, answer
                if round_number >= 20:  # after warming up connections and caches
                    durations[kind].append(elapsed)
    known_median = statistics.median(durations["known"])
    unknown_median = statistics.median(durations["unknown"])
    print(
        f"medians: wrong password {known_median * 1000:.2f} ms, unknown name {unknown_median * 1000:.2f} ms"
    )
    assert abs(known_median - unknown_median) <= 0.2 * min(known_median, unknown_median), (
        f"median of a wrong password {known_median * 1000:.2f} ms, "
        f"of an unknown name {unknown_median * 1000:.2f} ms"
    )


async def test_an_http_tier_older_than_the_throttle_keeps_working(gatehouse: Gatehouse) -> None:
    """It sends neither client IP nor device cookie: its calls log in, are throttled by the
    (username, "unknown") key, and share the IP key "unknown" (its limit is tested in
    tests/auth/test_throttle.py); the auth service counts such calls in a metric."""
    before = calls_without_client_ip(gatehouse)
    username = new_username("oldtier")
    async with ReplicaCaller.to(gatehouse, gatehouse.auth[0]) as replica:
        assert (await replica.register(username, PASSWORD)).status == pb.STATUS_OK
        welcome = await replica.authenticate(username, PASSWORD, client_ip="")
        assert welcome.status == pb.STATUS_OK
        assert pb.AuthenticateReply.FromString(welcome.payload).device_cookie
        for _ in range(FAILURES_ALLOWED):
            wrong = await replica.authenticate(username, "wrong", client_ip="")
            assert wrong.status == pb.STATUS_UNAUTHENTICATED
        assert is_throttled(await replica.authenticate(username, PASSWORD, client_ip=""))
        for _ in range(FAILURES_ALLOWED):
            other = await replica.authenticate(new_username("oldtier"), "wrong", client_ip="")
            assert other.status == pb.STATUS_UNAUTHENTICATED
    # /metrics is rendered at most once a second: wait for a copy that has the calls.
    await wait_until_async(
        lambda: calls_without_client_ip(gatehouse) - before >= 2 * FAILURES_ALLOWED + 3,
        10.0,
        "every call without a client IP to be counted",
    )


def calls_without_client_ip(gatehouse: Gatehouse) -> float:
    return sample_sum(scrape(ops_url(gatehouse, 0)), "gatehouse_auth_calls_without_client_ip_total")
