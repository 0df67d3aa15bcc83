"""DELETE_ACCOUNT: a session's owner erases their account after giving its password.

The password is checked as a login's is (services/auth/password_checks.py). The erasure is one
transaction holding the user's row (AccountStore.delete_account): the profile and the personal
details of the sessions are erased, every session is revoked through the logout's revocation
path, `deleted_at` is set and, when GATEHOUSE_REUSE_DELETED_USERNAMES is on, the username is
freed. The reply names the picture the HTTP tier must delete from its blob store. Why nothing
can bring the data back afterwards: docs/design.md, "Deleting an account".
"""

from __future__ import annotations

import logging

from services.auth import metrics
from services.auth.accounts import AccountStore
from services.auth.password_checks import PasswordChecks, session_ended
from services.contract import auth_pb2 as pb

log = logging.getLogger(__name__)


class AccountDeletion:
    def __init__(
        self, store: AccountStore, checks: PasswordChecks, *, reuse_deleted_usernames: bool
    ) -> None:
        self._store = store
        self._checks = checks
        self._reuse_deleted_usernames = reuse_deleted_usernames

    async def delete_account(
        self, request: pb.DeleteAccountRequest, deadline: float
    ) -> pb.DeleteAccountReply:
        credentials = await self._checks.check_caller(
            "delete_account",
            request.session,
            request.password,
            request.client_ip,
            request.device_cookie,
            deadline,
        )
        deleted = await self._store.delete_account(
            credentials.user.id,
            request.session.session_id,
            free_username=self._reuse_deleted_usernames,
            not_after=deadline,
        )
        if deleted is None:
            raise session_ended()  # logged out (or deleted) since the password check
        metrics.ACCOUNT_CHANGES.labels("account_deleted").inc()
        log.info(
            "user %d deleted their account; %d sessions ended, %d blobs deleted",
            credentials.user.id,
            deleted.sessions_ended,
            deleted.blobs_deleted,
        )
        return pb.DeleteAccountReply(avatar_key=deleted.avatar_key or "", blobs_deleted=True)
