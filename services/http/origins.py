"""Web origins (`scheme://host[:port]`): parsing GATEHOUSE_ALLOWED_ORIGINS, a request's own
origin, and the scheme the client used.

Origins are compared in one normal form: lower-case scheme and host, IPv6 hosts in brackets,
the port only when it is not the scheme's default.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import Scope

DEFAULT_PORTS = {"http": 80, "https": 443}
# Longer than any real origin (a host name has at most 253 characters).
MAX_ORIGIN_CHARS = 300


def normalize_origin(value: str) -> str | None:
    """`value` as a normal-form origin, or None when it is not an http(s) origin."""
    if len(value) > MAX_ORIGIN_CHARS or not value.isascii():
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if (
        scheme not in DEFAULT_PORTS
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_origins(raw: str) -> tuple[str, ...]:
    """GATEHOUSE_ALLOWED_ORIGINS: comma-separated origins, each normalized; ValueError names
    the first one that is not an origin."""
    origins = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        origin = normalize_origin(item)
        if origin is None:
            raise ValueError(
                f"{item!r} is not an origin; write scheme://host or scheme://host:port "
                "with scheme http or https, and no path"
            )
        origins.append(origin)
    return tuple(origins)


def request_scheme(scope: Scope, *, cookie_secure: bool, forwarded_https: bool | None) -> str:
    """The scheme the client used: https when the deployment is HTTPS (GATEHOUSE_COOKIE_SECURE)
    or when a trusted proxy says the client connected with https (`forwarded_https` True);
    http when such a proxy says http; else the scheme of the connection the server saw."""
    if cookie_secure or forwarded_https:
        return "https"
    if forwarded_https is False:
        return "http"
    return str(scope.get("scheme", "http"))


def own_origin(scope: Scope, scheme: str) -> str | None:
    """The origin the client addressed: `scheme` and the Host header; None without one."""
    hosts = [value for name, value in scope["headers"] if name == b"host"]
    if len(hosts) != 1:
        return None
    try:
        host = hosts[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    return normalize_origin(f"{scheme}://{host}")
