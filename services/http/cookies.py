"""Set-Cookie values: every cookie of the service is on Path=/, SameSite=Lax unless said
otherwise (the device cookie is Strict), Secure when GATEHOUSE_COOKIE_SECURE is on."""

from __future__ import annotations


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
    attributes = [f"{name}={value}"]
    if http_only:
        attributes.append("HttpOnly")
    attributes += [f"SameSite={same_site}", "Path=/"]
    if secure:
        attributes.append("Secure")
    if max_age is not None:
        attributes.append(f"Max-Age={max_age}")
    return "; ".join(attributes)
