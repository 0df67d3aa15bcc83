"""The keys one auth replica signs with, kept in step with its key folder and the rotation state.

Each `sync()` (every GATEHOUSE_JWT_KEYS_POLL_INTERVAL, and until it first succeeds at start):
1. re-reads the key source (sources.py);
2. reads the rotation state, and the replicas' copy of it in MySQL. When etcd holds none
   (emptied), it writes back the copy, or else the one it last read; when etcd holds an older
   generation than the copy (restored from an older snapshot), the copy. Started afresh, the
   state could make a retired key sign again, or publish a withdrawn one.
   A key the copy or its last read lists as retired is retired again in any state etcd holds
   (`corrected`). With none known anywhere it starts one: the held key already published
   signs (an upgrade keeps its key), else the first by file name; while the copy cannot be
   read, it starts none and tries again. A state an older release wrote (no generation) is
   numbered after the newest generation known;
3. publishes the public key of every held key the state does not list as retired (a new key
   is verify-only until `gatehouse keys rotate` switches to it: that is rotation's step 1),
   each put conditioned on the state's revision, so it never lands after a retirement;
4. retires every retiring key whose time has come: the state says retired (whichever replica
   writes it first; the others read it), then the records of every retired key are deleted,
   as read after that write (a put that came before it is among them, none can come after);
5. keeps the state in the MySQL copy when it is newer than the copy's (a failure is logged
   once, counted, and tried again at the next sync);
6. picks the key to sign with: the state's signing key if held, else the retiring key that
   signed last (this replica's folder lags the Secret), whose tokens then expire by its retire
   time, so no token outlives its key's publication; else the key it signs with already, held
   in memory (its file left the folder), logged as an error. A running replica never turns to
   a verify-only key: only `gatehouse keys rotate` makes one sign, after the propagation delay;
   one that starts without any other does, rather than not serve (logged as an error).

Between two syncs the replica signs as the state it last read says. A switch made just after
that read retires the key it signs with at (read time + poll interval + token TTL + margin) at
the earliest, so tokens never expire later than that: when syncs keep failing (etcd away) the
replica's tokens get shorter rather than outlive their key's records.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aetcd

from services.auth import metrics
from services.auth.signing.etcd_records import (
    StoredState,
    publish_under_state,
    published_records,
    read_state,
    record_public_key,
    replace_state,
    withdraw,
)
from services.auth.signing.records import KeyRecords
from services.auth.signing.sources import KeySource
from services.auth.signing.state import (
    RETIRE_MARGIN_SECONDS,
    RETIRED,
    RETIRING,
    STATES,
    VERIFIER_LEEWAY_SECONDS,
    VERIFY_ONLY,
    RotationState,
    StateCopies,
)
from services.auth.tokens import IssuedToken, TokenIssuer
from services.foundation.etcd import close_quietly, connect, describe_etcd_error
from services.foundation.etcd_access import EtcdTarget
from services.foundation.logs import describe_error

log = logging.getLogger(__name__)

COPY_SOURCE = "the copy in MySQL"
MEMORY_SOURCE = "the state this replica last read"


class IssuesTokens(Protocol):
    @property
    def kid(self) -> str | None: ...

    def issue(self, user_id: int, session_id: str) -> IssuedToken: ...


class NoSigningKey(RuntimeError):
    """Every held key is retired: the key folder must get the signing key."""


class CopyUnreadable(RuntimeError):
    """etcd holds no rotation state and its copy in MySQL cannot be read: none is started."""


class SigningKeyRing:
    def __init__(
        self,
        source: KeySource,
        *,
        endpoints: EtcdTarget,
        keys_prefix: str,
        rotation_prefix: str,
        token_ttl: int,
        poll_interval: float,
        issuer: str,
        audience: str,
        records: KeyRecords | None = None,
        copies: StateCopies | None = None,
        clock: Callable[[], float] = time.time,
        connect_etcd: Callable[[EtcdTarget, int], aetcd.Client] = connect,
    ) -> None:
        self._source = source
        self._copies = copies
        self._records = records or KeyRecords(None)
        self._connect_etcd = connect_etcd
        self._endpoints = endpoints
        self._keys_prefix = keys_prefix
        self._rotation_prefix = rotation_prefix
        self._token_ttl = token_ttl
        self._poll_interval = poll_interval
        self._issuer_name = issuer
        self._audience = audience
        self._clock = clock
        self._issuers = self._build_issuers()
        self._client: aetcd.Client | None = None
        self._attempt = 0
        self._signer: TokenIssuer | None = None
        self._expires_by: float | None = None
        self._failing = False
        self._fallback = False
        self._synced = False  # a sync has succeeded: the periodic steps take over
        # The signing key the key folder was last found without (logged once per key).
        self._missing_logged: str | None = None
        # The state this replica last read, written back should etcd lose it (emptied and
        # restored from nothing): a state started afresh could make a retired key sign again.
        self._last_state: RotationState | None = None
        self._copy_failing = False  # the last read or save of the MySQL copy failed

    @property
    def kid(self) -> str | None:
        """The kid new tokens carry; None until the first sync succeeded."""
        return self._signer.kid if self._signer is not None else None

    def issue(self, user_id: int, session_id: str) -> IssuedToken:
        if self._signer is None:
            raise NoSigningKey("no signing key chosen yet")  # AUTHENTICATE refuses before this
        return self._signer.issue(user_id, session_id, expires_by=self._expires_by)

    async def step(self) -> None:
        """`sync()` for the periodic loop, once the replica's start has synced (until then it
        is the start's): a failure leaves the current keys in use, logged once per streak."""
        if not self._synced:
            return
        try:
            await self.sync()
        except NoSigningKey:
            return  # said once where it was found; AUTHENTICATE answers not_ready meanwhile
        except Exception as exc:  # noqa: BLE001 - etcd away: keep signing as before
            if not self._failing:
                log.warning(
                    "could not sync the signing keys with etcd (%s); signing on with %s",
                    describe_etcd_error(exc),
                    self.kid,
                )
            self._failing = True
            await self._drop_client()
        else:
            if self._failing:
                log.info("signing keys in sync with etcd again")
            self._failing = False

    async def sync(self) -> None:
        if self._source.reread():
            self._issuers = self._build_issuers()
        if self._client is None:
            self._client = self._connect_etcd(self._endpoints, self._attempt)
            self._attempt += 1
        client = self._client
        read_at = self._clock()
        copy, copy_read = await self._read_copy()
        stored = await self._current_state(client, copy, copy_read)
        stored, records = await self._publish_held(client, stored)
        if not self._source.rotates:
            stored = await self._switch_to_the_fixed_key(client, stored)
        state = await self._retire_due(client, stored, records)
        await self._keep_copy(state, copy, copy_read)
        self._choose_signer(state, read_at)
        self._export(state)
        self._last_state = state
        self._synced = True

    async def close(self) -> None:
        await self._drop_client()

    def _build_issuers(self) -> dict[str, TokenIssuer]:
        return {
            kid: TokenIssuer(
                key.private_key, self._token_ttl, issuer=self._issuer_name, audience=self._audience
            )
            for kid, key in self._source.keys.items()
        }

    async def _current_state(
        self, client: aetcd.Client, copy: RotationState | None, copy_read: bool
    ) -> StoredState:
        """The stored state, corrected from what this replica knows when etcd lost it or went
        back (`corrected`); one is started when there is none anywhere (racing replicas: one
        wins, the others read it)."""
        while True:
            stored = await read_state(client, self._rotation_prefix)
            correction = corrected(stored, copy, copy_read, self._last_state)
            if correction is not None:
                if await replace_state(
                    client, self._rotation_prefix, correction.state, stored.revision
                ):
                    _report(stored, correction)
                continue  # changed meanwhile, or written: read again
            if stored.state.signing_kid is not None or not self._issuers:
                return stored
            if stored.revision == 0 and not copy_read:
                raise CopyUnreadable(
                    "the rotation state is not in etcd and its copy in MySQL cannot be read:"
                    " not starting a fresh one, which could make a retired key sign again"
                )
            first = await self._first_signer(client, stored.state)
            started = stored.state.started_signing(first, self._clock())
            if await replace_state(client, self._rotation_prefix, started, stored.revision):
                log.info("rotation state started: %s signs", first)

    async def _read_copy(self) -> tuple[RotationState | None, bool]:
        """The MySQL copy, and whether it could be read (with none kept: None, True)."""
        if self._copies is None:
            return None, True
        try:
            return await self._copies.read(self._rotation_prefix), True
        except Exception as exc:  # noqa: BLE001 - a primary outage: go on with etcd alone
            self._copy_failed("read", exc)
            return None, False

    async def _keep_copy(
        self, state: RotationState, copy: RotationState | None, copy_read: bool
    ) -> None:
        if self._copies is None or state.generation is None:
            return
        if copy_read and not state.newer_than(copy):
            self._copy_recovered()
            return
        try:
            await self._copies.save(self._rotation_prefix, state)
        except Exception as exc:  # noqa: BLE001 - tried again at the next sync
            self._copy_failed("keep", exc)
        else:
            if copy_read:
                self._copy_recovered()

    def _copy_failed(self, what: str, exc: Exception) -> None:
        metrics.ROTATION_STATE_COPY_FAILURES.inc()
        if not self._copy_failing:
            log.warning(
                "could not %s the rotation state's copy in MySQL (%s); trying again at every"
                " key sync",
                what,
                describe_error(exc),
            )
        self._copy_failing = True

    def _copy_recovered(self) -> None:
        if self._copy_failing:
            log.info("the rotation state's copy in MySQL is in step again")
        self._copy_failing = False

    async def _first_signer(self, client: aetcd.Client, state: RotationState) -> str:
        """The held key to sign with in a state without signer: one already published, else
        the first by file name; never one the state lists as retired."""
        records = await published_records(client, self._keys_prefix)
        published_pems = {record_public_key(record) for record in records.values()}
        held = sorted(
            (kid for kid in self._issuers if state.published(kid)),
            key=lambda kid: self._source.keys[kid].file_name,
        )
        if not held:
            raise NoSigningKey(
                "the rotation state has no signing key and lists every key of the key folder as"
                " retired: put a new key in the key folder"
            )
        already = [kid for kid in held if _pem(self._issuers[kid]) in published_pems]
        return (already or held)[0]

    async def _publish_held(
        self, client: aetcd.Client, stored: StoredState
    ) -> tuple[StoredState, dict[str, bytes]]:
        """The state the held keys were published under, and the records then."""
        while True:
            records = await published_records(client, self._keys_prefix)
            missing = [
                (kid, issuer)
                for kid, issuer in self._issuers.items()
                if stored.state.published(kid) and self._records.outdated(records.get(kid), issuer)
            ]
            for kid, issuer in missing:
                record = self._records.record(issuer)
                if not await publish_under_state(
                    client, self._keys_prefix, self._rotation_prefix, kid, record, stored.revision
                ):
                    break
                log.info("published the public key of %s (%s)", kid, stored.state.state_of(kid))
            else:
                return stored, records
            stored = await read_state(client, self._rotation_prefix)

    async def _switch_to_the_fixed_key(
        self, client: aetcd.Client, stored: StoredState
    ) -> StoredState:
        """GATEHOUSE_JWT_PRIVATE_KEY changed by a restart: its key, published and never signing
        before, signs from now on, and the one that signed retires once its tokens expire (a
        replica still holding that one signs with it, retiring, meanwhile)."""
        (kid,) = self._issuers
        while stored.state.signing_kid != kid and stored.state.state_of(kid) == VERIFY_ONLY:
            old = stored.state.signing_kid
            switched = stored.state.switched_to(
                kid, self._clock(), self._token_ttl, self._poll_interval
            )
            if await replace_state(client, self._rotation_prefix, switched, stored.revision):
                log.warning(
                    "GATEHOUSE_JWT_PRIVATE_KEY holds another key than the one that signed (%s):"
                    " %s signs from now on, and %s retires once its tokens have expired",
                    old,
                    kid,
                    old,
                )
            stored = await read_state(client, self._rotation_prefix)
        return stored

    async def _retire_due(
        self, client: aetcd.Client, stored: StoredState, records: dict[str, bytes]
    ) -> RotationState:
        state, retiring_seen = stored.state, False
        while due := state.due_for_retirement(self._clock()):
            retiring_seen = True
            retired = state.retired(due, self._clock())
            if await replace_state(client, self._rotation_prefix, retired, stored.revision):
                state = retired
                break
            stored = await read_state(client, self._rotation_prefix)
            state = stored.state
        if retiring_seen:  # `records` may predate a put made under the state before it
            records = await published_records(client, self._keys_prefix)
        for kid in [kid for kid in state.keys if not state.published(kid)]:
            names = await withdraw(client, self._keys_prefix, kid, records)
            if names:
                log.info("retired key %s: withdrew its records %s", kid, ", ".join(names))
        return state

    def _choose_signer(self, state: RotationState, read_at: float) -> None:
        wanted = state.signing_kid
        chosen, expires_by = None, None
        if wanted is not None and wanted in self._issuers:
            chosen = wanted
        else:
            retiring = sorted(
                (entry.since, kid)
                for kid, entry in state.keys.items()
                if entry.state == RETIRING and kid in self._issuers
            )
            if retiring:
                chosen = retiring[-1][1]
                expires_by = state.keys[chosen].retire_at
        if chosen is None:
            # A verify-only key would sign before the propagation delay of `gatehouse keys
            # rotate` had passed, while JWKS caches may still lack it: only at start.
            self._sign_with_the_key_in_memory(state, wanted, read_at)
            return
        if self._missing_logged is not None:
            log.info("the key folder holds a key to sign with again")
            self._missing_logged = None
        previous = self.kid
        self._signer = self._issuers[chosen]
        horizon = self._state_horizon(read_at)
        self._expires_by = horizon if expires_by is None else min(expires_by, horizon)
        fallback = chosen != wanted
        if chosen != previous or fallback != self._fallback:
            if not fallback:
                log.info("signing new tokens with %s", chosen)
            else:
                log.warning(
                    "the rotation state says %s signs, but this replica's key folder lacks it;"
                    " signing with %s meanwhile",
                    wanted,
                    chosen,
                )
        self._set_fallback(fallback)

    def _sign_with_the_key_in_memory(
        self, state: RotationState, wanted: str | None, read_at: float
    ) -> None:
        """The key folder holds neither the signing key nor a retiring one (a Secret update
        that replaced the signing key's file, or retired keys only). Running, sign on with the
        key in memory while it is published (logged once), and with none, or one retired
        (withdrawn: no verifier takes its tokens), sign nothing, so that logins go to the other
        replicas. Starting, with nothing in memory, sign with a published key of the folder
        rather than not serve at all, though it skips the propagation delay of a rotation
        (logged; gatehouse_auth_signing_with_fallback); with none, refuse (NoSigningKey)."""
        held = self._signer
        if held is not None and not state.published(held.kid):
            log.error(
                "%s, which this replica signed with, is retired: it signs no token until its key"
                " folder holds the signing key %s (logins go to other replicas meanwhile)",
                held.kid,
                wanted,
            )
            self._signer = held = None
            self._missing_logged = wanted
        if held is None and not self._synced:
            usable = sorted(kid for kid in self._issuers if state.published(kid))
            if usable:
                self._signer = held = self._issuers[usable[-1]]
        if held is None:
            raise NoSigningKey(
                f"the key folder holds neither the signing key {wanted} nor a retiring one: put"
                f" {wanted} in the key folder (a new key signs only through `gatehouse keys"
                " rotate`)"
            )
        if held.kid == wanted or self._expires_by is None:
            self._expires_by = self._state_horizon(read_at)  # as while it was in the folder
        self._set_fallback(held.kid != wanted)
        if self._missing_logged != wanted:
            log.error(
                "the key folder holds neither the signing key %s nor a retiring one; signing"
                " with %s%s: put %s back in the key folder, and rotate with `gatehouse keys"
                " rotate`",
                wanted,
                held.kid,
                ", held in memory (a replica that restarts cannot sign with it)"
                if self._synced
                else ", published but never made the signing key by a rotation (verifiers"
                " that cache the JWKS may not hold it yet)",
                wanted,
            )
            self._missing_logged = wanted

    def _state_horizon(self, read_at: float) -> float:
        """A switch made just after `read_at` retires the key signing now no earlier than this
        (module docstring): no token may end later, whatever a retiring key allows."""
        return (
            read_at
            + self._poll_interval
            + self._token_ttl
            + RETIRE_MARGIN_SECONDS
            - VERIFIER_LEEWAY_SECONDS
        )

    def _set_fallback(self, fallback: bool) -> None:
        self._fallback = fallback
        metrics.SIGNING_WITH_FALLBACK.set(int(fallback))

    def _export(self, state: RotationState) -> None:
        counts = dict.fromkeys(STATES, 0)
        for kid in self._issuers:
            counts[state.state_of(kid)] += 1
        for name, count in counts.items():
            metrics.SIGNING_KEYS.labels(name).set(count)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        await close_quietly(client)


@dataclass(frozen=True)
class Correction:
    """What to write in place of etcd's rotation state."""

    state: RotationState
    lost: str | None  # how etcd lost the newer state (a warning, counted); None: numbering only
    source: str = ""  # where the state written comes from


def corrected(
    stored: StoredState,
    copy: RotationState | None,
    copy_read: bool,
    memory: RotationState | None,
) -> Correction | None:
    """What etcd's state must become, given the MySQL copy and the state this replica last
    read (`memory`), or None when it stands. A retirement is final (no step un-retires a key),
    so a state that signs with a key any of them lists as retired is never written back, and
    whatever is written carries every retirement known. The copy is preferred to memory: every
    replica reads the same copy, while a replica's last read can be a branch that etcd (written
    back from a copy one change behind, or restored and changed since) has moved on from.
    - none in etcd: the copy, else memory;
    - an older generation than the copy (etcd restored from an older snapshot): the copy;
    - a state that signs with a retired key: the copy, else memory; with neither signing with
      a key nobody retired, etcd's own with its signer retired (the caller picks another);
    - a key retired elsewhere, not retired in etcd (a snapshot from before the generation, a
      change made since on a restored etcd): retired again;
    - as high a generation as the copy but other keys (a branch: etcd restored, then changed
      while the copy could not be read): kept, numbered past the copy, so the copy follows it;
    - no generation (a release before it wrote it): numbered, once the copy could be read.
    Every state written is numbered after every generation known."""
    current = stored.state
    known = [state for state in (copy, memory) if state is not None]
    states = [current, *known] if stored.revision else known
    following = max([current.generation or 0, *(state.generation or 0 for state in known)]) + 1
    retired = {
        kid for state in states for kid, entry in state.keys.items() if entry.state == RETIRED
    }
    candidates = [
        (state, source)
        for state, source in ((copy, COPY_SOURCE), (memory, MEMORY_SOURCE))
        if state is not None and state.signing_kid is not None and state.signing_kid not in retired
    ]

    def back(state: RotationState, source: str, lost: str) -> Correction:
        return Correction(state.retired_as_in(*states).numbered(following), lost, source)

    if stored.revision == 0:
        if not candidates:
            return None  # the caller starts one, or not
        first, source = candidates[0]
        return back(first, source, "held no rotation state")
    usable_copy = next((state for state, _ in candidates if state is copy), None)
    versioned = current.generation is not None
    if versioned and usable_copy is not None and usable_copy.newer_than(current):
        return back(usable_copy, COPY_SOURCE, "held an older generation than the copy")
    signer = current.signing_kid
    if signer is not None and signer in retired:
        if candidates:
            replacement, source = candidates[0]
            return back(replacement, source, f"signed with {signer}, a retired key")
        # No state known signs with a key nobody retired: the signer is retired too (it may
        # have leaked), and a published key of the folder signs next, as in a fresh state.
        retirement = next(
            state.keys[signer] for state in known if state.state_of(signer) == RETIRED
        )
        keys = {**current.retired_as_in(*known).keys, signer: retirement}
        return Correction(
            RotationState(keys).numbered(following),
            f"signed with {signer}, a retired key, and no state known signs with another",
            "its own state, with its signer retired: another published key signs",
        )
    merged = current.retired_as_in(*known)
    if merged is not current:
        names = sorted(kid for kid, entry in merged.keys.items() if current.keys.get(kid) != entry)
        return Correction(
            merged.numbered(following),
            f"listed {', '.join(names)} as not retired",
            "its own state, with those retired again",
        )
    if versioned and copy is not None and not current.newer_than(copy) and current != copy:
        return Correction(
            current.numbered(following),
            f"held generation {current.generation} beside the copy's {copy.generation}, with"
            " other keys (restored, then changed)",
            "its own state, numbered past the copy",
        )
    if current.generation is None and copy_read:
        return Correction(current.numbered(following), None)
    return None


def _report(stored: StoredState, correction: Correction) -> None:
    state = correction.state
    if correction.lost is None:
        log.info(
            "numbered the rotation state a release before the generation wrote: generation %s",
            state.generation,
        )
        return
    metrics.ROTATION_STATE_RESTORED.inc()
    log.warning(
        "etcd %s (generation %s); wrote back generation %s from %s (%s signs), so no retired"
        " or withdrawn key signs or is published again",
        correction.lost,
        stored.state.generation if stored.revision else "none",
        state.generation,
        correction.source,
        state.signing_kid,
    )


def _pem(issuer: TokenIssuer) -> str:
    pem: str = json.loads(issuer.public_key_record()[1])["public_key"]
    return pem
