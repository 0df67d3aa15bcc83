"""Sessions for the read scenarios, made without a login each (a login costs a bcrypt hash).

Gatehouse: rows inserted into `sessions` on the primary (replicated like any write) and
tokens signed with the stack's JWT key, exactly what a login would have produced. The peer:
fastapi-users' JWT strategy is stateless, so its tokens are signed with its secret.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

import jwt
import pymysql

from bench.seed import ours_database, peer_user_id
from devstack.stack import DataStores
from services.auth.tokens import TokenIssuer, load_private_key, new_session_id

TOKEN_TTL_SECONDS = 86400
_ROWS_PER_INSERT = 2000
_ER_LOCK_DEADLOCK = 1213
_DEADLOCK_ATTEMPTS = 3
PEER_AUDIENCE = ["fastapi-users:auth"]


def gatehouse_tokens(
    stores: DataStores, users: int, private_key_pem: str, user_indexes: list[int]
) -> list[str]:
    """One new session (and its token) per entry of `user_indexes` (1-based seeded users)."""
    issuer = TokenIssuer(load_private_key(private_key_pem), TOKEN_TTL_SECONDS)
    now = datetime.now(UTC).replace(tzinfo=None)
    expires = now + timedelta(seconds=TOKEN_TTL_SECONDS)
    rows: list[tuple[str, int]] = [(new_session_id(), index) for index in user_indexes]
    with (
        stores.primary.connect(database=ours_database(users)) as connection,
        connection.cursor() as cursor,
    ):
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            _insert_retrying_deadlocks(
                cursor,
                "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES (%s, %s, %s, %s)",
                [(sid, user_id, now, expires) for sid, user_id in chunk],
            )
    stores.replication.wait_caught_up(60.0)
    return [issuer.issue(user_id, sid).token for sid, user_id in rows]


def _insert_retrying_deadlocks(
    cursor: pymysql.cursors.Cursor, sql: str, rows: list[tuple[object, ...]]
) -> None:
    """One autocommitted multi-row INSERT, sent again if InnoDB chose it as a deadlock's victim
    (rolled back whole): the stack's own writes to `sessions` (last-use flushes after a read
    scenario) run meanwhile, and one bench run lost all its figures to such a deadlock."""
    for attempt in range(_DEADLOCK_ATTEMPTS):
        try:
            cursor.executemany(sql, rows)
            return
        except pymysql.err.OperationalError as exc:
            if exc.args[:1] != (_ER_LOCK_DEADLOCK,) or attempt == _DEADLOCK_ATTEMPTS - 1:
                raise


def peer_tokens(secret: str, user_indexes: list[int]) -> list[str]:
    expires = int(time.time()) + TOKEN_TTL_SECONDS
    return [
        jwt.encode(
            {"sub": peer_user_id(index), "aud": PEER_AUDIENCE, "exp": expires},
            secret,
            algorithm="HS256",
        )
        for index in user_indexes
    ]


def distinct_users(population: int, count: int, *, exclude: set[int] | None = None) -> list[int]:
    """`count` different seeded users picked at random (fewer if the table is too small)."""
    excluded = exclude or set()
    available = population - len(excluded)
    count = min(count, available)
    picked: set[int] = set()
    generator = secrets.SystemRandom()
    while len(picked) < count:
        index = generator.randint(1, population)
        if index not in excluded:
            picked.add(index)
    return list(picked)
