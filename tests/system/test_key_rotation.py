"""A full signing-key rotation across two auth replicas and two HTTP processes, with reads and
logins in flight: no call fails, tokens signed before keep working until they expire, and the
old key's record leaves etcd once its retire time has passed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import jwt
import pytest

from devstack import DataStores
from devstack.gatehouse import Gatehouse
from devstack.ports import wait_until_async
from services.auth.signing.state import RETIRE_MARGIN_SECONDS
from services.auth.tokens import TokenIssuer, generate_private_key_pem, load_private_key
from tests.conftest import TEST_SETTINGS
from tests.system.key_rotation_support import ReadsAndLogins, gatehouse_cli
from tests.system.support import (
    bearer,
    new_username,
    sample_sum,
    scrape,
    signed_up_token,
    stack_of_its_own,
)

TOKEN_TTL = 10
PROPAGATION_DELAY = 3
CLIENTS = 4
SETTINGS = {
    **TEST_SETTINGS,
    "GATEHOUSE_TOKEN_TTL": str(TOKEN_TTL),
    "GATEHOUSE_JWT_PROPAGATION_DELAY": str(PROPAGATION_DELAY),
    "GATEHOUSE_JWT_KEYS_POLL_INTERVAL": "0.5",
}


@pytest.fixture
def stack(data_stores: DataStores, tmp_path: Path):  # type: ignore[no-untyped-def]
    with stack_of_its_own(data_stores, tmp_path, "rotation", SETTINGS) as gatehouse:
        gatehouse.start(2, 2)
        yield gatehouse


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def keys_listed(stack: Gatehouse) -> dict[str, dict[str, object]]:
    listed = await gatehouse_cli(stack.auth[0], "keys", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    return {row["kid"]: row for row in json.loads(listed.stdout)["keys"]}


@pytest.mark.slow
async def test_a_rotation_under_load_fails_no_call_and_logs_nobody_out(stack: Gatehouse) -> None:
    urls = [stack.url(0), stack.url(1)]
    async with httpx.AsyncClient(base_url=urls[0], timeout=15.0, trust_env=False) as client:
        old_username, _ = await signed_up_token(client)
        accounts = []
        for _ in range(CLIENTS):
            username = new_username("rot")
            created = await client.post(
                "/api/v1/users", json={"username": username, "password": "password1"}
            )
            assert created.status_code == 201, created.text
            accounts.append(username)
    refused = await gatehouse_cli(stack.auth[0], "keys", "rotate")
    assert refused.exit_code == 1
    assert "no next key" in refused.stderr and "Secret" in refused.stderr

    async with httpx.AsyncClient(base_url=urls[0], timeout=15.0, trust_env=False) as client:
        login = await client.post(
            "/api/v1/sessions", json={"username": old_username, "password": "password1"}
        )
        assert login.status_code == 200, login.text
    old_token = login.json()["token"]
    old_kid = kid_of(old_token)
    assert (await keys_listed(stack))[old_kid]["state"] == "signing"

    # Paced: unpaced, the four closed loops kept more than a core busy for the minute the
    # rotation takes, most of it httpx's.
    load = ReadsAndLogins(urls, accounts, relogin_seconds=2.0, pause_seconds=0.02)
    running = asyncio.create_task(load.run())
    try:
        (stack.key_folder / "key-2.pem").write_text(generate_private_key_pem())
        started = time.monotonic()
        rotated = await gatehouse_cli(stack.auth[0], "keys", "rotate", "--json")
        assert rotated.exit_code == 0, rotated.stderr
        assert time.monotonic() - started >= PROPAGATION_DELAY
        assert "step 1/3" in rotated.stderr and "step 2/3" in rotated.stderr
        switched = json.loads(rotated.stdout)
        new_kid = switched["signing"]
        assert switched["retiring"] == old_kid and new_kid != old_kid

        # Tokens signed by the old key keep working after the switch, on every HTTP process.
        for url in urls:
            async with httpx.AsyncClient(base_url=url, timeout=15.0, trust_env=False) as client:
                assert (
                    await client.get("/api/v1/me", headers=bearer(old_token))
                ).status_code == 200
        listed = await keys_listed(stack)
        assert listed[old_kid]["state"] == "retiring" and listed[new_kid]["state"] == "signing"
        shown = await gatehouse_cli(stack.auth[0], "keys", "list")
        print(f"\n$ gatehouse keys rotate\n{rotated.stderr}{rotated.stdout}")
        print(f"$ gatehouse keys list\n{shown.stdout}")

        async def new_kid_signs() -> bool:
            return new_kid in load.kids_seen and load.figures.logins > 2 * CLIENTS

        await wait_until_async(new_kid_signs, 30.0, "logins to get tokens of the new key")

        etcd = stack.stores.etcd_client()
        try:
            keys_prefix = stack.settings["GATEHOUSE_JWT_KEYS_PREFIX"]

            async def old_record_gone() -> bool:
                records = [kv.key.decode() for kv in await etcd.get_prefix(keys_prefix.encode())]
                return f"{keys_prefix}{old_kid}" not in records and len(records) == 1

            await wait_until_async(
                old_record_gone,
                TOKEN_TTL + RETIRE_MARGIN_SECONDS + 30,
                "the old key's record to leave etcd",
            )
        finally:
            await etcd.close()
    finally:
        load.stop()
        await running

    figures = load.figures
    print(
        f"\nrotation under load: {figures.clients} concurrent callers, {figures.calls} calls"
        f" ({figures.logins} logins), at most {figures.most_in_flight} in flight,"
        f" {len(figures.failures)} failed"
    )
    assert figures.failures == []
    assert figures.calls > 100 and load.kids_seen == {old_kid, new_kid}
    assert (await keys_listed(stack))[old_kid]["state"] == "retired"
    async with httpx.AsyncClient(base_url=urls[1], timeout=15.0, trust_env=False) as client:
        assert (await client.get("/api/v1/me", headers=bearer(old_token))).status_code == 401


@pytest.fixture
def small_stack(data_stores: DataStores, tmp_path: Path):  # type: ignore[no-untyped-def]
    with stack_of_its_own(data_stores, tmp_path, "withdrawal", SETTINGS) as gatehouse:
        gatehouse.start(1, 1)
        yield gatehouse


async def test_a_stray_key_withdrawn_with_the_cli_is_trusted_no_more(
    small_stack: Gatehouse,
) -> None:
    """A key put in the Secret by mistake is published verify-only at once, so the HTTP tier
    accepts tokens it signs; taking its file out withdrew nothing. `gatehouse keys withdraw`
    ends that trust on every HTTP process, and a replica still holding the file leaves it
    withdrawn."""
    stray_pem = generate_private_key_pem()
    (small_stack.key_folder / "key-2.pem").write_text(stray_pem)
    stray_kid = TokenIssuer(load_private_key(stray_pem), TOKEN_TTL).kid

    async def stray_published() -> bool:
        listed = await keys_listed(small_stack)
        return stray_kid in listed and bool(listed[stray_kid]["published"])

    await wait_until_async(stray_published, 30.0, "the stray key to be published")
    async with httpx.AsyncClient(
        base_url=small_stack.url(0), timeout=15.0, trust_env=False
    ) as client:
        _, token = await signed_up_token(client)
        claims = jwt.decode(token, options={"verify_signature": False})
        forged = jwt.encode(
            claims, load_private_key(stray_pem), algorithm="EdDSA", headers={"kid": stray_kid}
        )

        async def status_of(bearer_token: str) -> int:
            return (await client.get("/api/v1/me", headers=bearer(bearer_token))).status_code

        assert await status_of(forged) == 200  # what a leaked key allows
        # Kids are base64url: one in 64 starts with '-', which goes after '--'.
        signing = await gatehouse_cli(small_stack.auth[0], "keys", "withdraw", "--", kid_of(token))
        assert signing.exit_code == 1 and "rotate to another key first" in signing.stderr
        withdrawn = await gatehouse_cli(
            small_stack.auth[0], "keys", "withdraw", "--json", "--", stray_kid
        )
        assert withdrawn.exit_code == 0, withdrawn.stderr
        assert json.loads(withdrawn.stdout)["was"] == "verify-only"
        # Copied into MySQL by the command itself, as the replica would (its next key sync).
        assert "copy in MySQL was not written" not in withdrawn.stderr, withdrawn.stderr

        async def forged_refused() -> bool:
            return await status_of(forged) == 401

        await wait_until_async(forged_refused, 10.0, "the stray key's tokens to be refused")
        assert await status_of(token) == 200

    def replica_synced_as_retired() -> bool:
        samples = scrape(f"http://127.0.0.1:{small_stack.auth[0].ports['ops']}/metrics")
        return sample_sum(samples, "gatehouse_auth_signing_keys", state="retired") == 1

    await wait_until_async(replica_synced_as_retired, 30.0, "the replica to see it retired")
    listed = await keys_listed(small_stack)
    assert listed[stray_kid]["state"] == "retired" and listed[stray_kid]["published"] == []


async def test_a_key_planted_in_etcd_signs_nothing(
    small_stack: Gatehouse, data_stores: DataStores
) -> None:
    """Whoever can write etcd's keys prefix (a flaw of etcd's, a stolen root password) cannot
    make the HTTP tier trust a key: only records an auth replica's RPC certificate vouches
    for are taken, and the planted one is logged."""
    planted = load_private_key(generate_private_key_pem())
    kid, record = TokenIssuer(planted, TOKEN_TTL).public_key_record()
    prefix = small_stack.settings["GATEHOUSE_JWT_KEYS_PREFIX"]
    http_log = small_stack.http[0].process.log_path
    etcd = data_stores.etcd_client()
    try:
        await etcd.put(f"{prefix}{kid}".encode(), record)
    finally:
        await etcd.close()

    def planted_refused() -> bool:
        return f"ignoring the published JWT key {kid!r}: it carries no attestation" in (
            http_log.read_text(errors="replace")
        )

    await wait_until_async(planted_refused, 15.0, "the HTTP tier to refuse the planted key")
    async with httpx.AsyncClient(
        base_url=small_stack.url(0), timeout=15.0, trust_env=False
    ) as client:
        _, token = await signed_up_token(client)
        claims = jwt.decode(token, options={"verify_signature": False})
        forged = jwt.encode(claims, planted, algorithm="EdDSA", headers={"kid": kid})
        assert (await client.get("/api/v1/me", headers=bearer(forged))).status_code == 401
        assert (await client.get("/api/v1/me", headers=bearer(token))).status_code == 200
        jwks = (await client.get("/.well-known/jwks.json")).json()
        assert [key["kid"] for key in jwks["keys"]] == [kid_of(token)]
