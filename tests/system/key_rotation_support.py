"""Helpers of the key rotation tests: the `gatehouse` command as an auth pod runs it, and a
bounded load of reads and logins from several 127.0.0.x clients."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field

import httpx
from jwt import get_unverified_header

from devstack.gatehouse import REPO_ROOT, Service
from tests.system.support import bearer

MAX_CALLS_PER_CLIENT = 20_000


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


async def gatehouse_cli(auth: Service, *args: str, timeout: float = 60.0) -> CliResult:
    """`gatehouse ARGS` with the auth replica's environment (what `kubectl exec` gives it)."""
    assert auth.process.env is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=auth.process.env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


@dataclass
class LoadFigures:
    clients: int
    calls: int = 0
    logins: int = 0
    failures: list[str] = field(default_factory=list)
    most_in_flight: int = 0
    in_flight: int = 0


class ReadsAndLogins:
    """`clients` callers, each from its own 127.0.0.x address and with its own account: each
    logs in, then reads its profile with that token, logging in again every `relogin_seconds`,
    across every HTTP process in turn, `pause_seconds` between two calls, until stopped (or its
    call cap)."""

    def __init__(
        self,
        urls: list[str],
        accounts: list[str],
        relogin_seconds: float,
        pause_seconds: float = 0.0,
    ) -> None:
        self._urls = urls
        self._accounts = accounts
        self._relogin = relogin_seconds
        self._pause = pause_seconds
        self._stop = asyncio.Event()
        self.figures = LoadFigures(clients=len(accounts))
        self.kids_seen: set[str] = set()

    async def run(self) -> None:
        await asyncio.gather(*(self._client(i, name) for i, name in enumerate(self._accounts)))

    def stop(self) -> None:
        self._stop.set()

    async def _call(
        self, client: httpx.AsyncClient, method: str, url: str, **kw: object
    ) -> httpx.Response | None:
        figures = self.figures
        figures.calls += 1
        figures.in_flight += 1
        figures.most_in_flight = max(figures.most_in_flight, figures.in_flight)
        try:
            return await client.request(method, url, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            figures.failures.append(f"{method} {url}: {type(exc).__name__} {exc}")
            return None
        finally:
            figures.in_flight -= 1

    async def _client(self, index: int, username: str) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{10 + index}")
        async with httpx.AsyncClient(transport=transport, timeout=15.0, trust_env=False) as client:
            token, logged_in_at, calls = "", 0.0, 0
            while not self._stop.is_set() and calls < MAX_CALLS_PER_CLIENT:
                if calls and self._pause:
                    # The client's pace; a stop ends the wait at once.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self._pause)
                    if self._stop.is_set():
                        break
                url = self._urls[calls % len(self._urls)]
                calls += 1
                if time.monotonic() - logged_in_at > self._relogin:
                    answer = await self._call(
                        client,
                        "POST",
                        f"{url}/api/v1/sessions",
                        json={"username": username, "password": "password1"},
                    )
                    if answer is not None and answer.status_code == 200:
                        token, logged_in_at = answer.json()["token"], time.monotonic()
                        self.figures.logins += 1
                        self.kids_seen.add(get_unverified_header(token)["kid"])
                    elif answer is not None:
                        self.figures.failures.append(f"login: {answer.status_code} {answer.text}")
                    continue
                answer = await self._call(client, "GET", f"{url}/api/v1/me", headers=bearer(token))
                if answer is not None and answer.status_code != 200:
                    self.figures.failures.append(f"read: {answer.status_code} {answer.text}")
