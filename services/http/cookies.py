"""Set-Cookie values: every cookie of the service is SameSite=Lax on Path=/, Secure when
GATEHOUSE_COOKIE_SECURE is on."""

from __future__ import annotations


def set_cookie(
    name: str, value: str, *, secure: bool, http_only: bool, max_age: int | None = None
) -> str:
    """A Set-Cookie header value; without `max_age` the cookie lasts the browser session."""
    attributes = [f"{name}={value}"]
    if http_only:
        attributes.append("HttpOnly")
    attributes += ["SameSite=Lax", "Path=/"]
    if secure:
        attributes.append("Secure")
    if max_age is not None:
        attributes.append(f"Max-Age={max_age}")
    return "; ".join(attributes)
