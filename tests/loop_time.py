"""Waiting on the event loop's own clock: for a test of what a timer does (or does not do)."""

from __future__ import annotations

import asyncio


async def past(delay: float) -> None:
    """Return once a timer due `delay` from now has run: timers run in the order they are due,
    so every timer due before it has run too."""
    loop = asyncio.get_running_loop()
    due: asyncio.Future[None] = loop.create_future()
    loop.call_later(delay, due.set_result, None)
    await due
