"""Changing the password and deleting the account: the calls the JSON API and the pages share.

The HTTP tier checks what only it can (strings protobuf can carry); the auth service checks the
password behind the login throttle and applies every rule. A deletion's reply names the
account's picture: the HTTP tier deletes it from its blob store (unless the auth service keeps
that store and deleted the account's blobs with it) and drops it from the pod's picture cache.

Failures raise ApiError (403 invalid_credentials for a wrong password) or RpcError (the auth
service's other answers; services.http.errors turns them into ApiErrors).
"""

from __future__ import annotations

from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.rpc.protocol import RpcError
from services.http.account_calls import invalid_field
from services.http.auth_client import AuthClient
from services.http.avatars.keys import uploader_of
from services.http.avatars.replace import Avatars
from services.http.bodies import is_encodable
from services.http.callers import Caller
from services.http.errors import ApiError
from services.http.sessions import session_ref
from services.http.tokens import Session


def wrong_password() -> ApiError:
    return ApiError(403, "invalid_credentials", "the password is wrong")


class AccountLifecycle:
    def __init__(self, auth: AuthClient, avatars: Avatars) -> None:
        self._auth = auth
        self._avatars = avatars

    async def change_password(
        self, session: Session, current_password: str, new_password: str, caller: Caller
    ) -> None:
        """Every other session of the caller ends; the current one stays."""
        if not is_encodable(new_password):
            raise invalid_field("password")
        if not is_encodable(current_password):
            raise wrong_password()
        await self._password_call(
            methods.CHANGE_PASSWORD,
            pb.ChangePasswordRequest(
                session=session_ref(session),
                current_password=current_password,
                new_password=new_password,
                client_ip=caller.client_ip,
                device_cookie=caller.device_cookie,
            ),
        )

    async def delete_account(self, session: Session, password: str, caller: Caller) -> None:
        """Erase the caller's account (every session ends) and delete its picture."""
        if not is_encodable(password):
            raise wrong_password()
        reply = await self._password_call(
            methods.DELETE_ACCOUNT,
            pb.DeleteAccountRequest(
                session=session_ref(session),
                password=password,
                client_ip=caller.client_ip,
                device_cookie=caller.device_cookie,
            ),
        )
        key = reply.avatar_key
        if uploader_of(key) == session.user_id:  # a default picture is drawn, not stored
            # From the blob store unless the deletion did it, then from this pod's memory.
            await self._avatars.account_deleted(key, session, reply.blobs_deleted)

    async def _password_call(self, method: Method[RequestT, ReplyT], request: RequestT) -> ReplyT:
        try:
            return await self._auth.call(method, request)
        except RpcError as error:
            if error.status == pb.STATUS_UNAUTHENTICATED and error.reason == "invalid_credentials":
                raise wrong_password() from None
            raise
