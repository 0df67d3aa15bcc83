"""The auth replicas' copy of the signing keys' rotation state in MySQL (migration 0012).

etcd holds the state; the replicas keep this copy of it on the primary, so that a replica
that finds the state gone from etcd, or older there than here, writes back the newest one
known instead of starting afresh (services/auth/signing/ring.py). One row per rotation prefix;
a row only ever moves to a higher generation, so a replica that read an older state than
another one cannot take the copy back.

    copies = RotationStateCopies(primary)
    await copies.read("/gatehouse/jwt-rotation/") -> RotationState | None
    await copies.save("/gatehouse/jwt-rotation/", state)   # a versioned state
"""

from __future__ import annotations

import hashlib

from services.auth.signing.state import RotationState
from services.auth.store.database import Database, DuplicateKey

_READ = "SELECT document FROM rotation_state_copies WHERE prefix_sha256 = %s"
# Two statements rather than one upsert: ON DUPLICATE KEY UPDATE ... VALUES() is deprecated in
# MySQL 8, and the row alias that replaces it is unknown to MariaDB. Not INSERT IGNORE either:
# its warning on every existing row would reach the log.
_INSERT = """
INSERT INTO rotation_state_copies
    (prefix_sha256, rotation_prefix, generation, document, updated_at)
VALUES (%s, %s, %s, %s, NOW(6))
"""
_RAISE = """
UPDATE rotation_state_copies SET generation = %s, document = %s, updated_at = NOW(6)
WHERE prefix_sha256 = %s AND generation < %s
"""


class RotationStateCopies:
    def __init__(self, primary: Database) -> None:
        self._primary = primary

    async def read(self, rotation_prefix: str) -> RotationState | None:
        """The copy for `rotation_prefix`, None when there is none. Raises DatabaseError, and
        MalformedState for a row that holds no rotation state."""
        row = await self._primary.fetch_one(
            "read rotation state copy", _READ, (_key(rotation_prefix),)
        )
        if row is None:
            return None
        return RotationState.from_json(bytes(row["document"]))

    async def save(self, rotation_prefix: str, state: RotationState) -> bool:
        """Keep `state` unless the copy holds a later generation: whether the copy holds
        `state` now (False: another state of its generation or a later one). Raises
        DatabaseError."""
        if state.generation is None:
            raise ValueError("only a versioned state is kept: its generation orders the copies")
        key, document = _key(rotation_prefix), state.to_json()
        raise_args = (state.generation, document, key, state.generation)
        async with self._primary.statements("save rotation state copy") as statements:
            if await statements.execute(_RAISE, raise_args):
                return True
            try:
                await statements.execute(
                    _INSERT, (key, rotation_prefix, state.generation, document)
                )
                return True
            except DuplicateKey:  # kept at this generation or later, or inserted meanwhile
                if await statements.execute(_RAISE, raise_args):
                    return True
        return await self.read(rotation_prefix) == state


def _key(rotation_prefix: str) -> bytes:
    return hashlib.sha256(rotation_prefix.encode()).digest()
