"""`gatehouse keys rotate`'s steps 1-3, apart from the command line (services/cli/keys.py).

1. the next key (in the key folder, not yet in the state) is published and named verify-only,
   with the time its wait starts;
2. the propagation delay passes (every HTTP process and JWKS cache gets the key meanwhile);
3. one etcd transaction makes it the signing key and the old one retiring.
Step 4 (retirement) is the replicas' (ring.py). Every state change compares the document's mod
revision: of two rotations at once, one switches and the other is told it lost.

`gatehouse keys withdraw` ends a key that is not signing at once (`Rotation.withdraw`): one
put in the Secret by mistake, or leaked. The state says retired first, so no replica publishes
it again, then its records go; a retiring key only when asked, as its tokens are refused then.

Every state written goes to the replicas' copy in MySQL too (`copies`, ring.py): a withdrawal
must survive etcd losing its data right after it, before any replica's next key sync has
copied it. A withdrawal deletes the key's records first: a primary out of reach delays the
copy, not the end of the key's trust. A state not copied is said in `copy_not_written` (why,
in a sentence each); the change stands in etcd either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aetcd

from services.auth.signing.etcd_records import (
    StoredState,
    publish_under_state,
    published_records,
    read_state,
    record_kid,
    replace_state,
    withdraw,
)
from services.auth.signing.folder import FolderKey
from services.auth.signing.records import KeyRecords
from services.auth.signing.state import (
    RETIRED,
    RETIRING,
    VERIFY_ONLY,
    KeyEntry,
    RotationState,
    StateCopies,
)
from services.auth.tokens import TokenIssuer
from services.foundation.logs import describe_error

# A state write that keeps losing to replicas' writes (retirements) is tried this often.
MAX_STATE_ATTEMPTS = 5


class RotationRefused(Exception):
    """The rotation cannot start or finish; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    next_kid: str
    old_kid: str
    wait_began: float  # Unix seconds: since when the next key is published and verify-only


@dataclass(frozen=True)
class Switched:
    signing: str
    retiring: str
    retire_at: float


@dataclass(frozen=True)
class Withdrawn:
    kid: str
    was: str  # its state before: verify-only, retiring or retired
    records: list[str]  # the names deleted under the keys prefix


def next_key(stored: StoredState, folder: dict[str, FolderKey], wanted: str | None) -> str:
    """The folder's key to rotate to: the one not yet in use (or `wanted`)."""
    state = stored.state
    if state.signing_kid is None:
        raise RotationRefused(
            "no key signs yet (the rotation state is empty): start an auth replica first"
        )
    candidates = sorted(kid for kid in folder if state.state_of(kid) == VERIFY_ONLY)
    if wanted is not None:
        if wanted not in candidates:
            held = ", ".join(f"{kid} ({state.state_of(kid)})" for kid in sorted(folder))
            raise RotationRefused(f"{wanted} is not a next key in the key folder; it holds {held}")
        return wanted
    if not candidates:
        held = ", ".join(f"{kid} ({state.state_of(kid)})" for kid in sorted(folder))
        raise RotationRefused(
            f"no next key in the key folder (it holds {held}): put a new key in the Secret"
            " (`openssl genpkey -algorithm ed25519`), wait until this pod sees it"
            " (`gatehouse keys list`), then run this again"
        )
    if len(candidates) > 1:
        raise RotationRefused(
            f"more than one next key in the key folder ({', '.join(candidates)}): name one"
            " with --kid"
        )
    return candidates[0]


class Rotation:
    def __init__(
        self,
        client: aetcd.Client,
        *,
        keys_prefix: str,
        rotation_prefix: str,
        token_ttl: int,
        propagation_delay: float,
        replica_poll_interval: float,
        records: KeyRecords | None = None,
        copies: StateCopies | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._copies = copies
        self.copy_not_written: list[str] = []
        self._records = records or KeyRecords(None)
        self._keys_prefix = keys_prefix
        self._rotation_prefix = rotation_prefix
        self._token_ttl = token_ttl
        self._delay = propagation_delay
        self._replica_poll_interval = replica_poll_interval
        self._clock = clock

    async def publish_next(self, folder: dict[str, FolderKey], wanted: str | None) -> Plan:
        """Step 1."""
        for _ in range(MAX_STATE_ATTEMPTS):
            stored = await read_state(self._client, self._rotation_prefix)
            kid = next_key(stored, folder, wanted)
            old = stored.state.signing_kid
            assert old is not None, "next_key refuses an empty state"
            issuer = TokenIssuer(folder[kid].private_key, self._token_ttl)
            # Under the state read: a withdrawal (`withdraw`) in between makes it fail.
            if not await publish_under_state(
                self._client,
                self._keys_prefix,
                self._rotation_prefix,
                kid,
                self._records.record(issuer),
                stored.revision,
            ):
                continue
            entry = stored.state.keys.get(kid)
            if entry is not None:  # an earlier or concurrent rotate began the wait
                return Plan(kid, old, entry.since)
            now = self._clock()
            waiting = stored.state.waiting(kid, now)
            if await self._replace(waiting, stored.revision):
                return Plan(kid, old, now)
        raise RotationRefused("the rotation state kept changing under this command; run it again")

    def seconds_left(self, plan: Plan) -> float:
        return max(0.0, plan.wait_began + self._delay - self._clock())

    async def wait(self, plan: Plan, progress: Callable[[float], None], every: float) -> None:
        """Step 2: `progress(seconds left)` now and then, until the delay has passed."""
        while (left := self.seconds_left(plan)) > 0:
            progress(left)
            await asyncio.sleep(min(every, left))

    async def switch(self, plan: Plan) -> Switched:
        """Step 3."""
        for _ in range(MAX_STATE_ATTEMPTS):
            stored = await read_state(self._client, self._rotation_prefix)
            signing = stored.state.signing_kid
            if signing != plan.old_kid:
                raise RotationRefused(
                    f"another rotation switched signing to {signing} while this one waited;"
                    " nothing changed here (see `gatehouse keys list`)"
                )
            if stored.state.state_of(plan.next_kid) != VERIFY_ONLY:
                raise RotationRefused(
                    f"{plan.next_kid} is {stored.state.state_of(plan.next_kid)} now, no longer"
                    " verify-only; nothing changed here"
                )
            now = self._clock()
            switched = stored.state.switched_to(
                plan.next_kid, now, self._token_ttl, self._replica_poll_interval
            )
            if await self._replace(switched, stored.revision):
                retire_at = switched.keys[plan.old_kid].retire_at
                assert retire_at is not None
                return Switched(plan.next_kid, plan.old_kid, retire_at)
        raise RotationRefused("the rotation state kept changing under this command; run it again")

    async def withdraw(self, kid: str, *, end_its_tokens: bool = False) -> Withdrawn:
        """Retire `kid` now and delete its records: tokens it signed are refused from then on.
        Refused for the signing key, for a kid nobody knows, and for a retiring key unless
        `end_its_tokens` (its tokens would otherwise last until its retire time)."""
        for _ in range(MAX_STATE_ATTEMPTS):
            stored = await read_state(self._client, self._rotation_prefix)
            records = await published_records(self._client, self._keys_prefix)
            state = stored.state
            was = state.state_of(kid)
            known = kid in state.keys or any(
                record_kid(record) == kid for record in records.values()
            )
            if not known:
                raise RotationRefused(
                    f"no key {kid} is in the rotation state or published; see `gatehouse keys list`"
                )
            if kid == state.signing_kid:
                raise RotationRefused(
                    f"{kid} signs new tokens: rotate to another key first (`gatehouse keys"
                    " rotate`), then withdraw it"
                )
            if was == RETIRING and not end_its_tokens:
                raise RotationRefused(
                    f"{kid} is retiring: the tokens it signed stay valid until the auth replicas"
                    " withdraw it by themselves; --now withdraws it at once and refuses them"
                )
            retired = None
            if was != RETIRED:
                retired = state.with_keys({kid: KeyEntry(RETIRED, self._clock())})
                if not await replace_state(
                    self._client, self._rotation_prefix, retired, stored.revision
                ):
                    continue
                # Read again after the state's write: a replica's publication conditioned on
                # the state before it is among them, and none can come after.
                records = await published_records(self._client, self._keys_prefix)
            names = await withdraw(self._client, self._keys_prefix, kid, records)
            if retired is not None:
                await self._copy(retired)
            return Withdrawn(kid, was, names)
        raise RotationRefused("the rotation state kept changing under this command; run it again")

    async def _replace(self, state: RotationState, revision: int) -> bool:
        """`state` into etcd if the document is still at `revision`, then into the copy."""
        if not await replace_state(self._client, self._rotation_prefix, state, revision):
            return False
        await self._copy(state)
        return True

    async def _copy(self, state: RotationState) -> None:
        if self._copies is None:
            return
        if state.generation is None:
            self.copy_not_written.append(
                "etcd's state has no generation yet (a release before it wrote the state): the"
                " auth replicas number it and copy it at their next key sync"
            )
            return
        try:
            if await self._copies.save(self._rotation_prefix, state):
                return
            self.copy_not_written.append(
                "the copy holds a later state than etcd did (etcd restored from an older"
                " snapshot?): the auth replicas write that one back at their next key sync,"
                " keeping this change's retirements; check `gatehouse keys list` after it"
            )
        except Exception as exc:  # noqa: BLE001 - the change stands in etcd
            self.copy_not_written.append(
                f"{describe_error(exc)}: the auth replicas copy the state at their first key"
                f" sync once the primary answers (every {self._replica_poll_interval:g} s)"
            )
