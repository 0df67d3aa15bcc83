"""New user ids: from the etcd worker id while it is held, else from the primary's id blocks.

The two sources can never make the same id: etcd grants worker ids 0..1022 and the blocks
carry worker id 1023 (snowflake.py, store/id_blocks.py). So a replica cut off from etcd, which
cannot tell an etcd outage from a partition, keeps signing users up as long as it reaches the
primary, which every signup needs anyway.

    user_ids = UserIds(claim, blocks)
    await user_ids.next_id() -> int   # raises DatabaseError if a block is needed and cannot be had
    user_ids.source -> "etcd" | "database"
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal

from services.auth import metrics
from services.auth.snowflake import WorkerIdClaim
from services.auth.store.id_blocks import IdBlocks

log = logging.getLogger(__name__)

IdSource = Literal["etcd", "database"]
ID_SOURCES: tuple[IdSource, ...] = ("etcd", "database")


class UserIds:
    def __init__(self, claim: WorkerIdClaim, blocks: IdBlocks) -> None:
        self._claim = claim
        self._blocks = blocks
        self._last_source: IdSource | None = None

    @property
    def source(self) -> IdSource:
        """Where the next id would come from now."""
        return "etcd" if self._claim.generator is not None else "database"

    def export_metrics(self) -> None:
        """Keep `gatehouse_auth_user_id_source` on the source in use, read at each scrape."""
        for source in ID_SOURCES:
            metrics.USER_ID_SOURCE.labels(source).set_function(partial(self._in_use, source))

    def _in_use(self, source: IdSource) -> float:
        return float(self.source == source)

    async def next_id(self) -> int:
        made = self._claim.next_id()
        if made is not None:
            self._switched_to("etcd")
            return made
        self._switched_to("database")
        return await self._blocks.next_id()

    def _switched_to(self, source: IdSource) -> None:
        if source == self._last_source:
            return
        if source == "etcd":
            # The rest of the block stays unused: ids from the worker id sort by time again.
            self._blocks.forget()
            if self._last_source is not None:
                log.info(
                    "new user ids come from the etcd worker id %s again", self._claim.worker_id
                )
        else:
            log.warning(
                "no etcd worker id held: new user ids come from id blocks of the MySQL primary"
            )
        self._last_source = source
