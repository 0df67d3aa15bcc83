"""Accounts and sessions: the only module with account SQL (the flag of logouts that did not
reach Redis is revocations.py's).

`AccountStore` writes to the MySQL primary, reads from a replica only when the read-your-writes
rule allows it (docs/design.md; freshness.py), and caches sessions and profiles in Redis
(cache.py). Redis trouble never reaches callers: they are served from the primary instead.
A logout whose tombstone Redis did not take is flagged on the primary and answers only once every
replica treats the session as revoked (revocations.py), a few heartbeat intervals later; a
profile change whose record Redis did not take raises the write floor and waits the same way.
MySQL trouble raises `DatabaseError` (`DatabaseTimeout` when too slow): answer it as UNAVAILABLE.

While the primary is down (its heartbeat failed, health.py), every primary operation raises
`PrimaryDown` at once, and session reads go on from Redis and the read replicas; only a user
whose last write no replica holds gets `PrimaryDown` (docs/design.md, "A primary outage").

    store = await AccountStore.open(settings)  # after apply_migrations (migrate.py)
    store.ready                                 # the last heartbeat reached the primary
    store.require_primary(operation)            # PrimaryDown at once while it counts as down
    await store.create_user(user_id, username, nickname, password_hash, pepper_version,
                            not_after=deadline) -> UserRecord
        raises UsernameTaken; usernames are unique regardless of case, stored as registered;
        raises UserIdTaken if `user_id` is in use (two id sources made the same id: a bug)
    await store.find_credentials(username) -> Credentials | None  # (user, hash, pepper version)
    await store.rehash_password(user_id, password_hash, pepper_version, replacing=old_hash)
    await store.create_session(user_id, session_id, expires_at, device=SessionDevice(...),
                               password_changes=credentials.password_changes,
                               not_after=deadline) -> None
        raises AccountDeleted, AccountLocked or PasswordChanged if the account was deleted or
        locked, or its password changed, since the login read the hash it checked; ends the
        user's oldest sessions beyond MAX_SESSIONS_PER_USER
    await store.session_profile(user_id, session_id) -> UserRecord | None  # notes the use
    await store.live_sessions(user_id, limit=100) -> list[SessionRecord]  # newest first
    await store.change_picture(user_id, session_id, avatar_key, not_after=deadline)
        -> PictureChange | None  # the blob table's picture: the replaced one deleted with it
    await store.update_profile(user_id, session_id, nickname=..., avatar_key=...,
                               not_after=deadline) -> UserRecord | None
    await store.revoke_session(user_id, session_id, not_after=deadline) -> bool
    await store.end_session(user_id, session_id) -> bool  # True: it was live, and ended now
    await store.end_sessions(user_id, keep=None) -> int  # every live one but `keep`; how many
    await store.change_password(user_id, session_id, password_hash, pepper_version) -> int | None
        # the new hash, and every other session of the user revoked: how many
    await store.delete_account(user_id, session_id, free_username=...) -> DeletedAccount | None
        # the profile erased, every session revoked (docs/design.md, "Deleting an account")
    Each of these writes, and the operator calls below, take `not_after=deadline` too: a
    transaction that has not started by then writes nothing (DeadlinePassed).
    await store.close()

Operator calls (the `gatehouse` CLI, services/auth/admin_handlers.py) name an account by
username, read and write the primary, and revoke through the same path:
    await store.account_summary(username) -> AccountSummary | None
    await store.lock_account(username) -> LockedAccount | None  # every session revoked
    await store.unlock_account(username) -> AccountSummary | None
    await store.delete_named_account(username, free_username=...) -> DeletedAccount | None
    await store.end_named_sessions(user_id, ids) -> list[str]  # the ids that were live
A locked account (`locked_at` set) keeps its password; `find_credentials` reports it `locked`,
and `create_session` refuses it (AccountLocked) under the same row lock as a deletion, so a
login whose password check read a stale replica cannot open a session after the lock.

`not_after` (optional, a loop.time() value: the RPC call's deadline) makes a write raise
`DeadlinePassed` instead of starting once its caller has given up (store/database.py).
A deleted account keeps its row, erased (`deleted_at` set): every read treats it as gone, and
`find_credentials` reports it `deleted` (its name is taken for signups, unknown for logins).
Values are stored as given: validate them first (services.auth.validation). A session call
answers None when the session is unknown, revoked, expired or belongs to another user.
Expiry is judged by this replica's clock; `expires_at` must be timezone-aware.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.auth.metrics import CACHE_LOOKUPS, DB_READS, DEGRADED_READS, REVOCATIONS_IN_DOUBT
from services.auth.settings import AuthSettings
from services.auth.store.cache import (
    ActiveSession,
    CachedProfile,
    CacheEntry,
    LastLogin,
    LastWrite,
    RedisCache,
    SessionTombstone,
)
from services.auth.store.database import Database, DatabaseError, DuplicateKey, Row, Transaction
from services.auth.store.freshness import HeartbeatWriter, ReplicaFreshness
from services.auth.store.health import PrimaryHealth
from services.auth.store.last_seen import LastSeen
from services.auth.store.revocations import REPAIR_BATCH, PendingTombstones
from services.foundation.log_throttle import RepeatedWarnings
from services.foundation.metrics import LabelledChildren

log = logging.getLogger(__name__)

USERNAME_COLUMN_LENGTH = 30
SESSION_ID_COLUMN_LENGTH = 64
USER_AGENT_COLUMN_LENGTH = 256
IP_COLUMN_LENGTH = 45
# A person's session list shows at most this many, the newest.
LISTED_SESSIONS = 100
# A user keeps at most this many unrevoked sessions: a login beyond it ends the oldest. The calls
# that end every session of a user (a password change, a lock, a deletion, ending all) revoke
# them in one transaction under GATEHOUSE_MYSQL_TIMEOUT, which tens of thousands of sessions
# overran every time (logins with the right password are not throttled).
MAX_SESSIONS_PER_USER = 1000
_CAP_WARNINGS = RepeatedWarnings(log, interval=10.0)
_IN_DOUBT_WARNINGS = RepeatedWarnings(log, interval=10.0)

_USER_COLUMNS = "u.id, u.username, u.nickname, u.avatar_key, u.created_at, u.updated_at, u.version"
# `{as_of}` in a read is replaced by a primary time the row is known to include. On the primary
# it is never below the heartbeat row, so entries it refills count even while the primary's
# clock is behind the row (freshness.py): a write not yet visible to the read has a time past it.
_PRIMARY_AS_OF = "GREATEST(NOW(6), (SELECT beat FROM replication_heartbeat WHERE id = 1))"
_REPLICA_AS_OF = "(SELECT beat FROM replication_heartbeat WHERE id = 1)"
# Credentials are looked up by name, before the user's last write is known: any replica first.
_ANY_REPLICA = datetime.min.replace(tzinfo=UTC)

_FIND_CREDENTIALS = f"""
SELECT {_USER_COLUMNS}, u.password_hash, u.pepper_version, u.password_changes, u.deleted_at,
    u.locked_at, {{as_of}} AS as_of
FROM users u WHERE u.username = %s
"""
_SESSION_PROFILE = f"""
SELECT {_USER_COLUMNS}, s.expires_at, s.revoked_at, {{as_of}} AS as_of
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = %s AND s.user_id = %s AND u.deleted_at IS NULL
"""
_USER_BY_ID = f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = %s"
_INSERT_USER = """
INSERT INTO users (id, username, nickname, password_hash, pepper_version, avatar_key, version,
    created_at, updated_at)
VALUES (%s, %s, %s, %s, %s, NULL, 1, NOW(6), NOW(6))
"""
_REHASH_PASSWORD = """
UPDATE users SET password_hash = %s, pepper_version = %s, version = version + 1
WHERE id = %s AND deleted_at IS NULL
"""
# A login's session is stored only while its account is neither deleted nor locked, and its
# password not changed since the login read the hash it checked: the shared lock waits for a
# deletion, a lock or a password change in progress (each holds the row's exclusive lock) and
# then sees its outcome.
# One autocommitted statement (no BEGIN, no COMMIT): its SELECT reads the user's row under a
# shared lock (explicit, so that it holds under READ COMMITTED too), so a deletion or lock
# committing meanwhile is either waited for and seen, or waits for this insert.
_INSERT_SESSION_OF_LIVE_USER = """
INSERT INTO sessions (id, user_id, created_at, expires_at, user_agent, ip)
SELECT %s, id, NOW(6), %s, %s, %s FROM users
WHERE id = %s AND deleted_at IS NULL AND locked_at IS NULL AND password_changes = %s
LOCK IN SHARE MODE
"""
# Sessions revoked per UPDATE when a password change or a deletion ends them all.
_REVOKE_BATCH = 500
# After a login: the user's unrevoked sessions beyond the newest MAX_SESSIONS_PER_USER, a batch
# at most, so that a user far past the cap (sessions older than it) is brought under it over a
# few logins, each within its deadline.
_SESSIONS_PAST_THE_CAP = f"""
SELECT id, expires_at FROM sessions WHERE user_id = %s AND revoked_at IS NULL
ORDER BY created_at DESC, id DESC LIMIT {_REVOKE_BATCH} OFFSET %s
"""
# Only when that inserted nothing: why (None: deleted or gone).
_LIVE_USER_LOCK = "SELECT locked_at FROM users WHERE id = %s AND deleted_at IS NULL"
# One row even without sessions (the anchor), so that its as_of tells how fresh the answer is.
_LIVE_SESSIONS = """
SELECT {as_of} AS as_of, s.id, s.created_at, s.expires_at, s.last_seen_at, s.user_agent, s.ip
FROM (SELECT 1 AS anchor) a
LEFT JOIN sessions s ON s.user_id = %s AND s.revoked_at IS NULL AND s.expires_at > %s
ORDER BY s.created_at DESC, s.id DESC
LIMIT %s
"""
# Taken first by every transaction that revokes sessions of a user, so that all of them lock in
# one order: the user's row, then the sessions. A password change, a lock or a deletion holds the
# row's exclusive lock before it locks the sessions; a revocation that locked sessions first, in
# another order (ending every session, the cap's trim), could hold some the other needs while it
# waits for one the other holds, and InnoDB would roll one back as a deadlock victim (a 503).
# Shared: logins (which take it shared too) and other revocations of the user go on meanwhile.
_USER_ROW_SHARED = "SELECT id FROM users WHERE id = %s LOCK IN SHARE MODE"
_LIVE_SESSIONS_BUT = """
SELECT id, expires_at FROM sessions
WHERE user_id = %s AND revoked_at IS NULL AND expires_at > %s AND id <> %s
FOR UPDATE
"""
_END_SESSIONS_BUT = """
UPDATE sessions SET revoked_at = NOW(6)
WHERE user_id = %s AND revoked_at IS NULL AND expires_at > %s AND id <> %s
"""
_REVOKE_SESSION = """
UPDATE sessions SET revoked_at = NOW(6) WHERE id = %s AND user_id = %s AND revoked_at IS NULL
"""
_LIVE_SESSION_CONDITION = (
    "u.id = %s AND s.id = %s AND s.revoked_at IS NULL AND s.expires_at > %s"
    " AND u.deleted_at IS NULL"
)


def _profile_update(columns: list[str]) -> str:
    """The UPDATE of a profile's `columns` (one %s each, then the live session's user id,
    session id and now), only while that session is live."""
    assignments = ", ".join(f"u.{column} = %s" for column in columns)
    return (
        f"UPDATE users u JOIN sessions s ON s.user_id = u.id"
        f" SET {assignments}, u.version = u.version + 1, u.updated_at = NOW(6)"
        f" WHERE {_LIVE_SESSION_CONDITION}"
    )


_CHANGE_PASSWORD = f"""
UPDATE users u JOIN sessions s ON s.user_id = u.id
SET u.password_hash = %s, u.pepper_version = %s, u.password_changes = u.password_changes + 1,
    u.version = u.version + 1, u.updated_at = NOW(6)
WHERE {_LIVE_SESSION_CONDITION}
"""
# Locks the user's row (and the session's) until the deletion commits: profile updates, logins
# and password changes of the account wait for it and then see the account deleted.
_LIVE_ACCOUNT_FOR_DELETION = f"""
SELECT u.id, u.username, u.avatar_key FROM users u JOIN sessions s ON s.user_id = u.id
WHERE {_LIVE_SESSION_CONDITION} FOR UPDATE
"""
# The operator's calls: the account of a name, its row locked until the change commits.
_NAMED_ACCOUNT_FOR_UPDATE = """
SELECT u.id, u.username, u.avatar_key FROM users u
WHERE u.username = %s AND u.deleted_at IS NULL FOR UPDATE
"""
_ACCOUNT_SUMMARY = f"""
SELECT {_USER_COLUMNS}, u.locked_at, u.pepper_version,
    (SELECT COUNT(*) FROM sessions s
     WHERE s.user_id = u.id AND s.revoked_at IS NULL AND s.expires_at > %s) AS live_sessions
FROM users u WHERE {{match}} AND u.deleted_at IS NULL
"""
_LOCK_ACCOUNT = (
    "UPDATE users SET locked_at = NOW(6), version = version + 1 WHERE id = %s AND locked_at IS NULL"
)
_UNLOCK_ACCOUNT = (
    "UPDATE users SET locked_at = NULL, version = version + 1"
    " WHERE id = %s AND locked_at IS NOT NULL"
)
_NAMED_LIVE_SESSIONS = """
SELECT id, expires_at FROM sessions
WHERE user_id = %s AND revoked_at IS NULL AND expires_at > %s AND id IN ({ids})
FOR UPDATE
"""
_ERASE_USER = """
UPDATE users SET username = %s, nickname = '', password_hash = '', pepper_version = 0,
    avatar_key = NULL, deleted_at = NOW(6), version = version + 1, updated_at = NOW(6)
WHERE id = %s
"""
# Every blob of the account (its keys start with "<user id>/"), in the deletion's transaction:
# a blob put meanwhile either commits before this statement and is deleted by it, or finds the
# account deleted when it checks afterwards (`account_is_live`) and deletes itself.
_DELETE_USER_BLOBS = "DELETE FROM blobs WHERE blob_key LIKE %s"
# A picture change of the `database` blob store (`change_picture`): the user's row is locked
# first, so changes of one user take turns; the new key's blob is read under a shared lock, so
# a change deleting it either committed before (and it is missing) or waits for this one.
_PICTURE_FOR_UPDATE = "SELECT avatar_key, deleted_at FROM users WHERE id = %s FOR UPDATE"
_BLOB_PRESENT = "SELECT 1 AS present FROM blobs WHERE blob_key = %s LOCK IN SHARE MODE"
_CHANGE_PICTURE = _profile_update(["avatar_key"])
_DELETE_BLOB = "DELETE FROM blobs WHERE blob_key = %s"
_LIVE_SESSION_OF = f"SELECT 1 AS live FROM users u JOIN sessions s ON s.user_id = u.id WHERE {_LIVE_SESSION_CONDITION}"
_LIVE_USER_SHARED = "SELECT id FROM users WHERE id = %s AND deleted_at IS NULL LOCK IN SHARE MODE"
_ERASE_SESSION_DETAILS = """
UPDATE sessions SET user_agent = NULL, ip = NULL, last_seen_at = NULL WHERE user_id = %s
"""
_USER_SESSIONS_FOR_UPDATE = """
SELECT id, expires_at FROM sessions WHERE user_id = %s AND revoked_at IS NULL FOR UPDATE
"""
_REVOKE_SESSIONS = (
    "UPDATE sessions SET revoked_at = NOW(6) WHERE revoked_at IS NULL AND id IN ({ids})"
)


class UsernameTaken(Exception):
    def __init__(self, username: str) -> None:
        super().__init__(
            f"the username {username!r} is taken (usernames are unique regardless of case); "
            "choose another"
        )
        self.username = username


class AccountDeleted(Exception):
    """The account was deleted: nothing about it may be written any more."""

    def __init__(self, user_id: int) -> None:
        super().__init__(f"the account {user_id} is deleted")
        self.user_id = user_id


def freed_username(user_id: int) -> str:
    """What a deleted account's username becomes when deleted usernames may be reused: no
    signup can take it (validation.py allows no '~'), and it is unique per account."""
    return f"~deleted-{user_id}"


class AccountLocked(Exception):
    """The account is locked (AdminLockUser): no session may be opened for it."""

    def __init__(self, user_id: int) -> None:
        super().__init__(f"the account {user_id} is locked")
        self.user_id = user_id


class PictureMissing(Exception):
    """The blob a picture change points the profile at is not in the blob table."""

    def __init__(self, avatar_key: str) -> None:
        super().__init__(f"no blob {avatar_key!r}: it was deleted after it was stored")
        self.avatar_key = avatar_key


@dataclass(frozen=True)
class PictureChange:
    user: UserRecord
    replaced_avatar_key: str  # "" when the profile had no picture; its blob is deleted


class PasswordChanged(Exception):
    """The account's password was changed after a login read the hash it checked: the password
    that login was given is no longer the account's, so it opens no session."""

    def __init__(self, user_id: int) -> None:
        super().__init__(f"the password of account {user_id} was changed during the login")
        self.user_id = user_id


class UserIdTaken(Exception):
    def __init__(self, user_id: int) -> None:
        super().__init__(f"the new user id {user_id} is already in use")
        self.user_id = user_id


@dataclass(frozen=True)
class UserRecord:
    id: int
    username: str
    nickname: str
    avatar_key: str | None
    created_at: datetime
    updated_at: datetime
    version: int


@dataclass(frozen=True)
class SessionDevice:
    """What a login records of its client: the User-Agent and the address ("": unknown)."""

    user_agent: str = ""
    ip: str = ""


@dataclass(frozen=True)
class SessionRecord:
    id: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime | None
    user_agent: str | None
    ip: str | None


@dataclass(frozen=True)
class Credentials:
    user: UserRecord
    password_hash: bytes = field(repr=False)
    pepper_version: int
    # ChangePassword calls so far: a login's session is stored only while this still holds.
    password_changes: int = 0
    deleted: bool = False  # a deleted account: its name is taken, but nobody can log in to it
    locked: bool = False  # a locked account: its password is checked, but it may not log in


@dataclass(frozen=True)
class DeletedAccount:
    user_id: int
    avatar_key: str | None  # the picture the account had, for the HTTP tier to delete
    sessions_ended: int
    blobs_deleted: int  # rows of the blob table (the `database` blob store) deleted with it


@dataclass(frozen=True)
class AccountSummary:
    """What an operator is shown of an account."""

    user: UserRecord
    locked_at: datetime | None
    pepper_version: int
    live_sessions: int


@dataclass(frozen=True)
class LockedAccount:
    account: AccountSummary
    sessions_ended: int  # live sessions the lock ended


class AccountStore:
    """Build it with `AccountStore.open(settings)`; the constructor only wires the parts
    together and `start()` sets them going."""

    def __init__(
        self,
        primary: Database,
        replicas: Sequence[Database],
        cache: RedisCache,
        heartbeat: HeartbeatWriter,
        freshness: ReplicaFreshness,
        pending_tombstones: PendingTombstones,
        last_seen: LastSeen | None = None,
    ) -> None:
        self._primary = primary
        self._replicas = tuple(replicas)
        self._cache = cache
        self._heartbeat = heartbeat
        self._freshness = freshness
        self._pending_tombstones = pending_tombstones
        self._last_seen = last_seen

    @classmethod
    async def open(cls, settings: AuthSettings) -> AccountStore:
        """Open the pools and `start()`; needs neither MySQL nor Redis to be reachable."""
        primary, replicas = await Database.open_all(settings, primary_health=PrimaryHealth())
        cache = RedisCache(
            settings.redis_url,
            timeout=settings.redis_timeout,
            profile_ttl=settings.profile_cache_ttl,
            primary=primary,
            script_timeout=settings.throttle_redis_timeout,
            local_interval=settings.local_cache_heartbeat_interval
            if settings.local_cache
            else None,
            local_entries=settings.local_cache_entries,
        )
        freshness = ReplicaFreshness(primary, replicas, settings.heartbeat_interval)
        store = cls(
            primary,
            replicas,
            cache,
            HeartbeatWriter(
                primary, settings.heartbeat_interval, probe_timeout=settings.primary_probe_timeout
            ),
            freshness,
            PendingTombstones(
                primary,
                cache,
                settings.heartbeat_interval,
                freshness=freshness,
                confirm_timeout=settings.logout_confirm_timeout,
            ),
            LastSeen(
                primary,
                interval=settings.last_seen_interval,
                max_pending=settings.last_seen_max_pending,
            )
            if settings.record_last_seen
            else None,
        )
        await store.start()
        return store

    async def start(self) -> None:
        """Write a first heartbeat, poll the replicas and the pending tombstones once, then keep
        doing all three; prepare Redis."""
        await self._heartbeat.beat()
        self._heartbeat.start()
        await self._freshness.poll()
        self._freshness.start()
        await self._pending_tombstones.poll()
        self._pending_tombstones.start()
        await self._cache.start()
        if self._last_seen is not None:
            self._last_seen.start()

    async def close(self) -> None:
        if self._last_seen is not None:
            await self._last_seen.close()
        await self._heartbeat.close()
        await self._freshness.close()
        await self._pending_tombstones.close()
        await self._cache.close()
        for database in (self._primary, *self._replicas):
            await database.close()

    @property
    def primary(self) -> Database:
        """The primary's pool, shared with the user id blocks (store/id_blocks.py)."""
        return self._primary

    @property
    def cache(self) -> RedisCache:
        """The Redis client, for the login throttle's counters (services/auth/throttle.py)."""
        return self._cache

    @property
    def ready(self) -> bool:
        """Whether the primary answered the last heartbeat."""
        return self._heartbeat.primary_reachable

    @property
    def primary_health(self) -> PrimaryHealth:
        """The primary's breaker, for other pools on the primary (services/auth/store/blobs.py)."""
        return self._heartbeat.health

    def require_primary(self, operation: str) -> None:
        """Raise `PrimaryDown` at once while the primary counts as down: before work (a
        password hash) whose result only the primary could store."""
        self._primary.require_available(operation)

    async def create_user(
        self,
        user_id: int,
        username: str,
        nickname: str,
        password_hash: bytes,
        pepper_version: int,
        *,
        not_after: float | None = None,
    ) -> UserRecord:
        try:
            async with self._primary.transaction("create_user", not_after=not_after) as transaction:
                await transaction.execute(
                    _INSERT_USER, (user_id, username, nickname, password_hash, pepper_version)
                )
                row = await transaction.fetch_one(_USER_BY_ID, (user_id,))
        except DuplicateKey as exc:
            if exc.key == "users_username":
                raise UsernameTaken(username) from None
            if exc.key == "PRIMARY":
                raise UserIdTaken(user_id) from None
            raise
        assert row is not None, "the row inserted by this transaction"
        user = _user_from_row(row)
        # A new user has no older state anywhere: a missed record needs no write floor.
        await self._record_user_write(user, transaction.committed_at, older_state_readable=False)
        return user

    async def find_credentials(self, username: str) -> Credentials | None:
        """The user (as of their last write) with their password hash, or None."""
        if not _storable_username(username):
            return None  # cannot be stored, so no such user
        row, answered_by = await self._read(
            "find_credentials", _ANY_REPLICA, _FIND_CREDENTIALS, (username,)
        )
        if row is not None and answered_by is not self._primary:
            # Only now is the user known: check that the row includes their last write (Redis
            # can tell only while the write floor is known: revocations.py).
            required = (
                await self._cache.required_for(
                    row["id"], floor=self._pending_tombstones.write_floor
                )
                if await self._pending_tombstones.refresh()
                else None
            )
            if required is None or row["as_of"] < required:
                row, _ = await self._read("find_credentials", None, _FIND_CREDENTIALS, (username,))
        if row is None:
            return None
        return Credentials(
            user=_user_from_row(row),
            password_hash=row["password_hash"],
            pepper_version=row["pepper_version"],
            password_changes=row["password_changes"],
            deleted=row["deleted_at"] is not None,
            locked=row["locked_at"] is not None,
        )

    async def rehash_password(
        self,
        user_id: int,
        password_hash: bytes,
        pepper_version: int,
        *,
        replacing: bytes | None = None,
    ) -> None:
        """Replace the hash (after a login under an old pepper or cost). With `replacing`, only
        while that is still the hash: a password changed meanwhile is not undone. Never the
        hash of a deleted account."""
        sql, args = _REHASH_PASSWORD, [password_hash, pepper_version, user_id]
        if replacing is not None:
            sql, args = sql.rstrip() + " AND password_hash = %s", [*args, replacing]
        async with self._primary.transaction("rehash_password") as transaction:
            changed = await transaction.execute(sql, args)
            row = await transaction.fetch_one(_USER_BY_ID, (user_id,)) if changed else None
        if row is not None:
            # Only the hash changed, which no profile shows; an older hash read from a stale
            # replica still verifies under its pepper and costs one more rehash: no write floor.
            await self._record_user_write(
                _user_from_row(row), transaction.committed_at, older_state_readable=False
            )

    async def create_session(
        self,
        user_id: int,
        session_id: str,
        expires_at: datetime,
        device: SessionDevice = SessionDevice(),
        *,
        password_changes: int,
        not_after: float | None = None,
    ) -> None:
        """A new session, recorded as the user's last login: their session list, read anywhere
        right after, includes it (profile reads do not wait for it). `password_changes` is the
        count read with the hash the login checked (Credentials). Raises AccountDeleted,
        AccountLocked or PasswordChanged, storing nothing, if the account was deleted or locked,
        or its password changed, meanwhile. Ends the user's oldest sessions beyond
        MAX_SESSIONS_PER_USER, as a logout does."""
        async with self._primary.statements("create_session", not_after=not_after) as statements:
            inserted = await statements.execute(
                _INSERT_SESSION_OF_LIVE_USER,
                (
                    session_id,
                    expires_at,
                    device.user_agent[:USER_AGENT_COLUMN_LENGTH] or None,
                    device.ip[:IP_COLUMN_LENGTH] or None,
                    user_id,
                    password_changes,
                ),
            )
            if inserted:
                committed_at = await statements.server_time()  # autocommit: after its commit
            else:
                live = await statements.fetch_one(_LIVE_USER_LOCK, (user_id,))
        if not inserted:
            if live is None:
                raise AccountDeleted(user_id)
            raise (
                AccountLocked(user_id)
                if live["locked_at"] is not None
                else PasswordChanged(user_id)
            )
        await self._cache.record_write(
            [
                ActiveSession(session_id, user_id, expires_at, committed_at),
                LastLogin(user_id, committed_at),
            ]
        )
        try:
            await self._end_sessions_past_the_cap(user_id)
        except DatabaseError as exc:  # the login stands: the user's next one ends them
            _CAP_WARNINGS.warn(
                type(exc).__name__,
                "could not end the sessions of user %d past the cap of %d: %s",
                user_id,
                MAX_SESSIONS_PER_USER,
                exc,
            )

    async def _end_sessions_past_the_cap(self, user_id: int) -> None:
        """End the oldest sessions a login pushed past MAX_SESSIONS_PER_USER, as a logout does.
        Apart from the login's insert, so that a failure here cannot fail a committed login."""
        rows = await self._primary.fetch_all(
            "sessions_past_the_cap", _SESSIONS_PAST_THE_CAP, (user_id, MAX_SESSIONS_PER_USER)
        )
        if not rows:
            return
        ended = [SessionTombstone(row["id"], row["expires_at"]) for row in rows]
        async with self._revoking("end_sessions_past_the_cap") as revoking:
            transaction = revoking.transaction
            await transaction.fetch_one(_USER_ROW_SHARED, (user_id,))
            revoking.revoked(user_id, ended)
            await _revoke_sessions(transaction, ended)
        await self._record_revocations(user_id, ended, transaction.committed_at)
        log.debug(  # not a warning: an account's own logins would fill the log
            "a login of user %d ended their %d oldest sessions (at most %d are kept)",
            user_id,
            len(ended),
            MAX_SESSIONS_PER_USER,
        )

    async def session_profile(self, user_id: int, session_id: str) -> UserRecord | None:
        if not _storable_session_id(session_id):
            return None
        # A logout answered before now left its tombstone in Redis or its flag in every current
        # poll, and a flag is cleared only once its tombstone is written (revocations.py). Both
        # checks precede the cache lookup, so that lookup sees any tombstone they rely on.
        relies_on_redis = await self._pending_tombstones.refresh()
        if self._pending_tombstones.includes(session_id):
            return None
        view = (
            await self._cache.session_view(
                user_id, session_id, floor=self._pending_tombstones.write_floor
            )
            if relies_on_redis
            else None
        )
        if view is not None and (view.session_revoked or view.session is not None):
            _count_lookup("session", hit=True)
            if (
                view.session is None
                or view.session.user_id != user_id
                or _expired(view.session.expires_at)
            ):
                return None
            cached_user = _user_from_cache(view.profile) if view.profile is not None else None
            _count_lookup("profile", hit=cached_user is not None)
            if cached_user is not None:
                self._count_if_degraded()
                self._seen(session_id)
                return cached_user
        else:
            _count_lookup("session", hit=False)

        required = view.required if view is not None else None
        row, _ = await self._read(
            "session_profile", required, _SESSION_PROFILE, (session_id, user_id)
        )
        if row is None:
            return None
        if row["revoked_at"] is not None:
            await self._cache.refill([SessionTombstone(session_id, row["expires_at"])])
            return None
        if _expired(row["expires_at"]):
            return None
        user = _user_from_row(row)
        await self._cache.refill(
            [
                ActiveSession(session_id, user_id, row["expires_at"], row["as_of"]),
                _cached_profile(user, row["as_of"]),
            ]
        )
        self._count_if_degraded()
        self._seen(session_id)
        return user

    def _seen(self, session_id: str) -> None:
        if self._last_seen is not None:
            self._last_seen.seen(session_id)

    async def live_sessions(
        self, user_id: int, *, limit: int = LISTED_SESSIONS
    ) -> list[SessionRecord]:
        """The user's sessions neither revoked nor expired, newest first, at most `limit` (an
        export asks for MAX_SESSIONS_PER_USER: all); read where their last write (a login, a
        logout) is applied. Uses noted but not yet written are included."""
        required = await self._cache.required_for(user_id, logins=True)
        rows, _ = await self._read_rows(
            "live_sessions", required, _LIVE_SESSIONS, (user_id, datetime.now(UTC), limit)
        )
        return [self._session_record(row) for row in rows if row["id"] is not None]

    def _session_record(self, row: Row) -> SessionRecord:
        last_seen_at: datetime | None = row["last_seen_at"]
        noted = self._last_seen.pending(row["id"]) if self._last_seen is not None else None
        if noted is not None and (last_seen_at is None or noted > last_seen_at):
            last_seen_at = noted
        return SessionRecord(
            id=row["id"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            last_seen_at=last_seen_at,
            user_agent=row["user_agent"],
            ip=row["ip"],
        )

    def _count_if_degraded(self) -> None:
        if not self._heartbeat.primary_reachable:
            DEGRADED_READS.inc()

    async def update_profile(
        self,
        user_id: int,
        session_id: str,
        *,
        nickname: str | None = None,
        avatar_key: str | None = None,
        not_after: float | None = None,
    ) -> UserRecord | None:
        """Change the given fields (None: keep; avatar_key "": remove the avatar) if the session
        is live on the primary. The updated profile, or None for a dead session. With nothing
        to change it answers like `session_profile`."""
        changes: dict[str, str | None] = {}
        if nickname is not None:
            changes["nickname"] = nickname
        if avatar_key is not None:
            changes["avatar_key"] = avatar_key or None
        if not changes:
            return await self.session_profile(user_id, session_id)
        if not _storable_session_id(session_id):
            return None
        async with self._primary.transaction("update_profile", not_after=not_after) as transaction:
            updated = await transaction.execute(
                _profile_update(list(changes)),
                (*changes.values(), user_id, session_id, datetime.now(UTC)),
            )
            row = await transaction.fetch_one(_USER_BY_ID, (user_id,)) if updated else None
            deleted = (
                row is None
                and await transaction.fetch_one(
                    "SELECT id FROM users WHERE id = %s AND deleted_at IS NOT NULL", (user_id,)
                )
                is not None
            )
        if deleted:
            raise AccountDeleted(user_id)
        if row is None:
            return None
        user = _user_from_row(row)
        await self._record_user_write(user, transaction.committed_at, older_state_readable=True)
        return user

    async def change_picture(
        self, user_id: int, session_id: str, avatar_key: str, *, not_after: float | None = None
    ) -> PictureChange | None:
        """Point the profile at `avatar_key` ("": no picture), a blob of the blob table, if the
        session is live on the primary (None if not, and the new blob, named by nothing, is
        deleted), and delete the blob of the key it replaces if that is one of the user's, in
        one transaction under the user's row lock.
        Raises PictureMissing when the new key's blob is not there (a concurrent change deleted
        it after this upload stored it: put it again and retry), AccountDeleted as
        update_profile does."""
        if not _storable_session_id(session_id):
            return None
        async with self._primary.transaction("change_picture", not_after=not_after) as transaction:
            current = await transaction.fetch_one(_PICTURE_FOR_UPDATE, (user_id,))
            deleted = current is not None and current["deleted_at"] is not None
            live = present = False
            row: Row | None = None
            replaced = ""
            if current is not None and not deleted:  # a deleted account's blobs went with it
                live_args = (user_id, session_id, datetime.now(UTC))
                present = not avatar_key or bool(
                    await transaction.fetch_one(_BLOB_PRESENT, (avatar_key,))
                )
                if not present:
                    live = await transaction.fetch_one(_LIVE_SESSION_OF, live_args) is not None
                elif await transaction.execute(_CHANGE_PICTURE, (avatar_key or None, *live_args)):
                    live = True
                    row = await transaction.fetch_one(_USER_BY_ID, (user_id,))
                    replaced = current["avatar_key"] or ""
                    if replaced != avatar_key and replaced.startswith(f"{user_id}/"):
                        await transaction.execute(_DELETE_BLOB, (replaced,))
                elif avatar_key != current["avatar_key"] and avatar_key.startswith(f"{user_id}/"):
                    # The session ended after the upload stored its picture, which nothing
                    # names now; the HTTP tier cannot delete it with that session any more.
                    await transaction.execute(_DELETE_BLOB, (avatar_key,))
        if deleted:
            raise AccountDeleted(user_id)
        if not live:
            return None
        if not present:
            raise PictureMissing(avatar_key)
        assert row is not None, "the row this transaction updated"
        user = _user_from_row(row)
        await self._record_user_write(user, transaction.committed_at, older_state_readable=True)
        return PictureChange(user, replaced)

    async def delete_unused_blob(
        self, owner: int, key: str, *, not_after: float | None = None
    ) -> bool:
        """Delete the blob `key` of the user `owner` unless their live profile names it, under
        the user's row lock as change_picture takes it; whether it was deleted. A delete sent
        for a picture nothing named can land late (a hedge, a replica that thawed) after the
        same picture, whose key is its hash, was uploaded again and named by the profile."""
        async with self._primary.transaction(
            "delete_unused_blob", not_after=not_after
        ) as transaction:
            current = await transaction.fetch_one(_PICTURE_FOR_UPDATE, (owner,))
            if (
                current is not None
                and current["deleted_at"] is None
                and current["avatar_key"] == key
            ):
                return False  # the live profile names it
            await transaction.execute(_DELETE_BLOB, (key,))
        return True

    async def revoke_session(
        self, user_id: int, session_id: str, *, not_after: float | None = None
    ) -> bool:
        """Revoke on the primary, then tombstone the cache entry, or if Redis does not take the
        tombstone, flag the session and wait until every replica treats it as revoked. True if
        the session is this user's (revoked now or before), False if there is no such session.

        The revocation is recorded as the user's last write too: should the tombstone be lost
        (evicted, deleted), a read of the session still goes only to a replica that holds the
        revocation, or to the primary."""
        return await self._revoke(user_id, session_id, not_after=not_after) is not None

    async def end_session(
        self, user_id: int, session_id: str, *, not_after: float | None = None
    ) -> bool:
        """Revoke as `revoke_session` does; True only if the session was this user's and live
        (neither revoked nor expired) until now."""
        return bool(await self._revoke(user_id, session_id, not_after=not_after))

    async def end_sessions(
        self, user_id: int, *, keep: str | None = None, not_after: float | None = None
    ) -> int:
        """Revoke every live session of the user but `keep` (None: all of them), as
        `revoke_session` does each; how many were live."""
        now = datetime.now(UTC)
        args = (user_id, now, keep or "")
        async with self._revoking("end_sessions", not_after=not_after) as revoking:
            transaction = revoking.transaction
            await transaction.fetch_one(_USER_ROW_SHARED, (user_id,))
            rows = await transaction.fetch_all(_LIVE_SESSIONS_BUT, args)
            tombstones = [SessionTombstone(row["id"], row["expires_at"]) for row in rows]
            revoking.revoked(user_id, tombstones)
            if rows:
                await transaction.execute(_END_SESSIONS_BUT, args)
        await self._record_revocations(user_id, tombstones, transaction.committed_at)
        return len(tombstones)

    async def _revoke(
        self, user_id: int, session_id: str, *, not_after: float | None = None
    ) -> bool | None:
        """None: no such session of this user; else whether it was live until this revoke."""
        if not _storable_session_id(session_id):
            return None
        async with self._revoking("revoke_session", not_after=not_after) as revoking:
            transaction = revoking.transaction
            revoked_now = await transaction.execute(_REVOKE_SESSION, (session_id, user_id)) > 0
            row = await transaction.fetch_one(
                "SELECT expires_at FROM sessions WHERE id = %s AND user_id = %s",
                (session_id, user_id),
            )
            if row is not None:
                tombstone = SessionTombstone(session_id, row["expires_at"])
                revoking.revoked(user_id, [tombstone])
        if row is None:
            return None
        await self._record_revocations(user_id, [tombstone], transaction.committed_at)
        return revoked_now and not _expired(row["expires_at"])

    async def change_password(
        self,
        user_id: int,
        session_id: str,
        password_hash: bytes,
        pepper_version: int,
        *,
        not_after: float | None = None,
    ) -> int | None:
        """Store the new hash and revoke every other session of the user, in one transaction,
        if the session is live (None if not); then as `revoke_session` for each. How many
        sessions were ended."""
        if not _storable_session_id(session_id):
            return None
        revoked: list[SessionTombstone] | None = None
        async with self._revoking("change_password", not_after=not_after) as revoking:
            transaction = revoking.transaction
            changed = await transaction.execute(
                _CHANGE_PASSWORD,
                (password_hash, pepper_version, user_id, session_id, datetime.now(UTC)),
            )
            if changed:
                revoked = await _revoke_user_sessions(revoking, user_id, keep=session_id)
                row = await transaction.fetch_one(_USER_BY_ID, (user_id,))
        if revoked is None:
            return None
        assert row is not None, "the row this transaction updated"
        user = _user_from_row(row)
        await self._record_revocations(
            user_id,
            revoked,
            transaction.committed_at,
            [_cached_profile(user, transaction.committed_at)],
        )
        return len(revoked)

    async def delete_account(
        self,
        user_id: int,
        session_id: str,
        *,
        free_username: bool,
        not_after: float | None = None,
    ) -> DeletedAccount | None:
        """Erase the account of a live session (None if it is not): the profile and the
        personal details of its sessions, every session revoked, `deleted_at` set, in one
        transaction that holds the user's row. Then the revocations as `revoke_session` records
        them, and in the profile cache an erased entry newer than any the account had, so no
        late write of an older version can put the profile back."""
        if not _storable_session_id(session_id):
            return None
        return await self._delete(
            "delete_account",
            _LIVE_ACCOUNT_FOR_DELETION,
            (user_id, session_id, datetime.now(UTC)),
            free_username=free_username,
            not_after=not_after,
        )

    async def delete_named_account(
        self, username: str, *, free_username: bool, not_after: float | None = None
    ) -> DeletedAccount | None:
        """Erase the account of `username` as `delete_account` does (None: no live account)."""
        if not _storable_username(username):
            return None
        return await self._delete(
            "delete_named_account",
            _NAMED_ACCOUNT_FOR_UPDATE,
            (username,),
            free_username=free_username,
            not_after=not_after,
        )

    async def _delete(
        self,
        operation: str,
        account_sql: str,
        args: Sequence[object],
        *,
        free_username: bool,
        not_after: float | None,
    ) -> DeletedAccount | None:
        """The deletion of the one account `account_sql` selects and locks (id, username,
        avatar_key), if any."""
        revoked: list[SessionTombstone] | None = None
        async with self._revoking(operation, not_after=not_after) as revoking:
            transaction = revoking.transaction
            account = await transaction.fetch_one(account_sql, args)
            if account is not None:
                user_id = account["id"]
                username = freed_username(user_id) if free_username else account["username"]
                await transaction.execute(_ERASE_USER, (username, user_id))
                revoked = await _revoke_user_sessions(revoking, user_id, keep=None)
                await transaction.execute(_ERASE_SESSION_DETAILS, (user_id,))
                blobs_deleted = await transaction.execute(_DELETE_USER_BLOBS, (f"{user_id}/%",))
                row = await transaction.fetch_one(_USER_BY_ID, (user_id,))
        if revoked is None or account is None:
            return None
        assert row is not None, "the row this transaction updated"
        erased = _cached_profile(_user_from_row(row), transaction.committed_at, deleted=True)
        await self._record_revocations(account["id"], revoked, transaction.committed_at, [erased])
        return DeletedAccount(
            user_id=account["id"],
            avatar_key=account["avatar_key"],
            sessions_ended=len(revoked),
            blobs_deleted=blobs_deleted,
        )

    async def account_is_live(self, user_id: int) -> bool:
        """Whether the primary has the account and it is not deleted. The shared lock waits for
        a deletion in progress (it holds the row's exclusive lock) and then sees its outcome."""
        return (
            await self._primary.fetch_one("account_is_live", _LIVE_USER_SHARED, (user_id,))
            is not None
        )

    async def account_summary(self, username: str) -> AccountSummary | None:
        """The live account of `username` as the primary has it; None if there is none."""
        if not _storable_username(username):
            return None
        row = await self._primary.fetch_one(
            "account_summary",
            _ACCOUNT_SUMMARY.format(match="u.username = %s"),
            (datetime.now(UTC), username),
        )
        return None if row is None else _account_summary(row)

    async def lock_account(
        self, username: str, *, not_after: float | None = None
    ) -> LockedAccount | None:
        """Lock the live account of `username` (None if there is none; locking a locked one
        changes nothing) and revoke every session it has, in one transaction holding its row;
        then the revocations and the changed row are recorded as `change_password` records
        them, so every replica refuses the sessions and sees the lock."""
        if not _storable_username(username):
            return None
        revoked: list[SessionTombstone] | None = None
        async with self._revoking("lock_account", not_after=not_after) as revoking:
            transaction = revoking.transaction
            account = await transaction.fetch_one(_NAMED_ACCOUNT_FOR_UPDATE, (username,))
            if account is not None:
                await transaction.execute(_LOCK_ACCOUNT, (account["id"],))
                revoked = await _revoke_user_sessions(revoking, account["id"], keep=None)
                row = await self._summary_in(transaction, account["id"])
        if revoked is None or account is None:
            return None
        summary = _account_summary(row)
        await self._record_revocations(
            summary.user.id,
            revoked,
            transaction.committed_at,
            [_cached_profile(summary.user, transaction.committed_at)],
        )
        ended = sum(1 for entry in revoked if not _expired(entry.expires_at))
        return LockedAccount(account=summary, sessions_ended=ended)

    async def unlock_account(
        self, username: str, *, not_after: float | None = None
    ) -> AccountSummary | None:
        """Clear the lock of the live account of `username` (None if there is none); a login
        answered after this returns, on any replica, sees the account unlocked."""
        if not _storable_username(username):
            return None
        async with self._primary.transaction("unlock_account", not_after=not_after) as transaction:
            account = await transaction.fetch_one(_NAMED_ACCOUNT_FOR_UPDATE, (username,))
            if account is not None:
                await transaction.execute(_UNLOCK_ACCOUNT, (account["id"],))
                row = await self._summary_in(transaction, account["id"])
        if account is None:
            return None
        summary = _account_summary(row)
        await self._record_user_write(
            summary.user, transaction.committed_at, older_state_readable=True
        )
        return summary

    async def end_named_sessions(
        self, user_id: int, ids: Sequence[str], *, not_after: float | None = None
    ) -> list[str]:
        """Revoke those of `ids` that name a live session of the user, in one transaction,
        then as `revoke_session` does each; the ids that were live (and are ended now)."""
        wanted = list(dict.fromkeys(id_ for id_ in ids if _storable_session_id(id_)))
        if not wanted:
            return []
        revoked: list[SessionTombstone] = []
        async with self._revoking("end_named_sessions", not_after=not_after) as revoking:
            transaction = revoking.transaction
            await transaction.fetch_one(_USER_ROW_SHARED, (user_id,))
            for start in range(0, len(wanted), _REVOKE_BATCH):
                batch = wanted[start : start + _REVOKE_BATCH]
                rows = await transaction.fetch_all(
                    _NAMED_LIVE_SESSIONS.format(ids=", ".join(["%s"] * len(batch))),
                    (user_id, datetime.now(UTC), *batch),
                )
                revoked += [SessionTombstone(row["id"], row["expires_at"]) for row in rows]
            revoking.revoked(user_id, revoked)
            await _revoke_sessions(transaction, revoked)
        await self._record_revocations(user_id, revoked, transaction.committed_at)
        return [entry.session_id for entry in revoked]

    @staticmethod
    async def _summary_in(transaction: Transaction, user_id: int) -> Row:
        row = await transaction.fetch_one(
            _ACCOUNT_SUMMARY.format(match="u.id = %s"), (datetime.now(UTC), user_id)
        )
        assert row is not None, "the row this transaction holds"
        return row

    @asynccontextmanager
    async def _revoking(
        self, operation: str, *, not_after: float | None = None
    ) -> AsyncIterator[_Revoking]:
        """The primary's transaction for a write that revokes sessions, which the block names
        with `revoked` before revoking them. Should the transaction fail once its COMMIT was
        sent (the answer lost, the clock read after it timed out), the revocations may have
        landed with no tombstone to tell the cache, which would keep serving those sessions:
        they are recorded as revoked all the same, then the error is raised. A session the
        caller asked to end is then refused even if the COMMIT did not land: the caller was
        answered that the write failed, and its retry ends it anyway."""
        revoking: _Revoking | None = None
        try:
            async with self._primary.transaction(operation, not_after=not_after) as transaction:
                revoking = _Revoking(transaction)
                yield revoking
        except DatabaseError as exc:
            if (
                revoking is not None
                and revoking.tombstones
                and revoking.transaction.commit_outcome_unknown(exc)
            ):
                await self._record_revocations_in_doubt(
                    operation, revoking.user_id, revoking.tombstones, exc
                )
            raise

    async def _record_revocations_in_doubt(
        self,
        operation: str,
        user_id: int,
        tombstones: Sequence[SessionTombstone],
        error: DatabaseError,
    ) -> None:
        REVOCATIONS_IN_DOUBT.inc()
        _IN_DOUBT_WARNINGS.warn(
            operation,
            "%s of user %d failed after its COMMIT was sent (%s): its %d session(s) are recorded"
            " as revoked in case it landed; repeats are logged once per 10 s",
            operation,
            user_id,
            error,
            len(tombstones),
        )
        try:
            # A COMMIT the server is still at (a flush, a semi-synchronous wait) may land after
            # this clock read, within the statement timeout it is allowed.
            committed_by: datetime | None = await self._primary.server_time() + timedelta(
                seconds=self._primary.timeout
            )
        except DatabaseError:
            committed_by = None
        await self._record_revocations(user_id, tombstones, committed_by)

    async def _record_revocations(
        self,
        user_id: int,
        tombstones: Sequence[SessionTombstone],
        committed_at: datetime | None,
        also: Sequence[CacheEntry] = (),
    ) -> None:
        """Tombstone the revoked sessions in Redis with the user's last write, or flag those
        Redis did not take and wait until every replica treats them as revoked
        (revocations.py). `also` (the user's changed profile) goes with the first batch; if
        Redis does not take it, the write floor is raised as `_record_user_write` does.
        `committed_at` None: unknown (a COMMIT in doubt, the primary unreachable since), so no
        last write is recorded, only the tombstones or flags."""
        last_write = [] if committed_at is None else [LastWrite(user_id, committed_at)]
        batches = [
            tombstones[start : start + REPAIR_BATCH]
            for start in range(0, len(tombstones), REPAIR_BATCH)
        ] or [()]
        unrecorded: list[str] = []
        for index, batch in enumerate(batches):
            extra = also if index == 0 else ()
            if await self._cache.record_write([*batch, *last_write, *extra]):
                continue
            if extra:
                assert committed_at is not None, "a changed profile comes with its commit time"
                await self._pending_tombstones.raise_write_floor(committed_at)
            unrecorded += [entry.session_id for entry in batch if not _expired(entry.expires_at)]
        if unrecorded:
            await self._pending_tombstones.flag_many(unrecorded)

    async def _record_user_write(
        self, user: UserRecord, committed_at: datetime, *, older_state_readable: bool
    ) -> None:
        """Record the write in Redis. If Redis does not take it and a read could find the user's
        older state (`older_state_readable`: a cached profile, a replica's row), raise the write
        floor and wait until every replica honours it (about 1.25 s, revocations.py), so that
        no read answered after this returns misses the write. Raises DatabaseError if the floor
        cannot be confirmed: answer the write as failed (it is committed; a retry is harmless)."""
        recorded = await self._cache.record_write(
            [LastWrite(user.id, committed_at), _cached_profile(user, committed_at)]
        )
        if not recorded and older_state_readable:
            await self._pending_tombstones.raise_write_floor(committed_at)

    async def _read(
        self, operation: str, required: datetime | None, sql: str, args: Sequence[object]
    ) -> tuple[Row | None, Database]:
        """The first row of `sql`, and the server that answered: see `_read_rows`."""
        rows, answered_by = await self._read_rows(operation, required, sql, args)
        return (rows[0] if rows else None), answered_by

    async def _read_rows(
        self, operation: str, required: datetime | None, sql: str, args: Sequence[object]
    ) -> tuple[list[Row], Database]:
        """The rows of `sql`, and the server that answered: a replica that has applied the
        primary's history through `required` (the first row's `as_of` says), else the primary
        (also when `required` is None: nothing is known). A replica that fails, answers no row
        or proves staler than `required` hands over to the primary."""
        if required is not None:
            reader = self._freshness.pick_reader(required)
            if reader is not self._primary:
                DB_READS.labels("replica").inc()
                try:
                    rows = await reader.fetch_all(operation, sql.format(as_of=_REPLICA_AS_OF), args)
                except DatabaseError as exc:
                    log.debug("replica read failed, reading the primary: %s", exc)
                else:
                    as_of = rows[0]["as_of"] if rows else None
                    if as_of is not None and as_of >= required:
                        return rows, reader
        DB_READS.labels("primary").inc()
        rows = await self._primary.fetch_all(operation, sql.format(as_of=_PRIMARY_AS_OF), args)
        return rows, self._primary


@dataclass
class _Revoking:
    """A transaction that revokes sessions, and the user and sessions it revokes."""

    transaction: Transaction
    user_id: int = 0
    tombstones: Sequence[SessionTombstone] = ()

    def revoked(self, user_id: int, tombstones: Sequence[SessionTombstone]) -> None:
        self.user_id = user_id
        self.tombstones = tombstones


async def _revoke_user_sessions(
    revoking: _Revoking, user_id: int, *, keep: str | None
) -> list[SessionTombstone]:
    """Revoke every unrevoked session of the user but `keep`, inside `revoking`'s transaction;
    what was revoked."""
    rows = await revoking.transaction.fetch_all(_USER_SESSIONS_FOR_UPDATE, (user_id,))
    revoked = [SessionTombstone(row["id"], row["expires_at"]) for row in rows if row["id"] != keep]
    revoking.revoked(user_id, revoked)
    await _revoke_sessions(revoking.transaction, revoked)
    return revoked


async def _revoke_sessions(transaction: Transaction, sessions: Sequence[SessionTombstone]) -> None:
    """Revoke `sessions` inside `transaction`, in batches of _REVOKE_BATCH."""
    for start in range(0, len(sessions), _REVOKE_BATCH):
        ids = [entry.session_id for entry in sessions[start : start + _REVOKE_BATCH]]
        await transaction.execute(_REVOKE_SESSIONS.format(ids=", ".join(["%s"] * len(ids))), ids)


def _storable_session_id(session_id: str) -> bool:
    return session_id.isascii() and 0 < len(session_id) <= SESSION_ID_COLUMN_LENGTH


def _storable_username(username: str) -> bool:
    """Whether `username` can be an account's name. Not with a trailing space: the column's
    collation pads (PAD SPACE), so 'bob ' would find 'bob', and no account's name ends with one
    (validation.py; freed_username)."""
    return (
        username.isascii()
        and 0 < len(username) <= USERNAME_COLUMN_LENGTH
        and not username.endswith(" ")
    )


def _expired(expires_at: datetime) -> bool:
    return expires_at <= datetime.now(UTC)


_CACHE_LOOKUPS = LabelledChildren(CACHE_LOOKUPS)


def _count_lookup(cache: str, *, hit: bool) -> None:
    _CACHE_LOOKUPS(cache, "hit" if hit else "miss").inc()


def _user_from_row(row: Row) -> UserRecord:
    return UserRecord(
        id=row["id"],
        username=row["username"],
        nickname=row["nickname"],
        avatar_key=row["avatar_key"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


def _account_summary(row: Row) -> AccountSummary:
    return AccountSummary(
        user=_user_from_row(row),
        locked_at=row["locked_at"],
        pepper_version=row["pepper_version"],
        live_sessions=int(row["live_sessions"]),
    )


def _cached_profile(user: UserRecord, as_of: datetime, *, deleted: bool = False) -> CachedProfile:
    data: dict[str, Any] = {
        "deleted": deleted,
        "username": user.username,
        "nickname": user.nickname,
        "avatar_key": user.avatar_key,
        "created_at": user.created_at.isoformat(),
        "updated_at": user.updated_at.isoformat(),
    }
    return CachedProfile(user_id=user.id, version=user.version, as_of=as_of, data=data)


def _user_from_cache(profile: CachedProfile) -> UserRecord | None:
    data = profile.data
    if data.get("deleted"):
        return None  # an erased account: MySQL says it is gone
    try:
        return UserRecord(
            id=profile.user_id,
            username=str(data["username"]),
            nickname=str(data["nickname"]),
            avatar_key=None if data["avatar_key"] is None else str(data["avatar_key"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
            version=profile.version,
        )
    except (KeyError, TypeError, ValueError):
        return None  # not written by this release: read MySQL instead
