"""The session tokens one HTTP worker has verified, so that a token seen again costs a dict
lookup instead of a signature check (~180 us).

- Keyed by the exact token string; a token enters only once its signature, claims, `iss` and
  `aud` passed (services.http.tokens decides; this module only keeps), and only when it has at
  most CACHED_TOKEN_MAX_CHARS characters: a longer one is verified on every use.
- At most GATEHOUSE_TOKEN_CACHE_SIZE entries; the oldest one makes room for a new one. A hit
  moves no entry (it costs a lookup and an int increment); a token evicted while still in use
  costs one more signature check.
- Each entry remembers the key id it was verified under (a thumbprint or a legacy kid). When
  that kid stops naming the same key (withdrawn, retired, or its record now names another
  key), `drop_kids` forgets it; a key that is added drops nothing.

Envoy's jwt_authn cache (`jwt_cache_config`) is the same idea: an LRU keyed by the token,
`jwt_cache_size` entries, tokens over `max_jwt_length_for_cache` not cached, expiry checked on
every lookup.

Memory: an entry holds the token string, its Session (whose session id came out of the token)
and this record: 1,890 bytes measured for a token of CACHED_TOKEN_MAX_CHARS with the longest
session id that fits, 742 for one as the auth service issues it (`python -m bench.token_cache`;
docs/design.md has the figures of a full cache).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.http import metrics

if TYPE_CHECKING:
    from services.http.tokens import Session

# Tokens this service issues have ~370 characters; room for a long issuer, audience and sub.
CACHED_TOKEN_MAX_CHARS = 1024
# Hits are added to their counter this many at a time, and at each miss: a metric update in
# multiprocess mode costs ~1.3 us, five times the rest of a hit.
HITS_PER_COUNT = 100


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    session: Session
    kid: str  # the key id of its header, as the key set spells it (one string per key)
    # What its `iss` and `aud` were checked against; None for a token issued before them.
    issuer: str | None
    audience: str | None


class VerifiedTokens:
    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        # Not a dict: a dict's oldest entry is found by a walk over the slots its evictions
        # emptied, 2-18 us a miss at 10,000-100,000 entries, milliseconds at the 99.9th
        # percentile; popitem(last=False) takes 0.4-0.6 us.
        self._entries: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._uncounted_hits = 0
        self._hits = metrics.TOKEN_CACHE_LOOKUPS.labels("hit")
        self._misses = metrics.TOKEN_CACHE_LOOKUPS.labels("miss")
        self._evictions = metrics.TOKEN_CACHE_DROPS.labels("evicted")
        self._expiries = metrics.TOKEN_CACHE_DROPS.labels("expired")
        self._withdrawals = metrics.TOKEN_CACHE_DROPS.labels("key_withdrawn")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> VerifiedToken | None:
        entry = self._entries.get(token)
        if entry is None:
            self._misses.inc()
            self._count_hits()
        else:
            self._uncounted_hits += 1
            if self._uncounted_hits >= HITS_PER_COUNT:
                self._count_hits()
        return entry

    def _count_hits(self) -> None:
        if self._uncounted_hits:
            self._hits.inc(self._uncounted_hits)
            self._uncounted_hits = 0

    def add(self, token: str, entry: VerifiedToken) -> None:
        if len(token) > CACHED_TOKEN_MAX_CHARS or self._max_entries == 0:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.popitem(last=False)  # the oldest entry
            self._evictions.inc()
        self._entries[token] = entry

    def drop_expired(self, token: str) -> None:
        if self._entries.pop(token, None) is not None:
            self._expiries.inc()

    def drop_kids(self, kids: Collection[str]) -> None:
        """Forget the tokens verified under any of `kids`."""
        if not kids or not self._entries:
            return
        gone = [token for token, entry in self._entries.items() if entry.kid in kids]
        for token in gone:
            del self._entries[token]
        self._withdrawals.inc(len(gone))
