"""The rotation state: which kid signs, which are verify-only, retiring or retired.

One JSON document in etcd (`<GATEHOUSE_JWT_ROTATION_PREFIX>state`), changed only by etcd
transactions that compare its mod revision (etcd_records.py), so two writers never both win:

    {"generation": 7,
     "keys": {"<kid>": {"state": "signing", "since": 1764800000.0},
              "<kid>": {"state": "retiring", "since": ..., "retire_at": ...}, ...}}

Every change to a numbered state adds one to its generation, so that a state etcd lost or
went back on (a restore from an older snapshot) is told from a newer one the replicas hold (in
memory, or in their copy in MySQL: ring.py). Releases before the generation wrote none
("unversioned"): a replica that reads such a document numbers it after the newest generation
it knows.

A key in a key folder that the state does not name is verify-only ("next"): published, not
signing. `gatehouse keys rotate` names it verify-only (with the time its wait began), then
makes it the signer and the old signer retiring; the replicas retire it when due.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

SIGNING = "signing"
VERIFY_ONLY = "verify-only"
RETIRING = "retiring"
RETIRED = "retired"
STATES = (SIGNING, VERIFY_ONLY, RETIRING, RETIRED)
# Seconds added to the token lifetime before a retiring key goes: the HTTP tier accepts a
# token up to 5 s past its expiry (clock skew), and hosts' clocks differ a little.
RETIRE_MARGIN_SECONDS = 15.0
# How long past its `exp` the HTTP tier still accepts a token (services.http.tokens'
# CLOCK_SKEW_SECONDS): a replica's tokens end this much before the earliest retire time.
VERIFIER_LEEWAY_SECONDS = 5.0
# Entries kept: retired ones beyond it are dropped, oldest first (a retired key's file should
# have left the Secret long before).
MAX_ENTRIES = 64
MAX_DOCUMENT_BYTES = 64 * 1024
# Past this, a generation is no count of changes but a document written by hand.
MAX_GENERATION = 2**53


class MalformedState(ValueError):
    """The stored document is not a rotation state (written by hand?)."""


@dataclass(frozen=True)
class KeyEntry:
    state: str
    since: float  # Unix seconds: when the key entered this state
    retire_at: float | None = None  # retiring keys: when their publication ends


@dataclass(frozen=True)
class RotationState:
    keys: Mapping[str, KeyEntry]
    generation: int | None = None  # None: written by a release before the generation

    def newer_than(self, other: RotationState | None) -> bool:
        """Later in the history of changes than `other` (an unversioned state is older than
        any versioned one)."""
        if other is None:
            return True
        return (self.generation or 0) > (other.generation or 0)

    def numbered(self, generation: int) -> RotationState:
        return RotationState(self.keys, generation)

    def retired_as_in(self, *others: RotationState | None) -> RotationState:
        """This state with every key that one of `others` lists as retired retired here too,
        but for its own signing key: no step makes a retired key sign or be published again,
        so a state that does not say so is older than that retirement. The same object when
        nothing changes (its generation is the caller's to set)."""
        signer = self.signing_kid
        changes: dict[str, KeyEntry] = {}
        for other in others:
            for kid, entry in other.keys.items() if other is not None else ():
                if entry.state == RETIRED and kid != signer and self.state_of(kid) != RETIRED:
                    changes.setdefault(kid, entry)
        if not changes:
            return self
        merged = _pruned({**self.keys, **changes})
        return self if merged == self.keys else RotationState(merged, self.generation)

    @property
    def signing_kid(self) -> str | None:
        return next((kid for kid, entry in self.keys.items() if entry.state == SIGNING), None)

    def state_of(self, kid: str) -> str:
        entry = self.keys.get(kid)
        return VERIFY_ONLY if entry is None else entry.state

    def published(self, kid: str) -> bool:
        return self.state_of(kid) != RETIRED

    def due_for_retirement(self, now: float) -> list[str]:
        return [
            kid
            for kid, entry in self.keys.items()
            if entry.state == RETIRING and entry.retire_at is not None and entry.retire_at <= now
        ]

    def with_keys(self, changes: Mapping[str, KeyEntry]) -> RotationState:
        """The state changed, one generation on; a state without generation stays without (a
        replica numbers it after the newest generation it knows: counted from 1 here, a change
        made on a state an older release wrote would look older than the copy)."""
        generation = None if self.generation is None else self.generation + 1
        return RotationState(_pruned({**self.keys, **changes}), generation)

    def started_signing(self, kid: str, now: float) -> RotationState:
        """The first state: `kid` signs (nothing signed before)."""
        return self.with_keys({kid: KeyEntry(SIGNING, now)})

    def waiting(self, kid: str, now: float) -> RotationState:
        """`kid` named verify-only from `now` (the start of rotation's wait)."""
        return self.with_keys({kid: KeyEntry(VERIFY_ONLY, now)})

    def switched_to(
        self, kid: str, now: float, token_ttl: float, signer_lag: float
    ) -> RotationState:
        """`kid` signs from `now`; the old signer retires once its last token has expired. A
        replica reads the state every `signer_lag` seconds (GATEHOUSE_JWT_KEYS_POLL_INTERVAL)
        and signs with the old key until it sees the switch, so its last token expires up to
        that much later than one signed right now."""
        changes = {kid: KeyEntry(SIGNING, now)}
        old = self.signing_kid
        if old is not None and old != kid:
            retire_at = now + signer_lag + token_ttl + RETIRE_MARGIN_SECONDS
            changes[old] = KeyEntry(RETIRING, now, retire_at)
        return self.with_keys(changes)

    def retired(self, kids: Iterable[str], now: float) -> RotationState:
        return self.with_keys(
            {kid: replace(self.keys[kid], state=RETIRED, since=now) for kid in kids}
        )

    def to_json(self) -> bytes:
        document: dict[str, Any] = {
            "keys": {
                kid: {
                    "state": entry.state,
                    "since": entry.since,
                    **({"retire_at": entry.retire_at} if entry.retire_at is not None else {}),
                }
                for kid, entry in sorted(self.keys.items())
            }
        }
        if self.generation is not None:
            document["generation"] = self.generation
        return json.dumps(document, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RotationState:
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise MalformedState(f"over {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(raw)
            keys = {str(kid): _entry(fields) for kid, fields in document["keys"].items()}
            generation = _generation(document.get("generation"))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise MalformedState(f"not a rotation state document ({exc})") from None
        if sum(entry.state == SIGNING for entry in keys.values()) > 1:
            raise MalformedState("more than one key is signing")
        return cls(keys, generation)


EMPTY = RotationState({})


def _entry(fields: Any) -> KeyEntry:
    state, since, retire_at = fields["state"], fields["since"], fields.get("retire_at")
    if state not in STATES:
        raise ValueError(f"unknown key state {state!r}")
    if retire_at is None and state == RETIRING:
        raise ValueError("a retiring key without retire_at")
    return KeyEntry(state, _moment(since), None if retire_at is None else _moment(retire_at))


def _moment(value: Any) -> float:
    """A time of the document: a finite number (float() of 10**400 raises OverflowError, and
    NaN would never come)."""
    try:
        moment = float(value)
    except OverflowError:
        raise ValueError(f"a time out of range: {str(value)[:40]}") from None
    if not math.isfinite(moment):
        raise ValueError(f"a time that is no number: {value!r}")
    return moment


def _generation(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < MAX_GENERATION:
        raise ValueError(f"the generation is {value!r}, not a count of changes")
    return value


def _pruned(keys: dict[str, KeyEntry]) -> dict[str, KeyEntry]:
    retired = sorted((entry.since, kid) for kid, entry in keys.items() if entry.state == RETIRED)
    for _, kid in retired[: max(0, len(keys) - MAX_ENTRIES)]:
        del keys[kid]
    return keys


class StateCopies(Protocol):
    """Where the replicas keep their copy of the rotation state (services/auth/store/
    rotation_copy.py), which `gatehouse keys` writes too."""

    async def read(self, rotation_prefix: str) -> RotationState | None: ...

    async def save(self, rotation_prefix: str, state: RotationState) -> bool: ...
