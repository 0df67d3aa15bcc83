"""The key ring and the rotation against a real etcd: the first state, step 1 by the replicas,
two rotations at once, retirement (once, by whichever replica, also in the interleavings of two
replicas' syncs that once left the retired key published), and a replica whose folder lags."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aetcd
import jwt
import pytest
from prometheus_client import REGISTRY

from devstack import DataStores
from services.auth.signing.etcd_records import published_records, read_state, record_public_key
from services.auth.signing.folder import read_key_folder
from services.auth.signing.ring import CopyUnreadable, NoSigningKey, SigningKeyRing
from services.auth.signing.rotation import Rotation, RotationRefused, Switched
from services.auth.signing.sources import FixedKey, KeyFolder, KeySource
from services.auth.signing.state import (
    EMPTY,
    RETIRE_MARGIN_SECONDS,
    RETIRED,
    SIGNING,
    VERIFIER_LEEWAY_SECONDS,
    KeyEntry,
    MalformedState,
    RotationState,
    StateCopies,
)
from services.auth.store.database import Database
from services.auth.store.rotation_copy import RotationStateCopies
from services.auth.tokens import TokenIssuer, generate_private_key_pem, load_private_key
from services.foundation.etcd import connect
from services.foundation.etcd_access import EtcdAccess, EtcdTarget
from services.foundation.jwk import legacy_kid
from services.http.public_keys import parse_published_key
from services.http.tokens import CLOCK_SKEW_SECONDS

TOKEN_TTL = 600
POLL_INTERVAL = 30.0  # the replicas' GATEHOUSE_JWT_KEYS_POLL_INTERVAL, as the rotation knows it


class Clock:
    """The rotation's clock; tokens are stamped by the real one."""

    def __init__(self, behind_real_time: float = 0.0) -> None:
        self.now = time.time() - behind_real_time

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def etcd(data_stores: DataStores) -> AsyncIterator[tuple[aetcd.Client, str]]:
    client = data_stores.etcd_client()
    namespace = f"/test-rotation-{uuid.uuid4().hex}/"
    try:
        yield client, namespace
    finally:
        await client.delete_prefix(namespace.encode())
        await client.close()


def ring(
    folder: Path | KeySource,
    access: EtcdAccess,
    namespace: str,
    clock: Clock,
    connect_etcd: Callable[[EtcdTarget, int], aetcd.Client] = connect,
    copies: StateCopies | None = None,
) -> SigningKeyRing:
    """A replica's ring on `folder` (GATEHOUSE_JWT_KEYS_DIR), or on another key source; with
    `copies`, keeping the rotation state's copy there."""
    return SigningKeyRing(
        KeyFolder(folder) if isinstance(folder, Path) else folder,
        endpoints=access,
        keys_prefix=f"{namespace}jwt-keys/",
        rotation_prefix=f"{namespace}rotation/",
        token_ttl=TOKEN_TTL,
        poll_interval=POLL_INTERVAL,
        issuer="gatehouse",
        audience="gatehouse",
        clock=clock,
        connect_etcd=connect_etcd,
        copies=copies,
    )


def rotation(
    client: aetcd.Client, namespace: str, clock: Clock, copies: StateCopies | None = None
) -> Rotation:
    """`gatehouse keys`' steps; with `copies`, writing the rotation state's copy there too."""
    return Rotation(
        client,
        keys_prefix=f"{namespace}jwt-keys/",
        rotation_prefix=f"{namespace}rotation/",
        token_ttl=TOKEN_TTL,
        propagation_delay=0,
        replica_poll_interval=POLL_INTERVAL,
        copies=copies,
        clock=clock,
    )


async def rotated_to_retirement(
    replica: SigningKeyRing, client: aetcd.Client, namespace: str, clock: Clock, folder: Path
) -> Switched:
    """One replica synced, a rotation to the folder's next key, the clock at the old key's
    retire time, and the replica synced again: it retires the old key and withdraws its records.
    """
    await replica.sync()
    steps = rotation(client, namespace, clock)
    switched = await steps.switch(await steps.publish_next(read_key_folder(folder), None))
    clock.now = switched.retire_at
    await replica.sync()
    return switched


async def rotation_state(client: aetcd.Client, namespace: str) -> RotationState:
    return (await read_state(client, f"{namespace}rotation/")).state


async def record_names(client: aetcd.Client, namespace: str) -> set[str]:
    prefix = f"{namespace}jwt-keys/"
    return {kv.key.decode()[len(prefix) :] for kv in await client.get_prefix(prefix.encode())}


def folder_of_two(path: Path) -> tuple[Path, str, str]:
    """A key folder of two new keys, and their kids in file name order."""
    pems = generate_private_key_pem(), generate_private_key_pem()
    kids = [TokenIssuer(load_private_key(pem), 1).kid for pem in pems]
    return folder_with(path, *pems), kids[0], kids[1]


def folder_with(path: Path, *pems: str) -> Path:
    path.mkdir(exist_ok=True)
    for number, pem in enumerate(pems, start=1):
        (path / f"key-{number}.pem").write_text(pem)
    return path


async def test_a_rotation_from_first_state_to_retirement(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    client, namespace = etcd
    clock = Clock()
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    folder = folder_with(tmp_path / "keys", old_pem)
    old_kid = TokenIssuer(load_private_key(old_pem), 1).kid
    # A record from a release before thumbprints, named by the legacy kid, of the same key.
    legacy_record = json.loads(TokenIssuer(load_private_key(old_pem), 1).public_key_record()[1])
    old_legacy = legacy_kid(load_private_key(old_pem).public_key().public_bytes_raw())
    await client.put(
        f"{namespace}jwt-keys/{old_legacy}".encode(),
        json.dumps({**legacy_record, "kid": old_legacy}).encode(),
    )
    first, second = (ring(folder, data_stores.etcd_access(), namespace, clock) for _ in "12")
    try:
        await asyncio.gather(first.sync(), second.sync())  # both start the state: one wins
        assert first.kid == second.kid == old_kid
        assert (await rotation_state(client, namespace)).signing_kid == old_kid

        folder_with(folder, old_pem, new_pem)  # step 1 needs nothing but the file
        await first.sync()
        new_kid = TokenIssuer(load_private_key(new_pem), 1).kid
        assert await record_names(client, namespace) == {old_legacy, old_kid, new_kid}
        records = await client.get_prefix(f"{namespace}jwt-keys/".encode())
        assert all(kv.lease == 0 for kv in records)  # tokens outlive the replica that signed them
        assert first.kid == old_kid  # verify-only: published, not signing

        # Two rotations at once: one switches, the other is told it lost.
        rotations = [rotation(client, namespace, clock) for _ in "12"]
        keys = read_key_folder(folder)
        plans = await asyncio.gather(*(r.publish_next(keys, None) for r in rotations))
        outcomes = await asyncio.gather(
            *(r.switch(plan) for r, plan in zip(rotations, plans, strict=True)),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, RotationRefused)]
        assert len(refused) == 1 and "another rotation" in str(refused[0])

        await asyncio.gather(first.sync(), second.sync())
        assert first.kid == second.kid == new_kid
        token = first.issue(7, "s").token
        assert jwt.get_unverified_header(token)["kid"] == new_kid

        clock.now += POLL_INTERVAL + TOKEN_TTL + RETIRE_MARGIN_SECONDS - 1
        await first.sync()
        assert old_kid in await record_names(client, namespace)  # not yet due
        clock.now += 1
        await first.sync()  # one sync withdraws every copy, the legacy-named one too
        assert await record_names(client, namespace) == {new_kid}
        await second.sync()  # it sees the key due too: idempotent
        assert await record_names(client, namespace) == {new_kid}
        state = await rotation_state(client, namespace)
        assert state.state_of(old_kid) == "retired" and state.signing_kid == new_kid
        await first.sync()  # the retired key is still in the folder: never published again
        assert await record_names(client, namespace) == {new_kid}
    finally:
        await first.close()
        await second.close()


async def test_a_verify_only_key_can_be_withdrawn_for_good_its_file_left_in_the_folder(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    """A key put in the Secret by mistake (or leaked) was published verify-only, and taking its
    file out left it published and trusted for ever: nothing withdrew a key that never signed.
    `gatehouse keys withdraw` retires it; a replica still holding the file does not publish it
    again. The signing key, unknown kids and (without --now) a retiring key are refused."""
    client, namespace = etcd
    clock = Clock()
    old_pem, stray_pem, new_pem = (generate_private_key_pem() for _ in "123")
    folder = folder_with(tmp_path / "keys", old_pem, stray_pem)
    old_kid, stray_kid, new_kid = (
        TokenIssuer(load_private_key(pem), 1).kid for pem in (old_pem, stray_pem, new_pem)
    )
    replica = ring(folder, data_stores.etcd_access(), namespace, clock)
    steps = rotation(client, namespace, clock)
    try:
        await replica.sync()
        assert await record_names(client, namespace) == {old_kid, stray_kid}
        with pytest.raises(RotationRefused, match="rotate to another key first"):
            await steps.withdraw(old_kid)
        with pytest.raises(RotationRefused, match="no key nope"):
            await steps.withdraw("nope")

        withdrawn = await steps.withdraw(stray_kid)
        assert (withdrawn.was, withdrawn.records) == ("verify-only", [stray_kid])
        await replica.sync()  # the file is still in its folder
        assert await record_names(client, namespace) == {old_kid}
        assert (await rotation_state(client, namespace)).state_of(stray_kid) == "retired"

        (folder / "key-2.pem").write_text(new_pem)
        switched = await steps.switch(await steps.publish_next(read_key_folder(folder), None))
        assert switched.retiring == old_kid
        with pytest.raises(RotationRefused, match="--now"):
            await steps.withdraw(old_kid)
        assert (await steps.withdraw(old_kid, end_its_tokens=True)).was == "retiring"
        assert await record_names(client, namespace) == {new_kid}
    finally:
        await replica.close()


async def test_a_rotation_state_etcd_lost_is_written_back_and_no_retired_key_signs_again(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    """etcd emptied (restored from nothing) after a rotation, while the retired key's file is
    still in the folder, as the README allows until retirement: started afresh, the state would
    make the first file's key, the retired one, sign again."""
    client, namespace = etcd
    clock = Clock()
    folder, old_kid, new_kid = folder_of_two(tmp_path / "keys")
    replica = ring(folder, data_stores.etcd_access(), namespace, clock)
    try:
        await rotated_to_retirement(replica, client, namespace, clock, folder)
        assert replica.kid == new_kid
        restored_before = restored_states()
        await client.delete_prefix(namespace.encode())
        await replica.sync()
        assert replica.kid == new_kid
        assert restored_states() == restored_before + 1  # what the alert watches
        state = await rotation_state(client, namespace)
        assert (state.signing_kid, state.state_of(old_kid)) == (new_kid, "retired")
        assert await record_names(client, namespace) == {new_kid}
    finally:
        await replica.close()


def restored_states() -> float:
    return REGISTRY.get_sample_value("gatehouse_auth_rotation_state_restored_total") or 0.0


@asynccontextmanager
async def lagging_after_a_switch(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path, clock: Clock
) -> AsyncIterator[tuple[SigningKeyRing, Rotation, Switched]]:
    """A replica whose folder lacks the next key, synced after a rotation switched to it: it
    signs with the retiring key (asserted). Closed on exit."""
    client, namespace = etcd
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    updated = folder_with(tmp_path / "updated", old_pem, new_pem)
    lagging = ring(
        folder_with(tmp_path / "lagging", old_pem), data_stores.etcd_access(), namespace, clock
    )
    try:
        await lagging.sync()
        steps = rotation(client, namespace, clock)
        switched = await steps.switch(await steps.publish_next(read_key_folder(updated), None))
        await lagging.sync()
        assert lagging.kid == switched.retiring
        yield lagging, steps, switched
    finally:
        await lagging.close()


async def test_a_replica_whose_folder_lags_signs_tokens_that_end_by_the_retire_time(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    clock = Clock(behind_real_time=TOKEN_TTL / 2)  # the switch was half a token lifetime ago
    async with lagging_after_a_switch(data_stores, etcd, tmp_path, clock) as (lagging, _, switched):
        claims = jwt.decode(
            lagging.issue(7, "s").token, options={"verify_signature": False, "verify_exp": False}
        )
        assert claims["exp"] <= switched.retire_at < claims["iat"] + TOKEN_TTL


async def test_a_signing_key_whose_file_is_replaced_by_a_new_one_signs_on_from_memory(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    """A Secret update that swaps the signing key's file for a new key, without a rotation:
    the replica signed with the new key at once, published in that same sync, before any JWKS
    cache could hold it. It signs on with the key it holds, still the state's signing key."""
    client, namespace = etcd
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    folder = folder_with(tmp_path / "keys", old_pem)
    replica = ring(folder, data_stores.etcd_access(), namespace, Clock())
    try:
        await replica.sync()
        old_kid = replica.kid
        (folder / "key-1.pem").unlink()
        (folder / "key-2.pem").write_text(new_pem)
        await replica.sync()
        assert replica.kid == old_kid
        assert jwt.get_unverified_header(replica.issue(7, "s").token)["kid"] == old_kid
        new_kid = TokenIssuer(load_private_key(new_pem), TOKEN_TTL).kid
        state = await rotation_state(client, namespace)
        assert (state.signing_kid, state.state_of(new_kid)) == (old_kid, "verify-only")
    finally:
        await replica.close()


async def test_a_private_key_changed_by_a_restart_signs_and_the_old_one_retires(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str]
) -> None:
    """GATEHOUSE_JWT_PRIVATE_KEY (no folder, no rotation) replaced by a restart: the replicas
    with the new key refused to start, the state naming the old key, and nothing could switch
    it. The new key signs now and the old one retires; a replica still holding the old key
    signs with it, retiring, and does not switch back."""
    client, namespace = etcd
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    before = ring(
        FixedKey(load_private_key(old_pem)), data_stores.etcd_access(), namespace, Clock()
    )
    after = ring(FixedKey(load_private_key(new_pem)), data_stores.etcd_access(), namespace, Clock())
    try:
        await before.sync()
        old_kid = before.kid
        await after.sync()
        new_kid = after.kid
        assert new_kid is not None and new_kid != old_kid
        state = await rotation_state(client, namespace)
        assert (state.signing_kid, state.state_of(old_kid or "")) == (new_kid, "retiring")
        await before.sync()
        assert before.kid == old_kid
        assert (await rotation_state(client, namespace)).signing_kid == new_kid
    finally:
        await before.close()
        await after.close()


async def test_a_lagging_replica_whose_key_is_withdrawn_signs_nothing(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    """A replica whose folder lags a rotation signs with the retiring key; withdrawn at once
    (`gatehouse keys withdraw --now`), it went on signing with it in memory: logins answered
    with tokens every verifier refused. It signs nothing now, so logins go elsewhere."""
    async with lagging_after_a_switch(data_stores, etcd, tmp_path, Clock()) as (
        lagging,
        steps,
        switched,
    ):
        await steps.withdraw(switched.retiring, end_its_tokens=True)
        await lagging.step()  # the periodic sync: no exception out of it
        assert lagging.kid is None
        with pytest.raises(NoSigningKey):
            lagging.issue(7, "s")


async def test_a_replica_started_without_the_signing_key_signs_rather_than_not_serve(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    """Started with nothing it may sign with (a Secret whose signing key was replaced), a
    replica signs with a published key of its folder, logged, rather than not serve at all;
    the state still names the signing key, and a running replica never does this (above)."""
    client, namespace = etcd
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    first = ring(
        folder_with(tmp_path / "first", old_pem), data_stores.etcd_access(), namespace, Clock()
    )
    started = ring(
        folder_with(tmp_path / "started", new_pem), data_stores.etcd_access(), namespace, Clock()
    )
    try:
        await first.sync()
        await started.sync()
        new_kid = TokenIssuer(load_private_key(new_pem), TOKEN_TTL).kid
        assert started.kid == new_kid
        state = await rotation_state(client, namespace)
        assert (state.signing_kid, state.state_of(new_kid)) == (first.kid, "verify-only")
    finally:
        await first.close()
        await started.close()


async def test_a_replica_that_sees_the_switch_one_poll_late_signs_no_token_outliving_its_key(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    client, namespace = etcd
    clock = Clock(behind_real_time=POLL_INTERVAL)  # the switch was one poll interval ago
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    folder = folder_with(tmp_path / "keys", old_pem, new_pem)
    late = ring(folder, data_stores.etcd_access(), namespace, clock)
    try:
        await late.sync()
        steps = rotation(client, namespace, clock)
        switched = await steps.switch(await steps.publish_next(read_key_folder(folder), None))
        # Its last poll came just before the switch: until its next one it signs with the old
        # key, a full token lifetime from now (real time, one poll after the switch).
        assert late.kid == switched.retiring
        token = late.issue(7, "s").token
        exp = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})["exp"]
        verifiers_accept_until = exp + CLOCK_SKEW_SECONDS
        assert verifiers_accept_until <= switched.retire_at
    finally:
        await late.close()


async def test_rotate_without_a_next_key_says_what_to_do(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    client, namespace = etcd
    clock = Clock()
    folder = folder_with(tmp_path / "keys", generate_private_key_pem())
    replica = ring(folder, data_stores.etcd_access(), namespace, clock)
    try:
        await replica.sync()
        with pytest.raises(RotationRefused, match=r"no next key in the key folder.*Secret"):
            await rotation(client, namespace, clock).publish_next(read_key_folder(folder), None)
    finally:
        await replica.close()


PACED_CALLS = frozenset({"get", "get_prefix", "put", "delete", "transaction"})
FINISH = "finish"


class PacedClient:
    """A real etcd client whose reads and writes, once `start` ran a sync on it, each wait for
    the test's go-ahead: two replicas' syncs then interleave in the order the test says."""

    def __init__(self, client: aetcd.Client) -> None:
        self._client = client
        self._sync: asyncio.Task[None] | None = None
        self._pending: str | None = None  # the call waiting for its go-ahead
        self._arrived = asyncio.Event()
        self._go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in PACED_CALLS:
            return attribute

        async def paced(*args: Any, **kwargs: Any) -> Any:
            if self._sync is not None:
                self._pending = name
                self._arrived.set()
                await self._go.wait()
                self._go.clear()
            return await attribute(*args, **kwargs)

        return paced

    def start(self, sync: Coroutine[Any, Any, None]) -> None:
        self._sync = asyncio.create_task(sync)

    async def abandon(self) -> None:
        """Cancel the sync if a failed step left it waiting."""
        if self._sync is not None and not self._sync.done():
            self._sync.cancel()
            await asyncio.gather(self._sync, return_exceptions=True)

    async def advance(self, step: int | str) -> None:
        """Let `step` calls through, or until the next call is a `step` (FINISH: to the end)."""
        assert self._sync is not None
        let_through = 0
        async with asyncio.timeout(10):
            while True:
                arrived = asyncio.create_task(self._arrived.wait())
                await asyncio.wait({arrived, self._sync}, return_when=asyncio.FIRST_COMPLETED)
                arrived.cancel()
                if self._sync.done():
                    await self._sync  # raises what the sync raised
                    assert step == FINISH, f"the sync ended before {step}"
                    return
                if step == self._pending or let_through == step:
                    return
                let_through += 1
                self._arrived.clear()
                self._go.set()


def paced_connect(made: list[PacedClient]) -> Callable[[EtcdTarget, int], aetcd.Client]:
    def connect_paced(target: EtcdTarget, attempt: int) -> aetcd.Client:
        made.append(PacedClient(connect(target, attempt)))
        return cast(aetcd.Client, made[-1])

    return connect_paced


@pytest.mark.parametrize(
    "schedule",
    [
        # One replica reads the state (retiring); the other retires the key; the first reads
        # the records (the key's are gone) and goes on with the state it read.
        [("late", 1), ("first", FINISH), ("late", FINISH)],
        # Both get as far as their state write (their first transaction); the first there wins.
        [("first", "transaction"), ("late", "transaction"), ("first", FINISH), ("late", FINISH)],
    ],
    ids=["read-state-before-the-retirement", "both-up-to-the-state-write"],
)
async def test_two_replicas_retiring_a_key_at_once_leave_only_the_next_key_published(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    tmp_path: Path,
    schedule: list[tuple[str, int | str]],
) -> None:
    client, namespace = etcd
    clock = Clock()
    folder = folder_with(tmp_path / "keys", generate_private_key_pem(), generate_private_key_pem())
    clients: dict[str, list[PacedClient]] = {"first": [], "late": []}
    replicas = {
        name: ring(folder, data_stores.etcd_access(), namespace, clock, paced_connect(made))
        for name, made in clients.items()
    }
    try:
        for replica in replicas.values():
            await replica.sync()
        steps = rotation(client, namespace, clock)
        switched = await steps.switch(await steps.publish_next(read_key_folder(folder), None))
        for replica in replicas.values():
            await replica.sync()
        assert await record_names(client, namespace) == {switched.signing, switched.retiring}

        clock.now = switched.retire_at
        for name, replica in replicas.items():
            (paced,) = clients[name]
            paced.start(replica.sync())
        for name, step in schedule:
            await clients[name][0].advance(step)

        assert await record_names(client, namespace) == {switched.signing}
        state = await rotation_state(client, namespace)
        assert state.state_of(switched.retiring) == "retired"
    finally:
        for name, replica in replicas.items():
            for paced in clients[name]:
                await paced.abandon()
            await replica.close()


def test_records_nested_past_the_json_parsers_limit_are_malformed_not_a_crash() -> None:
    """Anything under the prefixes may be written by a careless hand: a record or state document
    that JSON cannot parse without running out of recursion is as malformed as one that is not
    JSON at all."""
    assert record_public_key(b"[" * 100_000) is None
    with pytest.raises(MalformedState):
        RotationState.from_json(b'{"keys": ' + b"[" * 60_000 + b"}")


@pytest.mark.parametrize("moment", ["1" + "0" * 400, "NaN", "Infinity", "-Infinity"])
def test_a_rotation_state_with_a_time_no_clock_reaches_is_malformed(moment: str) -> None:
    """float() of a 400-digit integer raises OverflowError, which the `gatehouse keys` command
    and the ring's sync do not expect; NaN would make a key retire never."""
    for fields in (
        f'{{"state": "signing", "since": {moment}}}',
        f'{{"state": "retiring", "since": 1, "retire_at": {moment}}}',
    ):
        with pytest.raises(MalformedState):
            RotationState.from_json(b'{"keys": {"a": %s}}' % fields.encode())


async def test_a_published_record_whose_name_is_not_utf8_is_none_of_ours(
    data_stores: DataStores,
) -> None:
    """Listed, it would be withdrawn under a name that is not its key's, again at every sync."""
    client = data_stores.etcd_client()
    prefix = f"/test-{uuid.uuid4().hex}/keys/"
    try:
        await client.put(prefix.encode() + b"\xff", b'{"kid": "copy"}')
        await client.put(f"{prefix}kid1".encode(), b'{"kid": "kid1"}')
        assert set(await published_records(client, prefix)) == {"kid1"}
    finally:
        await client.delete_prefix(prefix.encode())
        await client.close()


class CutOffClient:
    """A real etcd client that, once `cut` is set, fails every read and write as an etcd out of
    reach would."""

    def __init__(self, client: aetcd.Client, cut: asyncio.Event) -> None:
        self._client = client
        self._cut = cut

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in PACED_CALLS:
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self._cut.is_set():
                raise aetcd.exceptions.ConnectionFailedError("etcd out of reach (test)")
            return await attribute(*args, **kwargs)

        return call


async def test_a_replica_cut_off_from_etcd_after_a_switch_signs_no_token_outliving_its_key(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    """The switch came just after this replica's last good sync; etcd then went away for two
    minutes (an outage: the HTTP tier keeps routing to the replica). The replica signs on with
    the old key, but its tokens must still be dead by the time that key's records go."""
    assert VERIFIER_LEEWAY_SECONDS == CLOCK_SKEW_SECONDS  # the auth tier's copy of the leeway
    client, namespace = etcd
    outage = 4 * POLL_INTERVAL
    clock = Clock(behind_real_time=outage)  # the rotation's clock: the switch was then
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    folder = folder_with(tmp_path / "keys", old_pem, new_pem)
    cut = asyncio.Event()

    def connect_cut_off(target: EtcdTarget, attempt: int) -> aetcd.Client:
        return cast(aetcd.Client, CutOffClient(connect(target, attempt), cut))

    replica = ring(folder, data_stores.etcd_access(), namespace, clock, connect_cut_off)
    try:
        await replica.sync()
        steps = rotation(client, namespace, clock)
        switched = await steps.switch(await steps.publish_next(read_key_folder(folder), None))
        cut.set()  # etcd goes away before the replica's next poll
        clock.now += outage  # the replica's clock (and the rotation's) is now real time again
        for _ in range(3):
            await replica.step()  # every poll of the outage fails: it keeps signing as before
        assert replica.kid == switched.retiring
        token = replica.issue(7, "s").token
        exp = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})["exp"]
        late_by = exp + CLOCK_SKEW_SECONDS - switched.retire_at
        assert late_by <= 0, f"its holder is logged out {late_by:.0f} s before the token's exp"

    finally:
        await replica.close()


async def test_a_retired_keys_copy_whose_pem_is_spelled_otherwise_is_withdrawn_too(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    """The HTTP tier trusts a record by its key (PEM parsed, legacy name or thumbprint);
    withdrawal finds copies by the PEM's exact text. A legacy-named copy whose PEM differs in
    spelling only (no final newline, CRLF) survives the retirement, and the HTTP tier keeps
    trusting the retired key under both its kids."""
    client, namespace = etcd
    clock = Clock()
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    folder = folder_with(tmp_path / "keys", old_pem, new_pem)
    old_record = json.loads(TokenIssuer(load_private_key(old_pem), 1).public_key_record()[1])
    old_legacy = legacy_kid(load_private_key(old_pem).public_key().public_bytes_raw())
    copy = json.dumps({**old_record, "kid": old_legacy,
                       "public_key": old_record["public_key"].rstrip("\n")}).encode()  # fmt: skip
    parse_published_key(old_legacy, copy)  # the HTTP tier takes it
    await client.put(f"{namespace}jwt-keys/{old_legacy}".encode(), copy)
    replica = ring(folder, data_stores.etcd_access(), namespace, clock)
    try:
        switched = await rotated_to_retirement(replica, client, namespace, clock, folder)
        assert await record_names(client, namespace) == {switched.signing}
    finally:
        await replica.close()


def unknown_key_type_record() -> bytes:
    """A record whose PEM holds a key of an algorithm cryptography does not know (OID 1.2.3.4)."""
    oid = bytes([0x06, 0x03, 0x2A, 0x03, 0x04])
    algorithm = bytes([0x30, len(oid)]) + oid
    body = algorithm + bytes([0x03, 33, 0]) + bytes(32)
    spki = bytes([0x30, len(body)]) + body
    pem = "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(spki).decode()
    pem += "\n-----END PUBLIC KEY-----\n"
    return json.dumps({"kid": "stray", "alg": "EdDSA", "public_key": pem}).encode()


async def test_a_record_of_an_unknown_key_type_does_not_stop_the_syncs(
    data_stores: DataStores, etcd: tuple[aetcd.Client, str], tmp_path: Path
) -> None:
    """The HTTP tier skips such a record; withdrawal, which reads every record's key once a key
    is retired, must skip it too, or every sync of every replica fails from then on (a starting
    replica never registers, and the others' tokens shrink as if etcd were away)."""
    client, namespace = etcd
    clock = Clock()
    folder = folder_with(tmp_path / "keys", generate_private_key_pem(), generate_private_key_pem())
    stray = unknown_key_type_record()
    with pytest.raises(ValueError):
        parse_published_key("stray", stray)
    await client.put(f"{namespace}jwt-keys/stray".encode(), stray)
    replica = ring(folder, data_stores.etcd_access(), namespace, clock)
    try:
        switched = await rotated_to_retirement(replica, client, namespace, clock, folder)
        await replica.sync()  # as every later sync does, with a retired key in the state
        assert await record_names(client, namespace) == {switched.signing, "stray"}
    finally:
        await replica.close()


# The copy of the rotation state in MySQL


@pytest.fixture
def copies(primary: Database) -> RotationStateCopies:
    """The replicas' copies of the rotation state, in this module's database."""
    return RotationStateCopies(primary)


async def test_a_replica_started_while_etcd_is_empty_writes_back_the_copy_not_a_fresh_state(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    tmp_path: Path,
    copies: RotationStateCopies,
) -> None:
    """A replica that starts while etcd is emptied (a scale-up, an eviction) holds no state in
    memory: started afresh, the state made the folder's first key sign, here the retired one,
    and published every key of the folder again."""
    client, namespace = etcd
    clock = Clock()
    folder, old_kid, new_kid = folder_of_two(tmp_path / "keys")
    running = ring(folder, data_stores.etcd_access(), namespace, clock, copies=copies)
    try:
        await rotated_to_retirement(running, client, namespace, clock, folder)
        kept = await copies.read(f"{namespace}rotation/")
        assert kept == await rotation_state(client, namespace)
    finally:
        await running.close()
    assert kept is not None
    assert (kept.signing_kid, kept.state_of(old_kid)) == (new_kid, "retired")
    await client.delete_prefix(namespace.encode())
    assert await started_after_the_loss(data_stores, etcd, folder, copies, kept) == (
        new_kid,
        {new_kid},
    )


async def started_after_the_loss(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    folder: Path,
    copies: RotationStateCopies,
    kept: RotationState,
) -> tuple[str | None, set[str]]:
    """A replica started after etcd lost the rotation state, synced once: etcd holds `kept`
    again, written back (numbered after it) and counted. The kid it signs with, and the names
    of the key records published once it stopped."""
    client, namespace = etcd
    restored_before = restored_states()
    started = ring(folder, data_stores.etcd_access(), namespace, Clock(), copies=copies)
    try:
        await started.sync()
        assert await rotation_state(client, namespace) == kept.numbered((kept.generation or 0) + 1)
        assert restored_states() == restored_before + 1
        kid = started.kid
    finally:
        await started.close()
    return kid, await record_names(client, namespace)


async def synced_once(replica: SigningKeyRing) -> None:
    """A replica that syncs once (publishing its folder, keeping the copy) and stops."""
    try:
        await replica.sync()
    finally:
        await replica.close()


async def test_a_withdrawal_is_copied_at_once_and_survives_etcd_losing_its_data_right_after(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    tmp_path: Path,
    copies: RotationStateCopies,
) -> None:
    """`gatehouse keys withdraw` writes the copy itself. Left to the replicas' next key sync,
    an etcd emptied before that sync lost the withdrawal: a replica started then wrote back the
    copy of before it, and published the leaked key again (its file not yet out of the
    Secret)."""
    client, namespace = etcd
    clock = Clock()
    folder, signing_kid, stray_kid = folder_of_two(tmp_path / "keys")
    await synced_once(ring(folder, data_stores.etcd_access(), namespace, clock, copies=copies))
    steps = rotation(client, namespace, clock, copies)
    await steps.withdraw(stray_kid)
    assert steps.copy_not_written == []
    kept = await copies.read(f"{namespace}rotation/")
    assert kept == await rotation_state(client, namespace)
    assert kept is not None and kept.state_of(stray_kid) == RETIRED
    await client.delete_prefix(namespace.encode())
    assert await started_after_the_loss(data_stores, etcd, folder, copies, kept) == (
        signing_kid,
        {signing_kid},
    )


async def test_a_change_whose_copy_cannot_be_written_stands_in_etcd_and_says_so(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    tmp_path: Path,
    unreachable_primary: Database,
) -> None:
    client, namespace = etcd
    clock = Clock()
    folder, _, stray_kid = folder_of_two(tmp_path / "keys")
    await synced_once(ring(folder, data_stores.etcd_access(), namespace, clock))
    steps = rotation(client, namespace, clock, RotationStateCopies(unreachable_primary))
    # The key's records go whatever the copy does: its trust ends first.
    assert (await steps.withdraw(stray_kid)).records == [stray_kid]
    assert (await rotation_state(client, namespace)).state_of(stray_kid) == RETIRED
    (reason,) = steps.copy_not_written
    assert reason.startswith("DatabaseError: MySQL primary ") and reason.endswith(
        f"the auth replicas copy the state at their first key sync once the primary answers"
        f" (every {POLL_INTERVAL:g} s)"
    ), reason


async def test_a_change_behind_the_copy_says_the_replicas_will_write_the_copy_back(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    tmp_path: Path,
    copies: RotationStateCopies,
) -> None:
    """etcd restored from an older snapshot, not yet corrected by a replica: the command's
    change is numbered below the copy, which keeps its own; the command says what follows."""
    client, namespace = etcd
    clock = Clock()
    folder, _, stray_kid = folder_of_two(tmp_path / "keys")
    await synced_once(ring(folder, data_stores.etcd_access(), namespace, clock, copies=copies))
    prefix = f"{namespace}rotation/"
    later = await copies.read(prefix)
    assert later is not None and later.generation is not None
    later = later.numbered(later.generation + 5)
    assert await copies.save(prefix, later)
    steps = rotation(client, namespace, clock, copies)
    await steps.withdraw(stray_kid)
    assert await copies.read(prefix) == later
    (reason,) = steps.copy_not_written
    assert reason.startswith("the copy holds a later state than etcd did"), reason


@pytest.mark.parametrize("snapshot_generation", ["numbered", "none"])
async def test_an_etcd_restored_from_an_older_snapshot_gets_the_newer_state_of_the_copy(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    tmp_path: Path,
    copies: RotationStateCopies,
    snapshot_generation: str,
) -> None:
    """A key withdrawn after the snapshot (leaked: its file left the Secret) came back with
    the snapshot's records and state, verify-only and trusted again. A snapshot from before the
    generation ("none") has no generation to compare: the copy's retirements still hold."""
    client, namespace = etcd
    clock = Clock()
    folder, signing_kid, stray_kid = folder_of_two(tmp_path / "keys")
    replica = ring(folder, data_stores.etcd_access(), namespace, clock, copies=copies)
    try:
        await replica.sync()
        snapshot = [(kv.key, kv.value) for kv in await client.get_prefix(namespace.encode())]
        await rotation(client, namespace, clock).withdraw(stray_kid)
        (folder / "key-2.pem").unlink()
        await replica.sync()  # copies the withdrawal
        kept = await copies.read(f"{namespace}rotation/")
        assert kept is not None and kept.state_of(stray_kid) == "retired"
    finally:
        await replica.close()
    await client.delete_prefix(namespace.encode())
    state_key = f"{namespace}rotation/state".encode()
    for key, value in snapshot:
        if key == state_key and snapshot_generation == "none":
            await client.put(key, RotationState(RotationState.from_json(value).keys).to_json())
        else:
            await client.put(key, value)
    assert stray_kid in await record_names(client, namespace)
    assert await started_after_the_loss(data_stores, etcd, folder, copies, kept) == (
        signing_kid,
        {signing_kid},
    )


async def test_a_state_an_older_release_wrote_is_kept_and_numbered_after_the_copy(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    tmp_path: Path,
    copies: RotationStateCopies,
) -> None:
    """During a rolling upgrade a replica of the release before writes the state without a
    generation: its change stands (it is no older state to overwrite) and takes the next one."""
    client, namespace = etcd
    clock = Clock()
    folder, _, stray_kid = folder_of_two(tmp_path / "keys")
    replica = ring(folder, data_stores.etcd_access(), namespace, clock, copies=copies)
    try:
        await replica.sync()
        before = await rotation_state(client, namespace)
        assert before.generation is not None
        older_release = RotationState(
            before.with_keys({stray_kid: KeyEntry(RETIRED, clock())}).keys
        )
        await client.put(f"{namespace}rotation/state".encode(), older_release.to_json())
        await replica.sync()
        state = await rotation_state(client, namespace)
        assert state == older_release.numbered(before.generation + 1)
        assert await copies.read(f"{namespace}rotation/") == state
        assert stray_kid not in await record_names(client, namespace)
    finally:
        await replica.close()


async def test_no_state_is_started_while_etcd_has_none_and_the_copy_cannot_be_read(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    tmp_path: Path,
    copies: RotationStateCopies,
    unreachable_primary: Database,
) -> None:
    """A primary out of reach while etcd is empty: a fresh state could make a retired key sign,
    so the replica waits (its start retries) until the copy can be read."""
    client, namespace = etcd
    folder = folder_with(tmp_path / "keys", generate_private_key_pem())
    cut_off = ring(
        folder,
        data_stores.etcd_access(),
        namespace,
        Clock(),
        copies=RotationStateCopies(unreachable_primary),
    )
    reachable = ring(folder, data_stores.etcd_access(), namespace, Clock(), copies=copies)
    try:
        with pytest.raises(CopyUnreadable):
            await cut_off.sync()
        assert (await read_state(client, f"{namespace}rotation/")).revision == 0
        await reachable.sync()  # no copy at all: a new install starts the state
        assert (await rotation_state(client, namespace)).signing_kid == reachable.kid
        await cut_off.sync()  # with a state in etcd, the copy is not needed
        assert cut_off.kid == reachable.kid
    finally:
        await cut_off.close()
        await reachable.close()


async def test_the_copy_only_moves_to_a_later_generation_and_keeps_each_prefix_apart(
    copies: RotationStateCopies,
) -> None:
    prefix, other = f"/copy-{uuid.uuid4().hex}/", f"/copy-{uuid.uuid4().hex}/"
    entry = KeyEntry("signing", 1.0)
    third = RotationState({"a": entry}, 3)
    assert await copies.read(prefix) is None
    assert await copies.save(prefix, third)
    assert await copies.save(prefix, third)  # again: the copy holds it
    assert not await copies.save(prefix, RotationState({"b": entry}, 2))  # an older read
    assert not await copies.save(prefix, RotationState({"b": entry}, 3))  # another branch
    assert await copies.read(prefix) == third
    fourth = RotationState({"c": entry}, 4)
    assert await copies.save(prefix, fourth)
    assert await copies.read(prefix) == fourth
    assert await copies.read(other) is None
    with pytest.raises(ValueError, match="versioned"):
        await copies.save(other, RotationState({"a": entry}))


def test_every_change_numbers_the_state_and_a_generation_that_counts_nothing_is_malformed() -> None:
    state = EMPTY.started_signing("a", 1.0).numbered(1)
    assert state.waiting("b", 2.0).generation == 2
    assert RotationState.from_json(state.to_json()) == state
    written_before = RotationState.from_json(b'{"keys": {"a": {"state": "signing", "since": 1}}}')
    assert written_before.generation is None
    # A change to a state without generation (the CLI on what an older release wrote) stays
    # without, for a replica to number after the copy: counted from 1, it looked older.
    assert written_before.with_keys({}).generation is None
    assert EMPTY.started_signing("a", 1.0).generation is None
    assert b"generation" not in written_before.to_json()
    for value in ("-1", '"7"', "true", "1.5", str(2**53), "[]"):
        with pytest.raises(MalformedState, match="generation"):
            RotationState.from_json(b'{"generation": %s, "keys": {}}' % value.encode())


async def test_a_signer_the_copy_retired_with_no_trusted_state_known_gives_way_to_another_key(
    data_stores: DataStores,
    etcd: tuple[aetcd.Client, str],
    tmp_path: Path,
    copies: RotationStateCopies,
) -> None:
    """etcd signs with K, which the copy lists as retired; the copy signs with N, which etcd
    lists as retired (withdrawn on a restored etcd): nothing known signs with a trusted key.
    K is retired, and the folder's other key signs, never K again."""
    client, namespace = etcd
    folder, k_kid, l_kid = folder_of_two(tmp_path / "keys")
    since = KeyEntry(SIGNING, time.time())
    await client.put(
        f"{namespace}rotation/state".encode(),
        RotationState({k_kid: since, "N": KeyEntry(RETIRED, 1.0)}, 6).to_json(),
    )
    await copies.save(
        f"{namespace}rotation/", RotationState({"N": since, k_kid: KeyEntry(RETIRED, 2.0)}, 7)
    )
    replica = ring(folder, data_stores.etcd_access(), namespace, Clock(), copies=copies)
    try:
        await asyncio.wait_for(replica.sync(), 20.0)
        state = await rotation_state(client, namespace)
        assert (state.signing_kid, state.state_of(k_kid), replica.kid) == (l_kid, RETIRED, l_kid)
        assert await record_names(client, namespace) == {l_kid}
    finally:
        await replica.close()
