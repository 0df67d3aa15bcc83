"""PUT /api/v1/me/password and DELETE /api/v1/me: the JSON API of the password change and the
account deletion (services.http.account_lifecycle makes the calls)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.http.bodies import read_json_object, required_string
from services.http.endpoints import AccountEndpoints
from services.http.openapi.declare import Operation, Success, documented, json_object
from services.http.openapi.fields import ANY_STRING, PASSWORD

# 403 for a wrong password: the session is valid, the password check failed.
WRONG_PASSWORD = {403: ("invalid_credentials",)}


class AccountApi(AccountEndpoints):
    # Declared here, served by the /api/v1/me route's handler (services.http.api).
    DELETE_ME = Operation(
        "DELETE",
        "deleteAccount",
        "Delete the account",
        Success(204, "the account is erased, every session has ended; the cookie is cleared"),
        WRONG_PASSWORD,
        json_body=json_object({"password": ANY_STRING}),
        needs_session=True,
        hashes_password=True,
    )

    def lifecycle_routes(self) -> list[Route]:
        """DELETE /api/v1/me is served by the /api/v1/me route, which calls `delete_me`."""
        return [Route("/api/v1/me/password", self.change_password, methods=["PUT"])]

    @documented(
        Operation(
            "PUT",
            "changePassword",
            "Change the password",
            Success(204, "changed; every other session of the caller has ended"),
            {**WRONG_PASSWORD, 400: ("invalid_password",)},
            json_body=json_object({"current_password": ANY_STRING, "new_password": PASSWORD}),
            needs_session=True,
            hashes_password=True,
        )
    )
    async def change_password(self, request: Request) -> Response:
        session = await self._sessions.of_api_call(request)
        body = await read_json_object(request, self._max_body_bytes)
        await self._lifecycle.change_password(
            session,
            required_string(body, "current_password"),
            required_string(body, "new_password"),
            self._callers.of(request),
        )
        return Response(status_code=204)

    async def delete_me(self, request: Request) -> Response:
        session = await self._sessions.of_api_call(request)
        body = await read_json_object(request, self._max_body_bytes)
        await self._lifecycle.delete_account(
            session, required_string(body, "password"), self._callers.of(request)
        )
        response = Response(status_code=204)
        for cookie in self._sessions.cleared_cookies():
            response.headers.append("set-cookie", cookie)
        return response
