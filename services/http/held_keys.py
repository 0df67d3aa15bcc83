"""What one worker tells about the signing keys it holds: the gauge
gatehouse_http_signing_key_info{kid} (1 per held thumbprint kid, 0 once withdrawn) and the
`signing_key_kids` member of /readyz. Before a new key signs tokens, every process must hold it;
this is how an operator (or `gatehouse keys rotate`) sees that they do.
"""

from __future__ import annotations

from services.http import metrics
from services.http.public_keys import KeySet


class HeldKeysReport:
    def __init__(self) -> None:
        self._reported: tuple[str, ...] = ()

    def update(self, keys: KeySet) -> None:
        """Report `keys`. Called in the worker (its lifespan, each key set change), never at
        import: metrics set then would be the fork server's (workers/worker_preload.py)."""
        for kid in set(self._reported) - set(keys.kids):
            metrics.SIGNING_KEYS_HELD.labels(kid).set(0)
        for kid in keys.kids:
            metrics.SIGNING_KEYS_HELD.labels(kid).set(1)
        self._reported = keys.kids


def readyz_detail(keys: KeySet) -> dict[str, object]:
    return {"signing_key_kids": list(keys.kids)}
