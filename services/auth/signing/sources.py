"""Where a replica's private keys come from: the key folder, re-read on each poll, or the one
key of GATEHOUSE_JWT_PRIVATE_KEY."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth import metrics
from services.auth.signing.folder import (
    FolderKey,
    KeyFolderError,
    folder_contents,
    key_id,
    parse_keys,
)

log = logging.getLogger(__name__)


class KeySource(Protocol):
    @property
    def keys(self) -> dict[str, FolderKey]: ...

    @property
    def rotates(self) -> bool:
        """Whether keys change while running (`gatehouse keys rotate` switches between them);
        else the one key is changed by a restart, and signs at once."""
        ...

    def reread(self) -> bool:
        """Look for changes; True when `keys` changed. Never raises."""
        ...


class FixedKey:
    """GATEHOUSE_JWT_PRIVATE_KEY: one key, never changing."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        kid = key_id(private_key)
        self._keys = {kid: FolderKey("GATEHOUSE_JWT_PRIVATE_KEY", kid, private_key)}

    @property
    def keys(self) -> dict[str, FolderKey]:
        return self._keys

    @property
    def rotates(self) -> bool:
        return False

    def reread(self) -> bool:
        return False


class KeyFolder:
    """GATEHOUSE_JWT_KEYS_DIR. A folder that turns bad while running (a half-written file, a
    wrong key) is reported in one log line per distinct problem, and the last good keys stay."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._contents = folder_contents(folder)
        self._keys = parse_keys(folder, self._contents)  # KeyFolderError at start: a config error
        self._problem: str | None = None

    @property
    def keys(self) -> dict[str, FolderKey]:
        return self._keys

    @property
    def rotates(self) -> bool:
        return True

    def reread(self) -> bool:
        try:
            contents = folder_contents(self._folder)
            if contents == self._contents:
                self._report(None)
                return False
            keys = parse_keys(self._folder, contents)
        except KeyFolderError as exc:
            self._report(str(exc))
            return False
        self._report(None)
        self._contents = contents
        changed = keys.keys() != self._keys.keys()
        self._keys = keys
        if changed:
            log.info("key folder %s now holds keys %s", self._folder, ", ".join(sorted(keys)))
        return changed

    def _report(self, problem: str | None) -> None:
        if problem is not None and problem != self._problem:
            metrics.KEY_FOLDER_REJECTED.inc()
            log.error(
                "%s; signing on with the keys read before (%s)",
                problem,
                ", ".join(sorted(self._keys)),
            )
        elif problem is None and self._problem is not None:
            log.info("key folder %s is usable again", self._folder)
        self._problem = problem
