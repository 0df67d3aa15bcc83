"""The entries of an etcd history that was lost, still reported for a grace.

After etcd loses its data, the owners of a prefix's entries write them again only at their next
sync (the auth replicas publish their JWT keys every GATEHOUSE_JWT_KEYS_POLL_INTERVAL). Until
then a PrefixWatcher with a `reset_grace` keeps reporting the entries it had, each until the new
history writes its name or the grace ends. The grace counts only the time the watch works:
nobody can write the entries again while it cannot reach etcd, so an outage pauses it, and it
goes on with what was left once the watch works again (a watch that keeps failing and coming
back cannot keep them for longer than the grace of working time).

    held = HeldOver(grace, on_end=republish, on_count=gauge.set)
    held.hold(values)                   # etcd's history began again
    reported = held.merged(current)     # at each change; a name `current` has leaves
    held.watch_down(); held.watch_up()  # the watch failed; it works again
    held.clear()                        # the watcher stops
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class HeldOver:
    def __init__(
        self,
        grace: float,
        *,
        on_end: Callable[[list[str]], None],
        on_count: Callable[[int], None],
    ) -> None:
        """`on_end(names)`: the grace ended with these names still held (report the set without
        them); `on_count(n)`: how many are held, on every change."""
        self._grace = grace
        self._on_end = on_end
        self._on_count = on_count
        self._entries: dict[str, bytes] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._grace_left = 0.0
        self._watch_down = False

    def __len__(self) -> int:
        return len(self._entries)

    def hold(self, entries: dict[str, bytes]) -> None:
        """Keep reporting `entries` (the set before the reset) for the grace; nothing without one."""
        if self._grace <= 0 or not entries:
            return
        self._entries = dict(entries)
        self._grace_left = self._grace
        if not self._watch_down:
            self._run_grace()
        self._on_count(len(self._entries))

    def merged(self, current: dict[str, bytes]) -> dict[str, bytes]:
        """`current` (what etcd holds now) with the entries still held; a name it has is no
        longer held: the new history's value is the one, and a later delete of it applies."""
        if not self._entries:
            return current
        written = current.keys() & self._entries.keys()
        if written:
            for name in written:
                del self._entries[name]
            self._on_count(len(self._entries))
            if not self._entries:
                self._cancel()
        return {**self._entries, **current}

    def watch_down(self) -> None:
        if self._watch_down:
            return
        self._watch_down = True
        if self._expiry is not None:
            self._grace_left = max(0.0, self._expiry.when() - asyncio.get_running_loop().time())
            self._cancel()

    def watch_up(self) -> None:
        if not self._watch_down:
            return
        self._watch_down = False
        if self._entries:
            self._run_grace()

    def clear(self) -> None:
        self._cancel()
        if self._entries:
            self._entries = {}
            self._on_count(0)
        self._watch_down = False

    def _run_grace(self) -> None:
        self._cancel()
        self._expiry = asyncio.get_running_loop().call_later(self._grace_left, self._expire)

    def _cancel(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        names = sorted(self._entries)
        self._entries = {}
        self._on_count(0)
        self._on_end(names)
