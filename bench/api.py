"""Raw HTTP/1.1 requests for the three calls every system under test answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode

from bench.seed import peer_email


@dataclass(frozen=True)
class Api:
    """How one system spells a profile read, a login and a signup."""

    name: str
    profile_path: str
    login_path: str
    signup_path: str
    form_login: bool = False  # OAuth2 password form (username=...&password=...) instead of JSON
    email_names: bool = False  # accounts are emails made from the usernames

    def profile(self, host: str, token: str) -> str:
        return _request("GET", self.profile_path, host, {"Authorization": f"Bearer {token}"})

    def login(self, host: str, name: str, password: str) -> str:
        account = peer_email(name) if self.email_names else name
        if self.form_login:
            body = urlencode({"username": account, "password": password})
            return _request(
                "POST", self.login_path, host, {}, body, "application/x-www-form-urlencoded"
            )
        return _json("POST", self.login_path, host, {"username": account, "password": password})

    def signup(self, host: str, name: str, password: str) -> str:
        if self.email_names:
            return _json(
                "POST", self.signup_path, host, {"email": peer_email(name), "password": password}
            )
        return _json("POST", self.signup_path, host, {"username": name, "password": password})


GATEHOUSE = Api("gatehouse", "/api/v1/me", "/api/v1/sessions", "/api/v1/users")
PEER = Api(
    "fastapi-users",
    "/users/me",
    "/auth/jwt/login",
    "/auth/register",
    form_login=True,
    email_names=True,
)
BARE = Api("starlette", "/api/v1/me", "", "")


def _json(method: str, path: str, host: str, body: dict[str, str]) -> str:
    return _request(method, path, host, {}, json.dumps(body), "application/json")


def _request(
    method: str,
    path: str,
    host: str,
    headers: dict[str, str],
    body: str = "",
    content_type: str = "",
) -> str:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body.encode())}"]
    return "\r\n".join(lines) + "\r\n\r\n" + body
