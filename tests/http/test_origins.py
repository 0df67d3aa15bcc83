"""Origins: the normal form they are compared in, GATEHOUSE_ALLOWED_ORIGINS, a request's own
origin and the scheme its client used."""

from __future__ import annotations

import pytest

from services.foundation.config import ConfigError, load_settings
from services.http.origins import normalize_origin, own_origin, parse_origins, request_scheme
from services.http.settings import HttpSettings
from tests.http.gateway import TEST_CSRF_SECRET


@pytest.mark.parametrize(
    ("value", "normal"),
    [
        ("https://gatehouse.example.com", "https://gatehouse.example.com"),
        ("HTTPS://Gatehouse.Example.COM:443", "https://gatehouse.example.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:80", "http://127.0.0.1"),
        ("https://example.com:8443/", "https://example.com:8443"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_origins_are_compared_in_one_form(value: str, normal: str) -> None:
    assert normalize_origin(value) == normal


@pytest.mark.parametrize(
    "value",
    [
        "null",
        "",
        "example.com",
        "ftp://example.com",
        "https://",
        "https://example.com/path",
        "https://example.com?x=1",
        "https://user@example.com",
        "https://example.com:99999",
        "https://exämple.com",
        "https://" + "a" * 400 + ".com",
    ],
)
def test_what_is_not_an_origin(value: str) -> None:
    assert normalize_origin(value) is None


def test_allowed_origins_setting() -> None:
    settings = load_settings(
        HttpSettings,
        {
            "GATEHOUSE_CSRF_SECRET": TEST_CSRF_SECRET,
            "GATEHOUSE_ALLOWED_ORIGINS": (
                "https://Gatehouse.example.com, https://app.example.com:8443"
            ),
        },
    )
    assert settings.allowed_origins == (
        "https://gatehouse.example.com",
        "https://app.example.com:8443",
    )
    assert parse_origins("") == ()
    for bad in ("null", "*", "https://example.com/login"):
        with pytest.raises(ConfigError, match="GATEHOUSE_ALLOWED_ORIGINS"):
            load_settings(
                HttpSettings,
                {"GATEHOUSE_CSRF_SECRET": TEST_CSRF_SECRET, "GATEHOUSE_ALLOWED_ORIGINS": bad},
            )


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_the_csrf_secret_is_required_and_long(secret: str) -> None:
    with pytest.raises(ConfigError, match="GATEHOUSE_CSRF_SECRET"):
        load_settings(HttpSettings, {"GATEHOUSE_CSRF_SECRET": secret} if secret else {})


def scope(scheme: str = "http", *hosts: bytes) -> dict[str, object]:
    return {"type": "http", "scheme": scheme, "headers": [(b"host", host) for host in hosts]}


def test_the_scheme_the_client_used() -> None:
    plain, tls = scope("http"), scope("https")
    assert request_scheme(plain, cookie_secure=False, forwarded_https=None) == "http"
    assert request_scheme(tls, cookie_secure=False, forwarded_https=None) == "https"
    # An HTTPS deployment behind a TLS-terminating proxy.
    assert request_scheme(plain, cookie_secure=True, forwarded_https=None) == "https"
    # What a trusted proxy says.
    assert request_scheme(plain, cookie_secure=False, forwarded_https=True) == "https"
    assert request_scheme(tls, cookie_secure=False, forwarded_https=False) == "http"
    assert request_scheme(plain, cookie_secure=True, forwarded_https=False) == "https"


def test_the_own_origin_is_the_host_header_with_the_scheme() -> None:
    assert own_origin(scope("http", b"127.0.0.1:8000"), "http") == "http://127.0.0.1:8000"
    assert own_origin(scope("http", b"Gatehouse.example.com:443"), "https") == (
        "https://gatehouse.example.com"
    )
    assert own_origin(scope("http"), "http") is None
    assert own_origin(scope("http", b"a.example", b"b.example"), "http") is None
    assert own_origin(scope("http", b"evil.example/@gatehouse.example"), "http") is None
    assert own_origin(scope("http", "exämple.com".encode()), "http") is None
