"""Accounts and sessions: the only module with account SQL (the flag of logouts that did not
reach Redis is revocations.py's).

`AccountStore` writes to the MySQL primary, reads from a replica only when the read-your-writes
rule allows it (docs/design.md; freshness.py), and caches sessions and profiles in Redis
(cache.py). Redis trouble never reaches callers: they are served from the primary instead.
A logout whose tombstone Redis did not take is flagged on the primary and answers only once every
replica treats the session as revoked (revocations.py), a few heartbeat intervals later.
MySQL trouble raises `DatabaseError` (`DatabaseTimeout` when too slow): answer it as UNAVAILABLE.

While the primary is down (its heartbeat failed, health.py), every primary operation raises
`PrimaryDown` at once, and session reads go on from Redis and the read replicas; only a user
whose last write no replica holds gets `PrimaryDown` (docs/design.md, "A primary outage").

    store = await AccountStore.open(settings)  # after apply_migrations (migrate.py)
    store.ready                                 # the last heartbeat reached the primary
    store.require_primary(operation)            # PrimaryDown at once while it counts as down
    await store.create_user(user_id, username, nickname, password_hash, pepper_version)
        -> UserRecord
        raises UsernameTaken; usernames are unique regardless of case, stored as registered;
        raises UserIdTaken if `user_id` is in use (two id sources made the same id: a bug)
    await store.find_credentials(username) -> Credentials | None  # (user, hash, pepper version)
    await store.rehash_password(user_id, password_hash, pepper_version, replacing=old_hash)
    await store.create_session(user_id, session_id, expires_at) -> None
        raises AccountDeleted if the account was deleted since its password was checked
    await store.session_profile(user_id, session_id) -> UserRecord | None
    await store.update_profile(user_id, session_id, nickname=..., avatar_key=...)
        -> UserRecord | None
    await store.revoke_session(user_id, session_id) -> bool
    await store.change_password(user_id, session_id, password_hash, pepper_version) -> int | None
        # the new hash, and every other session of the user revoked: how many
    await store.delete_account(user_id, session_id, free_username=...) -> DeletedAccount | None
        # the profile erased, every session revoked (docs/design.md, "Deleting an account")
    await store.close()

A deleted account keeps its row, erased (`deleted_at` set): every read treats it as gone, and
`find_credentials` reports it `deleted` (its name is taken for signups, unknown for logins).

Values are stored as given: validate them first (services.auth.validation). A session call
answers None when the session is unknown, revoked, expired or belongs to another user.
Expiry is judged by this replica's clock; `expires_at` must be timezone-aware.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.auth.metrics import CACHE_LOOKUPS, DB_READS, DEGRADED_READS
from services.auth.settings import AuthSettings
from services.auth.store.cache import (
    ActiveSession,
    CachedProfile,
    CacheEntry,
    LastWrite,
    RedisCache,
    SessionTombstone,
)
from services.auth.store.database import Database, DatabaseError, DuplicateKey, Row, Transaction
from services.auth.store.freshness import HeartbeatWriter, ReplicaFreshness
from services.auth.store.health import PrimaryHealth
from services.auth.store.revocations import PendingTombstones

log = logging.getLogger(__name__)

USERNAME_COLUMN_LENGTH = 30
SESSION_ID_COLUMN_LENGTH = 64

_USER_COLUMNS = "u.id, u.username, u.nickname, u.avatar_key, u.created_at, u.updated_at, u.version"
# `{as_of}` in a read is replaced by a primary time the row is known to include. On the primary
# it is never below the heartbeat row, so entries it refills count even while the primary's
# clock is behind the row (freshness.py): a write not yet visible to the read has a time past it.
_PRIMARY_AS_OF = "GREATEST(NOW(6), (SELECT beat FROM replication_heartbeat WHERE id = 1))"
_REPLICA_AS_OF = "(SELECT beat FROM replication_heartbeat WHERE id = 1)"
# Credentials are looked up by name, before the user's last write is known: any replica first.
_ANY_REPLICA = datetime.min.replace(tzinfo=UTC)

_FIND_CREDENTIALS = f"""
SELECT {_USER_COLUMNS}, u.password_hash, u.pepper_version, u.deleted_at, {{as_of}} AS as_of
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
# A login's session is stored only while its account is not deleted: the shared lock waits for
# a deletion in progress (which holds the row's exclusive lock) and then sees its outcome.
_LIVE_USER_FOR_SESSION = (
    "SELECT id FROM users WHERE id = %s AND deleted_at IS NULL LOCK IN SHARE MODE"
)
_INSERT_SESSION = """
INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES (%s, %s, NOW(6), %s)
"""
_REVOKE_SESSION = """
UPDATE sessions SET revoked_at = NOW(6) WHERE id = %s AND user_id = %s AND revoked_at IS NULL
"""
_LIVE_SESSION_CONDITION = (
    "u.id = %s AND s.id = %s AND s.revoked_at IS NULL AND s.expires_at > %s"
    " AND u.deleted_at IS NULL"
)
_CHANGE_PASSWORD = f"""
UPDATE users u JOIN sessions s ON s.user_id = u.id
SET u.password_hash = %s, u.pepper_version = %s, u.version = u.version + 1, u.updated_at = NOW(6)
WHERE {_LIVE_SESSION_CONDITION}
"""
# Locks the user's row (and the session's) until the deletion commits: profile updates, logins
# and password changes of the account wait for it and then see the account deleted.
_LIVE_ACCOUNT_FOR_DELETION = f"""
SELECT u.username, u.avatar_key FROM users u JOIN sessions s ON s.user_id = u.id
WHERE {_LIVE_SESSION_CONDITION} FOR UPDATE
"""
_ERASE_USER = """
UPDATE users SET username = %s, nickname = '', password_hash = '', pepper_version = 0,
    avatar_key = NULL, deleted_at = NOW(6), version = version + 1, updated_at = NOW(6)
WHERE id = %s
"""
_ERASE_SESSION_DETAILS = """
UPDATE sessions SET user_agent = NULL, ip = NULL, last_seen_at = NULL WHERE user_id = %s
"""
_USER_SESSIONS_FOR_UPDATE = """
SELECT id, expires_at FROM sessions WHERE user_id = %s AND revoked_at IS NULL FOR UPDATE
"""
_REVOKE_SESSIONS = (
    "UPDATE sessions SET revoked_at = NOW(6) WHERE revoked_at IS NULL AND id IN ({ids})"
)
# Sessions revoked per UPDATE when a password change or a deletion ends them all.
_REVOKE_BATCH = 500


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
class Credentials:
    user: UserRecord
    password_hash: bytes = field(repr=False)
    pepper_version: int
    deleted: bool = False  # a deleted account: its name is taken, but nobody can log in to it


@dataclass(frozen=True)
class DeletedAccount:
    avatar_key: str | None  # the picture the account had, for the HTTP tier to delete
    sessions_ended: int


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
    ) -> None:
        self._primary = primary
        self._replicas = tuple(replicas)
        self._cache = cache
        self._heartbeat = heartbeat
        self._freshness = freshness
        self._pending_tombstones = pending_tombstones

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

    async def close(self) -> None:
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
        self, user_id: int, username: str, nickname: str, password_hash: bytes, pepper_version: int
    ) -> UserRecord:
        try:
            async with self._primary.transaction("create_user") as transaction:
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
        await self._record_user_write(user, transaction.committed_at)
        return user

    async def find_credentials(self, username: str) -> Credentials | None:
        """The user (as of their last write) with their password hash, or None."""
        if not (username.isascii() and 0 < len(username) <= USERNAME_COLUMN_LENGTH):
            return None  # cannot be stored, so no such user
        row, answered_by = await self._read(
            "find_credentials", _ANY_REPLICA, _FIND_CREDENTIALS, (username,)
        )
        if row is not None and answered_by is not self._primary:
            # Only now is the user known: check that the row includes their last write.
            required = await self._cache.required_for(row["id"])
            if required is None or row["as_of"] < required:
                row, _ = await self._read("find_credentials", None, _FIND_CREDENTIALS, (username,))
        if row is None:
            return None
        return Credentials(
            user=_user_from_row(row),
            password_hash=row["password_hash"],
            pepper_version=row["pepper_version"],
            deleted=row["deleted_at"] is not None,
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
            await self._record_user_write(_user_from_row(row), transaction.committed_at)

    async def create_session(self, user_id: int, session_id: str, expires_at: datetime) -> None:
        async with self._primary.transaction("create_session") as transaction:
            live = await transaction.fetch_one(_LIVE_USER_FOR_SESSION, (user_id,))
            if live is not None:
                await transaction.execute(_INSERT_SESSION, (session_id, user_id, expires_at))
        if live is None:
            raise AccountDeleted(user_id)
        await self._cache.refill(
            [ActiveSession(session_id, user_id, expires_at, transaction.committed_at)]
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
        view = await self._cache.session_view(user_id, session_id) if relies_on_redis else None
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
        return user

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
        assignments = ", ".join(f"u.{column} = %s" for column in changes)
        async with self._primary.transaction("update_profile") as transaction:
            updated = await transaction.execute(
                f"UPDATE users u JOIN sessions s ON s.user_id = u.id"
                f" SET {assignments}, u.version = u.version + 1, u.updated_at = NOW(6)"
                f" WHERE {_LIVE_SESSION_CONDITION}",
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
        await self._record_user_write(user, transaction.committed_at)
        return user

    async def revoke_session(self, user_id: int, session_id: str) -> bool:
        """Revoke on the primary, then tombstone the cache entry, or if Redis does not take the
        tombstone, flag the session and wait until every replica treats it as revoked. True if
        the session is this user's (revoked now or before), False if there is no such session.

        The revocation is recorded as the user's last write too: should the tombstone be lost
        (evicted, deleted), a read of the session still goes only to a replica that holds the
        revocation, or to the primary."""
        if not _storable_session_id(session_id):
            return False
        async with self._primary.transaction("revoke_session") as transaction:
            await transaction.execute(_REVOKE_SESSION, (session_id, user_id))
            row = await transaction.fetch_one(
                "SELECT expires_at FROM sessions WHERE id = %s AND user_id = %s",
                (session_id, user_id),
            )
        if row is None:
            return False
        tombstone = SessionTombstone(session_id, row["expires_at"])
        await self._record_revocations(user_id, [tombstone], transaction.committed_at)
        return True

    async def change_password(
        self, user_id: int, session_id: str, password_hash: bytes, pepper_version: int
    ) -> int | None:
        """Store the new hash and revoke every other session of the user, in one transaction,
        if the session is live (None if not); then as `revoke_session` for each. How many
        sessions were ended."""
        if not _storable_session_id(session_id):
            return None
        revoked: list[SessionTombstone] | None = None
        async with self._primary.transaction("change_password") as transaction:
            changed = await transaction.execute(
                _CHANGE_PASSWORD,
                (password_hash, pepper_version, user_id, session_id, datetime.now(UTC)),
            )
            if changed:
                revoked = await _revoke_user_sessions(transaction, user_id, keep=session_id)
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
        self, user_id: int, session_id: str, *, free_username: bool
    ) -> DeletedAccount | None:
        """Erase the account of a live session (None if it is not): the profile and the
        personal details of its sessions, every session revoked, `deleted_at` set, in one
        transaction that holds the user's row. Then the revocations as `revoke_session` records
        them, and in the profile cache an erased entry newer than any the account had, so no
        late write of an older version can put the profile back."""
        if not _storable_session_id(session_id):
            return None
        revoked: list[SessionTombstone] | None = None
        async with self._primary.transaction("delete_account") as transaction:
            account = await transaction.fetch_one(
                _LIVE_ACCOUNT_FOR_DELETION, (user_id, session_id, datetime.now(UTC))
            )
            if account is not None:
                username = freed_username(user_id) if free_username else account["username"]
                await transaction.execute(_ERASE_USER, (username, user_id))
                revoked = await _revoke_user_sessions(transaction, user_id, keep=None)
                await transaction.execute(_ERASE_SESSION_DETAILS, (user_id,))
                row = await transaction.fetch_one(_USER_BY_ID, (user_id,))
        if revoked is None or account is None:
            return None
        assert row is not None, "the row this transaction updated"
        erased = _cached_profile(_user_from_row(row), transaction.committed_at, deleted=True)
        await self._record_revocations(user_id, revoked, transaction.committed_at, [erased])
        return DeletedAccount(avatar_key=account["avatar_key"], sessions_ended=len(revoked))

    async def _record_revocations(
        self,
        user_id: int,
        revoked: Sequence[SessionTombstone],
        committed_at: datetime,
        also: Sequence[CacheEntry] = (),
    ) -> None:
        """Tombstone revoked sessions in Redis with the user's last write (and `also`), or if
        Redis does not take them, flag them and wait until every replica treats them as
        revoked (revocations.py)."""
        if not await self._cache.record_write([*revoked, LastWrite(user_id, committed_at), *also]):
            live = [entry.session_id for entry in revoked if not _expired(entry.expires_at)]
            await self._pending_tombstones.flag_all(live)

    async def _record_user_write(self, user: UserRecord, committed_at: datetime) -> None:
        await self._cache.record_write(
            [LastWrite(user.id, committed_at), _cached_profile(user, committed_at)]
        )

    async def _read(
        self, operation: str, required: datetime | None, sql: str, args: Sequence[object]
    ) -> tuple[Row | None, Database]:
        """The first row of `sql`, and the server that answered: a replica that has applied the
        primary's history through `required`, else the primary (also when `required` is None:
        nothing is known). A replica that fails, lacks the row or proves staler than `required`
        hands over to the primary."""
        if required is not None:
            reader = self._freshness.pick_reader(required)
            if reader is not self._primary:
                DB_READS.labels("replica").inc()
                try:
                    row = await reader.fetch_one(operation, sql.format(as_of=_REPLICA_AS_OF), args)
                except DatabaseError as exc:
                    log.debug("replica read failed, reading the primary: %s", exc)
                else:
                    if row is not None and row["as_of"] is not None and row["as_of"] >= required:
                        return row, reader
        DB_READS.labels("primary").inc()
        row = await self._primary.fetch_one(operation, sql.format(as_of=_PRIMARY_AS_OF), args)
        return row, self._primary


async def _revoke_user_sessions(
    transaction: Transaction, user_id: int, *, keep: str | None
) -> list[SessionTombstone]:
    """Revoke every unrevoked session of the user but `keep`, inside `transaction`; what was
    revoked."""
    rows = await transaction.fetch_all(_USER_SESSIONS_FOR_UPDATE, (user_id,))
    revoked = [SessionTombstone(row["id"], row["expires_at"]) for row in rows if row["id"] != keep]
    for start in range(0, len(revoked), _REVOKE_BATCH):
        ids = [entry.session_id for entry in revoked[start : start + _REVOKE_BATCH]]
        await transaction.execute(_REVOKE_SESSIONS.format(ids=", ".join(["%s"] * len(ids))), ids)
    return revoked


def _storable_session_id(session_id: str) -> bool:
    return session_id.isascii() and 0 < len(session_id) <= SESSION_ID_COLUMN_LENGTH


def _expired(expires_at: datetime) -> bool:
    return expires_at <= datetime.now(UTC)


def _count_lookup(cache: str, *, hit: bool) -> None:
    CACHE_LOOKUPS.labels(cache, "hit" if hit else "miss").inc()


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
