"""What each peer address holds (connections, calls in flight), so one peer cannot take all a
server has."""

from __future__ import annotations


class PeerCounts:
    """How many of something each source address holds; an address leaves when it holds none."""

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def holds(self, address: str) -> int:
        return self._counts.get(address, 0)

    def at_limit(self, address: str) -> bool:
        return self._counts.get(address, 0) >= self.limit

    def add(self, address: str) -> None:
        """Count one more for `address`, whatever the limit (the caller checked at_limit)."""
        self._counts[address] = self._counts.get(address, 0) + 1

    def try_add(self, address: str) -> bool:
        """Count one more for `address`; False (and not counted) at its limit."""
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
