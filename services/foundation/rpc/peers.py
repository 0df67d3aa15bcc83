"""Connections open per peer address, so one peer cannot take every connection a server has."""

from __future__ import annotations


class PeerCounts:
    """How many connections each source address holds; an address leaves when it holds none."""

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def holds(self, address: str) -> int:
        return self._counts.get(address, 0)

    def try_add(self, address: str) -> bool:
        """Count one more connection of `address`; False (and not counted) at its limit."""
        held = self._counts.get(address, 0)
        if held >= self.limit:
            return False
        self._counts[address] = held + 1
        return True

    def remove(self, address: str) -> None:
        held = self._counts.get(address, 0)
        if held <= 1:
            self._counts.pop(address, None)
        else:
            self._counts[address] = held - 1
