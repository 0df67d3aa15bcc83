"""Operator calls (protocol 4) for the `gatehouse` CLI: show, lock, unlock and delete an
account, list and end its sessions, and count password hashes per pepper version.

Accounts are named by username; the calls need no session, and answer NOT_FOUND with reason
`user_not_found` when no live (not deleted) account has the name. They act through the same
store paths as the lifecycle calls (AccountStore: the one revocation path, the read-your-writes
record, the caches), so what they change holds on every replica at once.

Only the operator identity may make them (roles.py): with mutual TLS, a client certificate
of `spiffe://<trust domain>/operator`; in plaintext, a caller on the replica's operator socket
(GATEHOUSE_OPERATOR_SOCKET). A caller over TCP without TLS holds the HTTP role, so a mesh
that admits the HTTP pods does not let them make these calls.
"""

from __future__ import annotations

import logging
from typing import Any

from services.auth import metrics
from services.auth.accounts import AccountStore, AccountSummary
from services.auth.handlers import _route, user_message
from services.auth.session_handlers import epoch_ms, session_info
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from services.foundation.rpc.routes import Route

log = logging.getLogger(__name__)


def user_not_found() -> RpcError:
    return RpcError(pb.STATUS_NOT_FOUND, "no live account has this username", "user_not_found")


def admin_account(summary: AccountSummary) -> pb.AdminAccount:
    return pb.AdminAccount(
        user=user_message(summary.user),
        locked_at_ms=epoch_ms(summary.locked_at),
        live_sessions=summary.live_sessions,
        pepper_version=summary.pepper_version,
    )


class AdminHandlers:
    def __init__(self, store: AccountStore, *, reuse_deleted_usernames: bool) -> None:
        self._store = store
        self._reuse_deleted_usernames = reuse_deleted_usernames

    def routes(self) -> list[Route[Any, Any]]:
        return [
            _route(methods.ADMIN_SHOW_USER, self.show_user),
            _route(methods.ADMIN_LOCK_USER, self.lock_user),
            _route(methods.ADMIN_UNLOCK_USER, self.unlock_user),
            _route(methods.ADMIN_DELETE_USER, self.delete_user),
            _route(methods.ADMIN_LIST_SESSIONS, self.list_sessions),
            _route(methods.ADMIN_END_SESSIONS, self.end_sessions),
        ]

    async def show_user(
        self, request: pb.AdminUserRequest, deadline: float
    ) -> pb.AdminAccountReply:
        return pb.AdminAccountReply(account=admin_account(await self._account(request.username)))

    async def lock_user(self, request: pb.AdminUserRequest, deadline: float) -> pb.AdminLockReply:
        self._store.require_primary("lock_account")
        locked = await self._store.lock_account(request.username, not_after=deadline)
        if locked is None:
            raise user_not_found()
        metrics.ACCOUNT_CHANGES.labels("account_locked").inc()
        log.info(
            "operator locked user %d; %d sessions ended",
            locked.account.user.id,
            locked.sessions_ended,
        )
        return pb.AdminLockReply(
            account=admin_account(locked.account), sessions_ended=locked.sessions_ended
        )

    async def unlock_user(
        self, request: pb.AdminUserRequest, deadline: float
    ) -> pb.AdminAccountReply:
        self._store.require_primary("unlock_account")
        summary = await self._store.unlock_account(request.username, not_after=deadline)
        if summary is None:
            raise user_not_found()
        metrics.ACCOUNT_CHANGES.labels("account_unlocked").inc()
        log.info("operator unlocked user %d", summary.user.id)
        return pb.AdminAccountReply(account=admin_account(summary))

    async def delete_user(
        self, request: pb.AdminUserRequest, deadline: float
    ) -> pb.DeleteAccountReply:
        self._store.require_primary("delete_named_account")
        deleted = await self._store.delete_named_account(
            request.username, free_username=self._reuse_deleted_usernames, not_after=deadline
        )
        if deleted is None:
            raise user_not_found()
        metrics.ACCOUNT_CHANGES.labels("operator_deleted").inc()
        log.info(
            "operator deleted user %d; %d sessions ended, %d blobs deleted",
            deleted.user_id,
            deleted.sessions_ended,
            deleted.blobs_deleted,
        )
        return pb.DeleteAccountReply(avatar_key=deleted.avatar_key or "", blobs_deleted=True)

    async def list_sessions(
        self, request: pb.AdminUserRequest, deadline: float
    ) -> pb.ListSessionsReply:
        account = await self._account(request.username)
        records = await self._store.live_sessions(account.user.id)
        return pb.ListSessionsReply(sessions=[session_info(record, "") for record in records])

    async def end_sessions(
        self, request: pb.AdminEndSessionsRequest, deadline: float
    ) -> pb.AdminEndSessionsReply:
        if request.all == bool(request.ids):
            raise RpcError(
                pb.STATUS_INVALID,
                "name the sessions to end (ids) or ask for all of them (all), not both",
                "invalid_request",
            )
        self._store.require_primary("end_sessions")
        account = await self._account(request.username)
        if request.all:
            ended = await self._store.end_sessions(account.user.id, not_after=deadline)
            log.info("operator ended all %d sessions of user %d", ended, account.user.id)
            return pb.AdminEndSessionsReply(ended=ended)
        ended_ids = set(
            await self._store.end_named_sessions(account.user.id, request.ids, not_after=deadline)
        )
        not_found = list(dict.fromkeys(id_ for id_ in request.ids if id_ not in ended_ids))
        log.info("operator ended %d sessions of user %d", len(ended_ids), account.user.id)
        return pb.AdminEndSessionsReply(ended=len(ended_ids), not_found=not_found)

    async def _account(self, username: str) -> AccountSummary:
        summary = await self._store.account_summary(username)
        if summary is None:
            raise user_not_found()
        return summary
