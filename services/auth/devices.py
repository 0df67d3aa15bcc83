"""Device cookies (OWASP's "device cookie" pattern): proof that a browser once logged in to an
account, so that the login throttle can tell the owner from someone guessing the password.

A cookie is `<expiry>.<device id>.<MAC>`: the expiry in Unix seconds, 16 random bytes naming
the device (the key of its own throttle counter), and an HMAC-SHA256, under
GATEHOUSE_DEVICE_COOKIE_SECRET, of the account id, the expiry and the device id. It proves
nothing about any other account, and it is worthless without the secret. The HTTP tier only
carries it (services/http/devices.py sets it HttpOnly, SameSite=Strict).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

# Longer values are not ours: refused before any work.
MAX_COOKIE_LENGTH = 128
_CONTEXT = b"gatehouse-device-cookie-v1"


@dataclass(frozen=True)
class DeviceCookie:
    value: str
    expires_at_ms: int


class DeviceCookies:
    def __init__(self, secret: str, lifetime_seconds: int) -> None:
        self._secret = secret.encode("utf-8")
        self._key = self.derived_key(_CONTEXT)
        self._lifetime = lifetime_seconds

    def derived_key(self, context: bytes) -> bytes:
        """A key of its own for `context`, from the secret (so it needs no setting of its own)."""
        return hmac.new(self._secret, context, hashlib.sha256).digest()

    def mint(self, account_id: int) -> DeviceCookie:
        expires = int(time.time()) + self._lifetime
        device_id = _b64(secrets.token_bytes(16))
        mac = self._mac(account_id, expires, device_id)
        return DeviceCookie(f"{expires}.{device_id}.{mac}", expires * 1000)

    def device_of(self, cookie: str, account_id: int) -> str | None:
        """The device id if `cookie` is a live device cookie of `account_id`, else None."""
        if not cookie or len(cookie) > MAX_COOKIE_LENGTH:
            return None
        expires_text, _, rest = cookie.partition(".")
        device_id, _, mac = rest.partition(".")
        if not (expires_text.isascii() and expires_text.isdigit() and device_id and mac):
            return None
        expires = int(expires_text)
        expected = self._mac(account_id, expires, device_id)
        if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
            return None
        return device_id if expires > time.time() else None

    def _mac(self, account_id: int, expires: int, device_id: str) -> str:
        message = f"{account_id}|{expires}|{device_id}".encode("utf-8", "replace")
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
