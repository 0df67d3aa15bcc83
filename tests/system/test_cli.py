"""Every `gatehouse` account and session command against the whole system: two auth replicas,
two HTTP processes, real MariaDB, Redis and etcd. The command runs as the installed console
script, in a process of its own with the environment of an auth replica, as
`kubectl exec deploy/<release>-auth -- gatehouse ...` runs it."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from devstack.gatehouse import Gatehouse, Service
from services.contract import auth_pb2 as pb
from tests.gatehouse_cli import Outcome, run_gatehouse
from tests.hostile_pictures import busy_picture, encoded
from tests.system.support import bearer, new_username, rpc_connection
from tests.system.test_account_lifecycle import PASSWORD, logged_in, signed_up
from tests.system.throttle_support import form_post


def replica_of_this_pod(gatehouse: Gatehouse) -> Service:
    return next(service for service in gatehouse.auth if service.process.alive)


async def gatehouse_cli(
    gatehouse: Gatehouse, *args: str, replica: Service | None = None
) -> Outcome:
    """`gatehouse args...` with the environment of an auth replica (the pod it runs in)."""
    pod = replica or replica_of_this_pod(gatehouse)
    assert pod.process.env is not None
    return await asyncio.to_thread(run_gatehouse, *args, env=pod.process.env)


async def log_in(
    client: httpx.AsyncClient, username: str, password: str = PASSWORD
) -> httpx.Response:
    answer = await client.post(
        "/api/v1/sessions", json={"username": username, "password": password}
    )
    client.cookies.clear()
    return answer


async def profile_statuses(clients: list[httpx.AsyncClient], token: str) -> set[int]:
    return {
        (await client.get("/api/v1/me", headers=bearer(token))).status_code for client in clients
    }


def succeeded(outcome: Outcome) -> Outcome:
    assert outcome.exit_code == 0, (outcome.stdout, outcome.stderr)
    return outcome


async def test_show_lock_and_unlock(gatehouse: Gatehouse, clients: list[httpx.AsyncClient]) -> None:
    first, second = clients
    username = await signed_up(first)
    tokens = [await logged_in(first, username), await logged_in(second, username)]

    shown = succeeded(await gatehouse_cli(gatehouse, "users", "show", username, "--json")).json()
    assert (shown["username"], shown["locked"], shown["live_sessions"]) == (username, False, 2)
    human = succeeded(await gatehouse_cli(gatehouse, "users", "show", username)).stdout
    assert re.search(r"^locked\s+no$", human, re.MULTILINE), human

    locked = succeeded(await gatehouse_cli(gatehouse, "users", "lock", username))
    assert f"locked {username}" in locked.stdout and "2 live sessions ended" in locked.stdout

    for token in tokens:  # every session ended, on every HTTP process
        assert await profile_statuses(clients, token) == {401}
    for client in clients:  # the right password: 403 account_locked, on either process
        refused = await log_in(client, username)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "account_locked"
    wrong = await log_in(first, username, "not the password")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_credentials")
    partner = await second.post(
        "/open_api/v1/authenticate", json={"username": username, "password": PASSWORD}
    )
    assert (partner.status_code, partner.json()["error"]["code"]) == (404, "invalid_credentials")
    page = await form_post(first, "/login", {"username": username, "password": PASSWORD})
    assert page.status_code == 403 and "This account is locked" in page.text
    other_replica = gatehouse.auth[-1]  # the lock holds on every replica at once
    seen = succeeded(
        await gatehouse_cli(gatehouse, "--json", "users", "show", username, replica=other_replica)
    ).json()
    assert (seen["locked"], seen["live_sessions"]) == (True, 0) and seen["locked_at"]

    unlocked = succeeded(await gatehouse_cli(gatehouse, "users", "unlock", username, "--json"))
    assert unlocked.json()["account"]["locked"] is False
    for client in clients:
        assert (await log_in(client, username)).status_code == 200


async def test_sessions_are_listed_and_revoked_by_id_or_all(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    username = await signed_up(clients[0])
    tokens = [await logged_in(clients[i % 2], username) for i in range(3)]

    listed = succeeded(await gatehouse_cli(gatehouse, "sessions", "list", username, "--json"))
    ids = [session["id"] for session in listed.json()["sessions"]]
    assert len(ids) == 3
    table = succeeded(await gatehouse_cli(gatehouse, "sessions", "list", username)).stdout
    assert table.startswith("ID") and all(session_id in table for session_id in ids)

    # The newest session is listed first: it is the last token's.
    one = succeeded(await gatehouse_cli(gatehouse, "sessions", "revoke", username, "--", ids[0]))
    assert f"ended 1 session of {username}" in one.stdout
    assert await profile_statuses(clients, tokens[2]) == {401}
    assert await profile_statuses(clients, tokens[0]) == {200}

    unknown = await gatehouse_cli(gatehouse, "sessions", "revoke", "--json", username, "--", ids[0])
    assert unknown.exit_code == 1 and unknown.json() == {
        "username": username,
        "ended": 0,
        "not_found": [ids[0]],
    }
    assert len(unknown.stderr_lines) == 1 and ids[0] in unknown.stderr

    everything = succeeded(await gatehouse_cli(gatehouse, "sessions", "revoke", username, "--all"))
    assert f"ended 2 sessions of {username}" in everything.stdout
    for token in tokens:
        assert await profile_statuses(clients, token) == {401}
    empty = succeeded(await gatehouse_cli(gatehouse, "sessions", "list", username))
    assert empty.stdout.strip() == f"{username} has no live session"


async def test_delete_erases_the_account_and_its_picture(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    first, second = clients
    username = await signed_up(first)
    token = await logged_in(first, username)
    picture_key = await uploaded_picture(first, token)

    deleted = succeeded(await gatehouse_cli(gatehouse, "users", "delete", username, "--json"))

    assert deleted.json()["deleted"]["username"] == username
    assert deleted.json()["picture"] == {"key": picture_key, "deleted": True, "store": "database"}
    assert await profile_statuses(clients, token) == {401}
    assert (await log_in(second, username)).status_code == 401
    assert (
        await blob_status(gatehouse, replica_of_this_pod(gatehouse), picture_key)
        == pb.STATUS_NOT_FOUND
    )
    gone = await gatehouse_cli(gatehouse, "users", "show", username)
    assert gone.exit_code == 1 and gone.stderr_lines == [
        f"gatehouse: no live account is named {username!r}"
    ]


async def test_delete_with_the_s3_store_names_the_picture_it_leaves(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient]
) -> None:
    """The auth pod cannot reach S3: the command leaves the object to the operator and says
    which. The deletion still deletes the account's blobs from the auth service's own table
    (here the stack's database store holds the picture)."""
    username = await signed_up(clients[0])
    picture_key = await uploaded_picture(clients[0], await logged_in(clients[0], username))
    pod = replica_of_this_pod(gatehouse)
    assert pod.process.env is not None
    env = {**pod.process.env, "GATEHOUSE_CLI_BLOB_STORE": "s3"}

    deleted = succeeded(
        await asyncio.to_thread(run_gatehouse, "users", "delete", username, env=env)
    )

    assert f"picture {picture_key} left in the S3 bucket" in deleted.stdout
    assert await blob_status(gatehouse, pod, picture_key) == pb.STATUS_NOT_FOUND


async def uploaded_picture(client: httpx.AsyncClient, token: str) -> str:
    """The blob key of a new picture of the token's account."""
    uploaded = await client.put(
        "/api/v1/me/avatar", content=encoded(busy_picture((64, 64)), "PNG"), headers=bearer(token)
    )
    assert uploaded.status_code == 200, uploaded.text
    return str(uploaded.json()["avatar_url"]).removeprefix("/avatars/")


async def blob_status(gatehouse: Gatehouse, replica: Service, key: str) -> int:
    """GetBlob as the HTTP tier calls it."""
    async with rpc_connection(gatehouse, replica, "cli-test") as connection:
        answer = await connection.call(
            pb.METHOD_GET_BLOB, pb.GetBlobRequest(key=key).SerializeToString(), timeout=5.0
        )
    return answer.status


@pytest.mark.parametrize(
    "command",
    [
        ["users", "show"],
        ["users", "lock"],
        ["users", "unlock"],
        ["users", "delete"],
        ["sessions", "list"],
        ["sessions", "revoke", "--all"],
    ],
    ids=" ".join,
)
async def test_every_command_fails_with_one_line_for_an_unknown_account(
    gatehouse: Gatehouse, command: list[str]
) -> None:
    nobody = new_username("nobody")
    outcome = await gatehouse_cli(gatehouse, *command[:2], nobody, *command[2:])
    assert outcome.exit_code == 1 and outcome.stdout == ""
    assert outcome.stderr_lines == [f"gatehouse: no live account is named {nobody!r}"]
