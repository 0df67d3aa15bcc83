"""How much of a shared resource each client has used lately, for serving the lightest first.

A client's count goes up by one each time it starts using the resource, and halves every
`half_life` seconds. Fair shares per client alone let an attacker spread over many addresses tie
with every bystander, each address holding one login at a time (144 addresses got 23 of 24
bystander logins refused): among clients otherwise equal, the one with the lowest count goes
first. The HTTP tier's hashing budget ranks requests by it
(services.http.middleware.admission), and the auth replica's hash queue picks whose turn is
next by it (services.auth.passwords).

Clients are counted by site (client_address.site_of): an IPv6 /64 key by its /48, so that one
holder of a /48 does not get 65,536 fresh counts to look new with, which would rank it ahead
of bystanders and ahead of a client that just had its turn. At most `max_clients` sites are
remembered, the least recently seen forgotten first, so the memory is bounded whatever the
number of addresses; a forgotten one counts as a newcomer.
Not thread-safe: a caller sharing one between threads holds its own lock.
"""

from __future__ import annotations

import collections

from services.foundation.client_address import site_of

HALF_LIFE = 10.0
MAX_CLIENTS = 4096
# Ranks go in quarters of a use, so that use long past (a quarter or less) ties with none and
# the caller's own order (a rotation, arrival) decides; capped, since the HTTP tier's admission
# queue keeps a line for each rank it holds (past the cap, clients tie).
RANK_STEPS = 4
MAX_RANK = 64 * RANK_STEPS


def rank_of(uses: float) -> int:
    """The place of a client that has used the resource `uses` times lately: lower goes first."""
    return min(int(RANK_STEPS * uses), MAX_RANK)


class RecentUse:
    __slots__ = ("_counts", "half_life", "max_clients")

    def __init__(self, half_life: float = HALF_LIFE, max_clients: int = MAX_CLIENTS) -> None:
        self.half_life = half_life
        self.max_clients = max_clients
        # site -> (count, when it was last updated), the least recently updated first.
        self._counts: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, client: str, now: float) -> float:
        return self._count_of(site_of(client), now)

    def started(self, client: str, now: float) -> None:
        """`client` started using the resource once more."""
        site = site_of(client)
        self._counts[site] = (self._count_of(site, now) + 1.0, now)
        self._counts.move_to_end(site)
        if len(self._counts) > self.max_clients:
            self._counts.popitem(last=False)

    def _count_of(self, site: str, now: float) -> float:
        entry = self._counts.get(site)
        if entry is None:
            return 0.0
        count, at = entry
        decay: float = 0.5 ** ((now - at) / self.half_life)
        return count * decay
