"""Auth replicas that keep taking calls while discovery does not list them.

After a long etcd outage every lease has lapsed: the HTTP tier resyncs to a prefix that lists
no replica, and the replicas register again one by one over the next 1-5 s. Rather than
answer every call 503 `no_replica` meanwhile, the replicas that still answer on open
connections stay (unlisted), each until it shows it stopped: no open connection, draining, or
silent under calls (or out of rotation) for SILENCE_PINGS ping rounds, time to tell a frozen
replica from a short pause (an ejection only moves calls off it for GATEHOUSE_EJECT_SECONDS,
as for a listed replica). Once discovery lists any replica again, the unlisted
ones stay at most GRACE_SECONDS more, for their own records to come back (they then carry on
with the same connections), so that the first replica to register does not take every call.
"""

from __future__ import annotations

import logging
import math

from services.http import metrics
from services.http.replicas import Replica
from services.http.settings import HttpSettings

log = logging.getLogger(__name__)

GRACE_SECONDS = 10.0
# Ping rounds (GATEHOUSE_PING_INTERVAL + GATEHOUSE_PING_TIMEOUT) of silence under calls, or
# out of rotation, after which an unlisted replica is taken for stopped.
SILENCE_PINGS = 4


class UnlistedReplicas:
    def __init__(self, settings: HttpSettings) -> None:
        self._silence_limit = SILENCE_PINGS * (settings.ping_interval + settings.ping_timeout)
        self._names: set[str] = set()
        self._lists_none = False
        # Loop time until which the unlisted stay; infinite until discovery lists others.
        self._until = math.inf

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def discovery_changed(self, lists_any: bool, now: float) -> None:
        """Call first on every change of the discovered set."""
        self._lists_none = not lists_any
        if not lists_any or not self._names:
            self._until = math.inf
        elif self._until == math.inf:
            self._until = now + GRACE_SECONDS

    def listed(self, name: str) -> None:
        """`name` has its discovery record (back): no longer unlisted."""
        self._names.discard(name)

    def keeps(self, replica: Replica, now: float) -> bool:
        """Whether `replica`, whose record discovery no longer lists, keeps taking calls: only
        while discovery lists none, or in the grace of one unlisted before."""
        if (self._lists_none or replica.name in self._names) and self.why_dropped(
            replica, now
        ) is None:
            self._names.add(replica.name)
            return True
        self._names.discard(replica.name)
        return False

    def why_dropped(self, replica: Replica, now: float) -> str | None:
        """Why an unlisted replica no longer takes calls; None while it does."""
        if now >= self._until:
            return f"was not listed again within {GRACE_SECONDS:g}s of discovery listing others"
        if not replica.connected:
            return "has no open connection"
        if replica.draining:
            return "is draining"
        # A frozen replica keeps its connections open, and as the last one it never leaves
        # rotation: its silence under calls tells.
        silent = max(
            replica.unanswered_for(),
            0.0 if replica.in_rotation else now - (replica.out_of_rotation_since or now),
        )
        if silent > self._silence_limit:
            return f"has answered nothing for {silent:.1f}s under calls"
        return None

    def drop(self, name: str) -> None:
        self._names.discard(name)

    def settle(self, was: int, replicas_left: int) -> None:
        """After a change: the gauge, and one line when calling unlisted replicas begins or
        ends (`was`: how many were unlisted before the change)."""
        metrics.REPLICAS_KEPT_WITHOUT_RECORD.set(len(self._names))
        if self._names and not was:
            log.warning(
                "discovery lists no auth replica (their leases lapsed, or the last ones are"
                " shutting down); still calling the %d that answer on open connections, each"
                " until it stops: %s",
                len(self._names),
                ", ".join(sorted(self._names)),
            )
        elif was and not self._names:
            if replicas_left:
                log.info(
                    "no unlisted auth replica is called any more; calling the %d listed",
                    replicas_left,
                )
            else:
                log.warning(
                    "no unlisted auth replica answers any more, and discovery lists none:"
                    " calls fail until one registers"
                )

    def clear(self) -> None:
        self._names.clear()
        self._until = math.inf
        metrics.REPLICAS_KEPT_WITHOUT_RECORD.set(0)
