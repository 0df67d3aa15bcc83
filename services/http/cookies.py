"""Set-Cookie values: every cookie of the service is on Path=/, SameSite=Lax unless said
otherwise (the device cookie is Strict), Secure when GATEHOUSE_COOKIE_SECURE is on.

Under HTTPS the cookies carry the `__Host-` prefix (`cookie_name`): a browser keeps such a
cookie only when it is Secure, on Path=/ and without a Domain, so neither a sibling subdomain
nor a plain-HTTP response can plant or overwrite it.
"""

from __future__ import annotations

HOST_PREFIX = "__Host-"


def cookie_name(base: str, *, secure: bool) -> str:
    """`__Host-<base>` for Secure cookies, `base` otherwise."""
    return f"{HOST_PREFIX}{base}" if secure else base


def set_cookie(
    name: str,
    value: str,
    *,
    secure: bool,
    http_only: bool,
    max_age: int | None = None,
    same_site: str = "Lax",
) -> str:
    """A Set-Cookie header value; without `max_age` the cookie lasts the browser session."""
    if name.startswith(HOST_PREFIX) and not secure:
        raise ValueError(f"a {HOST_PREFIX} cookie must be Secure; browsers drop it otherwise")
    attributes = [f"{name}={value}"]
    if http_only:
        attributes.append("HttpOnly")
    attributes += [f"SameSite={same_site}", "Path=/"]  # never a Domain: __Host- cookies forbid it
    if secure:
        attributes.append("Secure")
    if max_age is not None:
        attributes.append(f"Max-Age={max_age}")
    return "; ".join(attributes)
