"""What the auth service needs to know of a caller: its client IP (services/http/client_ip.py)
and its device cookie (services/http/devices.py) for the login throttle, and its User-Agent,
which a login records with the session it opens."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from starlette.requests import Request

from services.contract import auth_pb2 as pb
from services.http.client_ip import ClientAddresses
from services.http.devices import DeviceCookie

# Characters of the User-Agent kept with a session (the sessions.user_agent column's size).
USER_AGENT_CHARS = 256


@dataclass(frozen=True)
class Caller:
    client_ip: str = ""
    device_cookie: str = ""
    user_agent: str = ""


class Callers:
    def __init__(self, addresses: ClientAddresses, device_cookie: DeviceCookie) -> None:
        self.addresses = addresses
        self._device_cookie = device_cookie

    def of(self, request: Request) -> Caller:
        return Caller(
            client_ip=self.addresses.client_ip(request.scope),
            device_cookie=self._device_cookie.of(request),
            user_agent=_user_agent(request),
        )

    def device_set_cookie(self, reply: pb.AuthenticateReply) -> str | None:
        """The Set-Cookie value of the device cookie a login minted; None if it minted none."""
        return self._device_cookie.set_cookie(
            reply.device_cookie, reply.device_cookie_expires_at_ms
        )


def _user_agent(request: Request) -> str:
    """The User-Agent as its client wrote it. Header bytes reach Starlette as Latin-1, so a
    client that sends UTF-8 (`curl -A "José"`) would be listed as "JosÃ©" among its sessions;
    bytes that are not UTF-8 stay Latin-1, as HTTP reads them."""
    text = request.headers.get("user-agent", "")
    with contextlib.suppress(UnicodeDecodeError):
        text = text.encode("latin-1").decode("utf-8")
    return text[:USER_AGENT_CHARS]
