"""The verdict on acknowledged writes, against a scripted API (the stack's answers are given)."""

from __future__ import annotations

import json

import httpx

from drills.ledger import Account, Ledger, verify

PASSWORD = "pw-1"


def _api(logins: dict[str, int], profiles: dict[str, tuple[int, str]]) -> httpx.AsyncClient:
    """Logins answer by username, profile reads by token: (status, nickname)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/sessions":
            username = json.loads(request.content)["username"]
            return httpx.Response(logins[username], json={"token": "t"})
        token = request.headers["Authorization"].removeprefix("Bearer ")
        status, nickname = profiles[token]
        return httpx.Response(status, json={"nickname": nickname})

    return httpx.AsyncClient(base_url="http://drill", transport=httpx.MockTransport(answer))


async def test_every_kind_of_lost_write_is_counted() -> None:
    ledger = Ledger()
    ledger.signups = {"kept": PASSWORD, "lost": PASSWORD}
    changed = Account("changed", PASSWORD, "tok-changed")
    ledger.nickname_acknowledged(changed, "new")
    reverted = Account("reverted", PASSWORD, "tok-reverted")
    ledger.nickname_acknowledged(reverted, "new")
    ledger.accounts = {"changed": changed, "reverted": reverted}
    ledger.logged_out = ["tok-out", "tok-revived"]
    client = _api(
        logins={"kept": 200, "lost": 401},
        profiles={
            "tok-changed": (200, "new"),
            "tok-reverted": (200, "old"),
            "tok-out": (401, ""),
            "tok-revived": (200, "x"),
        },
    )
    async with client:
        verdict = await verify(client, ledger)
    assert verdict.checked == 6
    assert verdict.revived_logouts == 1
    assert sorted(verdict.lost) == sorted(
        [
            "signup of lost acknowledged, login now: 401",
            "nickname of reverted is 'old', acknowledged 'new'",
            "a logged-out token answered 200, not 401",
        ]
    )


async def test_an_unanswered_change_may_or_may_not_have_landed() -> None:
    ledger = Ledger()
    before = Account("u1", PASSWORD, "tok-1")
    ledger.nickname_unanswered(before, "maybe")  # never acknowledged: still the username, or it
    after = Account("u2", PASSWORD, "tok-2")
    ledger.nickname_acknowledged(after, "sure")
    ledger.nickname_unanswered(after, "maybe")
    ledger.accounts = {"u1": before, "u2": after}
    profiles = {"tok-1": (200, "u1"), "tok-2": (200, "maybe")}
    async with _api({}, profiles) as client:
        assert (await verify(client, ledger)).lost == []
    profiles["tok-2"] = (200, "u2")  # the username again: the acknowledged change was lost
    async with _api({}, profiles) as client:
        assert (await verify(client, ledger)).lost_count == 1


async def test_a_stack_that_keeps_failing_loses_the_write() -> None:
    ledger = Ledger()
    ledger.signups = {"someone": PASSWORD}
    async with _api({"someone": 503}, {}) as client:
        verdict = await verify(client, ledger)
    assert verdict.lost == ["signup of someone acknowledged, login now: no answer"]
