"""How much of the hashing budget each client has used lately, for the budget's ranks.

A client's count goes up by one for each request of it that starts in the hashing budget, and
halves every HALF_LIFE seconds. The admission limit ranks a request by what its client holds now
plus this count, so among clients holding the same, the one that has hashed least lately is
served first. Ranking by what a client holds alone let an attacker spread over many addresses,
each holding one login at a time, tie with every bystander: 144 addresses got 3 of 4 bystander
logins refused after about 1 s in line.

At most MAX_CLIENTS clients are remembered, the least recently seen forgotten first, so the
memory is bounded whatever the number of addresses; a forgotten client counts as a newcomer.
"""

from __future__ import annotations

import collections

HALF_LIFE = 10.0
MAX_CLIENTS = 4096


class RecentHashing:
    __slots__ = ("_counts", "half_life", "max_clients")

    def __init__(self, half_life: float = HALF_LIFE, max_clients: int = MAX_CLIENTS) -> None:
        self.half_life = half_life
        self.max_clients = max_clients
        # client -> (count, when it was last updated), the least recently updated first.
        self._counts: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, client: str, now: float) -> float:
        entry = self._counts.get(client)
        if entry is None:
            return 0.0
        count, at = entry
        decay: float = 0.5 ** ((now - at) / self.half_life)
        return count * decay

    def started(self, client: str, now: float) -> None:
        """One more request of `client` started in the budget."""
        self._counts[client] = (self.count(client, now) + 1.0, now)
        self._counts.move_to_end(client)
        if len(self._counts) > self.max_clients:
            self._counts.popitem(last=False)
