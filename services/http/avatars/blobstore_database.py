"""The `database` blob store: blobs in MySQL, through the auth service's blob calls, which
check the owner's session that writes carry."""

from __future__ import annotations

from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from services.http.auth_client import AuthClient
from services.http.avatars.blobstore import Blob
from services.http.sessions import session_ref
from services.http.tokens import Session


class DatabaseBlobStore:
    held_by_auth_service = True

    def __init__(self, auth: AuthClient) -> None:
        self._auth = auth

    async def put(self, key: str, data: bytes, content_type: str, owner: Session) -> None:
        await self._auth.call(
            methods.PUT_BLOB,
            pb.PutBlobRequest(
                key=key, content_type=content_type, data=data, session=session_ref(owner)
            ),
        )

    async def get(self, key: str) -> Blob | None:
        try:
            reply = await self._auth.call(methods.GET_BLOB, pb.GetBlobRequest(key=key))
        except RpcError as error:
            if error.status == pb.STATUS_NOT_FOUND:
                return None
            raise
        return Blob(content_type=reply.content_type, data=reply.data)

    async def delete(self, key: str, owner: Session) -> None:
        await self._auth.call(
            methods.DELETE_BLOB, pb.DeleteBlobRequest(key=key, session=session_ref(owner))
        )
