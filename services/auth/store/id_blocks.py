"""User ids from blocks the MySQL primary hands out: the id source while no etcd claim is held.

The primary keeps one counter (`user_id_blocks`). Taking a block is one UPDATE that moves the
counter forward by the block size and returns where it ended: row-locked and committed on the
primary, so each value is handed out once, to one caller, whatever the clocks or the network
do. Before moving, the counter is raised to the primary's current time, so ids still sort
roughly by creation time; a clock that steps back only stops the raise, never the increase.

A counter value `c` becomes the Snowflake id with timestamp `c >> 12`, sequence `c & 4095` and
worker id 1023, which etcd never grants (snowflake.py): these ids can equal no id made under an
etcd claim. See docs/design.md, "User ids".

    blocks = IdBlocks(primary, block_size=256)
    await blocks.next_id() -> int   # raises DatabaseError while the primary cannot hand a block
    blocks.forget()                 # drop the rest of the current block (a source switch)
"""

from __future__ import annotations

import asyncio
import logging

from services.auth.metrics import USER_ID_BLOCKS
from services.auth.snowflake import (
    DATABASE_WORKER_ID,
    EPOCH_UNIX_MS,
    SEQUENCE_BITS,
    TIMESTAMP_BITS,
    WORKER_ID_BITS,
)
from services.auth.store.database import Database, DatabaseError

log = logging.getLogger(__name__)

# A counter is a timestamp and a sequence side by side: the low 53 bits of a Snowflake id
# with its worker id taken out.
COUNTER_LIMIT = 1 << (TIMESTAMP_BITS + SEQUENCE_BITS)
_SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1

# LAST_INSERT_ID(expr) hands the new value back on this connection only, with no second read
# of the row that another taker could have moved in between.
_TAKE_BLOCK = f"""
UPDATE user_id_blocks
SET next_counter = LAST_INSERT_ID(
    GREATEST(
        next_counter,
        CAST(GREATEST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) - {EPOCH_UNIX_MS}, 0) AS UNSIGNED)
            << {SEQUENCE_BITS}
    ) + %s
)
WHERE id = 1
"""
_BLOCK_END = "SELECT LAST_INSERT_ID() AS block_end"


class IdBlocksExhausted(DatabaseError):
    """The counter reached the end of the id space (year 2093): move the epoch."""


def id_from_counter(counter: int) -> int:
    """The Snowflake id of counter value `counter`: worker id 1023, which etcd never grants."""
    if not 0 <= counter < COUNTER_LIMIT:
        raise ValueError(f"counter {counter} is outside the id space")
    return (
        ((counter >> SEQUENCE_BITS) << (WORKER_ID_BITS + SEQUENCE_BITS))
        | (DATABASE_WORKER_ID << SEQUENCE_BITS)
        | (counter & _SEQUENCE_MASK)
    )


class IdBlocks:
    """Hands out ids of blocks taken from the primary, one block at a time per process."""

    def __init__(self, primary: Database, block_size: int) -> None:
        if block_size < 1:
            raise ValueError("an id block holds at least one id")
        self._primary = primary
        self._block_size = block_size
        self._next = 0
        self._end = 0  # the current block is [_next, _end)
        self._taking = asyncio.Lock()  # one block at a time, however many signups wait

    async def next_id(self) -> int:
        while self._next >= self._end:
            async with self._taking:
                if self._next >= self._end:
                    self._next, self._end = await self._take_block()
        counter = self._next
        self._next += 1
        return id_from_counter(counter)

    def forget(self) -> None:
        """Drop what is left of the current block; its ids are never handed out again."""
        self._next = self._end = 0

    async def _take_block(self) -> tuple[int, int]:
        async with self._primary.statements("take_id_block") as statements:
            changed = await statements.execute(_TAKE_BLOCK, (self._block_size,))
            row = await statements.fetch_one(_BLOCK_END)
        if changed != 1 or row is None:
            raise DatabaseError("the user_id_blocks row is missing: run the migrations")
        end = int(row["block_end"])
        if end > COUNTER_LIMIT:
            raise IdBlocksExhausted("user id blocks ran out (year 2093); move the epoch")
        USER_ID_BLOCKS.inc()
        log.debug("took user id block [%d, %d)", end - self._block_size, end)
        return end - self._block_size, end
