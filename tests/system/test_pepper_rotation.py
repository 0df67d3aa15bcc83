"""Pepper rotation end to end: hashes made with the old pepper move to the new one at their
next login, `gatehouse keys peppers` counts them per version, and once the old pepper is
dropped the account that logged in still does; the one that did not stays under the old
version (README, "Rotating peppers")."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx
import pytest

from devstack import DataStores
from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from tests.conftest import TEST_SETTINGS
from tests.system.key_rotation_support import gatehouse_cli
from tests.system.support import new_username, stack_of_its_own

# Versions no other test uses: the users table is shared by the whole session.
OLD, NEW = 101, 102
OLD_PEPPER = f"{OLD}:{secrets.token_urlsafe(24)}"
NEW_PEPPER = f"{NEW}:{secrets.token_urlsafe(24)}"


async def usage(auth: Service) -> dict[int, int]:
    shown = await gatehouse_cli(auth, "keys", "peppers", "--json")
    assert shown.exit_code == 0, shown.stderr
    return {row["version"]: row["hashes"] for row in json.loads(shown.stdout)["versions"]}


def restart_auth(stack: Gatehouse, peppers: str) -> Service:
    for old in stack.auth:
        old.process.stop()
    return stack.start_auth({"GATEHOUSE_PEPPERS": peppers})


async def login_status(client: httpx.AsyncClient, username: str) -> int:
    answer = await client.post(
        "/api/v1/sessions", json={"username": username, "password": "password1"}
    )
    return answer.status_code


async def logs_in(client: httpx.AsyncClient, username: str) -> None:
    """Log in, waiting (bounded) for the HTTP tier to find a restarted replica."""

    async def succeeded() -> bool:
        return await login_status(client, username) == 200

    await wait_until_async(succeeded, 20.0, f"{username} to log in")


@pytest.mark.slow
async def test_old_hashes_move_to_the_new_pepper_at_login_and_the_old_one_can_go(
    data_stores: DataStores, tmp_path: Path
) -> None:
    with stack_of_its_own(data_stores, tmp_path, "peppers", dict(TEST_SETTINGS)) as stack:
        auth = stack.start_auth({"GATEHOUSE_PEPPERS": OLD_PEPPER})
        stack.start_http()
        async with httpx.AsyncClient(base_url=stack.url(), timeout=15.0, trust_env=False) as client:
            returning, dormant = new_username("pep"), new_username("pep")
            for username in (returning, dormant):
                created = await client.post(
                    "/api/v1/users", json={"username": username, "password": "password1"}
                )
                assert created.status_code == 201, created.text
            counted = await usage(auth)
            assert counted.get(OLD, 0) == 2 and NEW not in counted

            # The new pepper becomes current; the old one stays for the hashes still using it.
            auth = restart_auth(stack, f"{OLD_PEPPER},{NEW_PEPPER}")
            await logs_in(client, returning)

            async def rehashed() -> bool:
                counted = await usage(auth)
                return counted.get(OLD, 0) == 1 and counted.get(NEW, 0) == 1

            await wait_until_async(rehashed, 20.0, "the login to rehash under the new pepper")

            # Dropped: the account that logged in still does; the dormant one is still counted
            # under the old version, which the configuration no longer holds.
            auth = restart_auth(stack, NEW_PEPPER)
            await logs_in(client, returning)
            # Locked out for good: answered as any failed login, never as a server error.
            assert await login_status(client, dormant) == 401
            shown = await gatehouse_cli(auth, "keys", "peppers")
            assert shown.exit_code == 0, shown.stderr
            rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[1:]}
            assert f"version {OLD} is not in GATEHOUSE_PEPPERS" in shown.stdout
            assert rows[str(OLD)][1:] == ["1", "NO"]
            assert rows[str(NEW)][1:] == ["1", "yes,", "current"]
            print(f"\n`gatehouse keys peppers` after dropping version {OLD}:\n{shown.stdout}")
