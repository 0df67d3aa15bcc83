"""Whether the MySQL primary is up, as the replication heartbeat last found it: a circuit breaker.

The heartbeat (freshness.py) is the one probe: it runs every interval, one at a time, and each
run reports here. A heartbeat that fails, or takes longer than its deadline, opens the breaker;
the next one that succeeds closes it. While it is open, every operation of the primary's pools
(database.py) is refused at once with `PrimaryDown`, without a connection attempt: writes,
logins and signups fail in microseconds instead of waiting for GATEHOUSE_MYSQL_TIMEOUT, and no
password hash is spent on a login whose session could not be stored. Reads go on from Redis
and the read replicas (accounts.py, docs/design.md "A primary outage").

One warning when the primary goes down and one line when it is back, whatever the traffic; a
primary that flaps (heartbeats that overrun under load, a link that comes and goes) logs at most
one such pair per LOG_INTERVAL, and the next warning says how many outages it held back.

    health = PrimaryHealth()
    Database.open(dsn, role="primary", ..., health=health)   # the pool refuses while down
    health.available                 # False from a failed heartbeat to a successful one
    health.probe_succeeded(); health.probe_failed(reason)    # the heartbeat's reports
    health.count_refusal(operation)  # by the pool, for the log line and the metric
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from services.auth.metrics import PRIMARY_AVAILABLE, PRIMARY_REFUSALS
from services.foundation.outage_log import OutageLog

log = logging.getLogger(__name__)

LOG_INTERVAL = 10.0  # seconds between two logged outages of a flapping primary


class PrimaryHealth:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._outages = OutageLog(LOG_INTERVAL, clock=clock)
        self._refused = 0
        PRIMARY_AVAILABLE.set(1)  # until a heartbeat says otherwise: the first one runs at start

    @property
    def available(self) -> bool:
        return not self._outages.is_down

    def count_refusal(self, operation: str) -> None:
        self._refused += 1
        PRIMARY_REFUSALS.labels(operation).inc()

    def probe_succeeded(self) -> None:
        if self.available:
            return
        down_for = self._outages.down_for
        PRIMARY_AVAILABLE.set(1)
        if not self._outages.recovered():
            return  # its warning was held back: so is its end (the refusals count on)
        log.info(
            "the MySQL primary answers again after %.1f s down; writes and logins resume"
            " (%d operations were refused meanwhile)",
            down_for,
            self._refused,
        )
        self._refused = 0

    def probe_failed(self, reason: str) -> None:
        began = self.available  # this failure begins the outage
        held_back = self._outages.failed()
        PRIMARY_AVAILABLE.set(0)
        if held_back is None:
            return  # logged already, or held back: a later failed heartbeat logs it if it lasts
        log.warning(
            "the MySQL primary is down%s (%s): writes, logins and signups are refused at once"
            " until a heartbeat succeeds; session and profile reads are served from Redis and the"
            " read replicas%s",
            "" if began else f" for {self._outages.down_for:.1f} s",
            reason,
            f" ({held_back} more short outages since the last one logged)" if held_back else "",
        )
