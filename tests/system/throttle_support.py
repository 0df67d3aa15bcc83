"""Helpers of the login throttle's system tests: clients on their own 127.0.0.x address, calls
straight to one auth replica, and the forms' CSRF dance."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from services.contract import auth_pb2 as pb
from services.foundation.rpc.client import RpcConnection
from services.http.errors import TOO_MANY_ATTEMPTS_MESSAGE
from tests.system.support import new_username, rpc_connection, sample_sum, scrape

TOO_MANY_ATTEMPTS_BODY = {
    "error": {"code": "too_many_attempts", "message": TOO_MANY_ATTEMPTS_MESSAGE}
}
_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@asynccontextmanager
async def client_at(source: str, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose connections come from `source` (any 127.0.0.x is a distinct client);
    no cookie jar is kept across calls unless the caller passes cookies."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(
        base_url=base_url, transport=transport, timeout=15.0, trust_env=False
    ) as client:
        yield client


async def log_in(
    client: httpx.AsyncClient, username: str, password: str, device: str | None = None
) -> httpx.Response:
    client.cookies.clear()
    if device:
        client.cookies.set("device", device)
    return await client.post("/api/v1/sessions", json={"username": username, "password": password})


async def form_post(client: httpx.AsyncClient, path: str, fields: dict[str, str]) -> httpx.Response:
    """Submit the form of the page at `path` as a browser would (CSRF cookie and field)."""
    client.cookies.clear()
    page = await client.get(path)
    match = _CSRF_INPUT.search(page.text)
    assert page.status_code == 200 and match, page.text[:200]
    return await client.post(path, data={**fields, "csrf_token": match.group(1)})


def assert_too_many_attempts(response: httpx.Response) -> int:
    """The one refusal of the throttle; its Retry-After in seconds."""
    assert response.status_code == 429, response.text
    assert response.json() == TOO_MANY_ATTEMPTS_BODY
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


class ReplicaCaller:
    """AUTHENTICATE and REGISTER sent straight to one auth replica, as the HTTP tier would."""

    def __init__(self, connection: RpcConnection) -> None:
        self._connection = connection

    @classmethod
    @asynccontextmanager
    async def to(cls, stack: Gatehouse, replica: Service) -> AsyncIterator[ReplicaCaller]:
        async with rpc_connection(stack, replica, "throttle-test") as connection:
            yield cls(connection)

    async def authenticate(
        self,
        username: str,
        password: str,
        client_ip: str,
        device_cookie: str = "",
        *,
        timeout: float = 10.0,
    ) -> pb.Envelope:
        request = pb.AuthenticateRequest(
            username=username, password=password, client_ip=client_ip, device_cookie=device_cookie
        )
        return await self._connection.call(
            pb.METHOD_AUTHENTICATE, request.SerializeToString(), timeout=timeout
        )

    async def register(self, username: str, password: str, client_ip: str = "") -> pb.Envelope:
        request = pb.RegisterRequest(username=username, password=password, client_ip=client_ip)
        return await self._connection.call(
            pb.METHOD_REGISTER, request.SerializeToString(), timeout=10.0
        )


def is_throttled(envelope: pb.Envelope) -> bool:
    return envelope.status == pb.STATUS_OVERLOADED and envelope.reason == "too_many_attempts"


def ops_url(gatehouse: Gatehouse, index: int) -> str:
    return f"http://127.0.0.1:{gatehouse.auth[index].ports['ops']}/metrics"


async def wait_until_the_replicas_count_in_redis(stack: Gatehouse, timeout: float = 15.0) -> None:
    """Every live auth replica of `stack` counts login attempts in Redis again, once a test
    stopped, paused or restarted it: its script breaker is closed and its last verdict came
    from Redis. An open breaker closes only after a throttle call, past the cool-down, has sent
    its probe, and that call itself counts in the replica's memory: a test that broke Redis
    calls this before it ends, so the next one starts with counts shared by every replica."""
    deadline = time.monotonic() + timeout
    for index, service in enumerate(stack.auth):
        if not service.process.alive:
            continue
        async with ReplicaCaller.to(stack, service) as replica:

            async def on_redis(index: int = index, replica: ReplicaCaller = replica) -> bool:
                samples = scrape(ops_url(stack, index))
                if not (
                    sample_sum(samples, "gatehouse_auth_throttle_in_memory")
                    or sample_sum(samples, "gatehouse_auth_redis_breaker_open", breaker="scripts")
                ):
                    return True
                # A failed login of a name nobody has, from an address of documentation.
                await replica.authenticate(new_username("probe"), "wrong", "198.51.100.250")
                return False

            await wait_until_async(
                on_redis,
                max(0.0, deadline - time.monotonic()),
                f"the login throttle of {service.name} to count in Redis again",
                interval=0.1,
            )
