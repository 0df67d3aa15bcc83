"""HttpSettings from the environment: keys, networks and origins are parsed by the loader, and a
bad value is one ConfigError line naming its variable."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.foundation.config import ConfigError, load_settings
from services.http.settings import HttpSettings
from tests.http.gateway import TEST_CSRF_SECRET, public_pem

VALID = {"GATEHOUSE_CSRF_SECRET": TEST_CSRF_SECRET}


def refusal(**overrides: str) -> str:
    with pytest.raises(ConfigError) as refused:
        load_settings(HttpSettings, {**VALID, **overrides})
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_keys_networks_and_origins_are_parsed() -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    settings = load_settings(
        HttpSettings,
        {
            **VALID,
            "GATEHOUSE_JWT_PUBLIC_KEYS": "".join(public_pem(key) for key in keys),
            "GATEHOUSE_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8, 192.0.2.7",
            "GATEHOUSE_ALLOWED_ORIGINS": "https://App.example.com:443",
        },
    )
    assert all(isinstance(key, Ed25519PublicKey) for key in settings.jwt_public_keys)
    assert [key.public_bytes_raw() for key in settings.jwt_public_keys] == [
        key.public_key().public_bytes_raw() for key in keys
    ]
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    assert settings.allowed_origins == ("https://app.example.com",)
    defaults = load_settings(HttpSettings, VALID)
    assert (defaults.jwt_public_keys, defaults.trusted_proxies) == ((), ())


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("GATEHOUSE_JWT_PUBLIC_KEYS", "not a pem", "no '-----BEGIN PUBLIC KEY-----' block"),
        (
            "GATEHOUSE_JWT_PUBLIC_KEYS",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "key #1 is not usable",
        ),
        ("GATEHOUSE_TRUSTED_PROXIES", "10.0.0.0/8,10.0.0.0/33", "'10.0.0.0/33' is not a CIDR"),
        ("GATEHOUSE_ALLOWED_ORIGINS", "https://example.com/login", "is not an origin"),
        ("GATEHOUSE_ETCD_ENDPOINTS", "etcd", "is not host:port"),
        ("GATEHOUSE_HTTP_WORKERS", "2.5", "invalid literal"),
        ("GATEHOUSE_CSRF_SECRET", "x" * 31, "at least 32 characters"),
        ("GATEHOUSE_HTTP_WORKER_STUCK_TIMEOUT", "61", "at most 50"),
        ("GATEHOUSE_HTTP_PORT", "70000", "at most 65535"),
        ("GATEHOUSE_HTTP_HOST", "localhost", "expected an IP address"),
        ("GATEHOUSE_HTTP_HOST", "10.0.0.0/8", "expected an IP address"),
        ("GATEHOUSE_HTTP_HOST", "[::]", "expected an IP address"),
        ("GATEHOUSE_HTTP_HOST", "fe80::1%eth0", "expected an IP address"),
        ("GATEHOUSE_HTTP_HOST", "::1%1", "expected an IP address"),
        ("GATEHOUSE_CONNECT_TIMEOUT", "0", "above 0"),
        ("GATEHOUSE_POOL_IDLE_TIMEOUT", "0", "above 0"),
        ("GATEHOUSE_EJECT_SECONDS", "-1", "at least 0"),
        ("GATEHOUSE_MAX_BODY_BYTES", "16384", "at least 32768"),  # refuses valid passwords
        ("GATEHOUSE_S3_TIMEOUT", "0", "above 0"),
        ("GATEHOUSE_PICTURE_MEMORY_BYTES", "1000", "at least 67108864"),
        ("GATEHOUSE_MAX_FRAME_BYTES", "65536", "at least 524288"),  # no room for a picture
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str, problem: str) -> None:
    message = refusal(**{variable: value})
    assert variable in message and problem in message


@pytest.mark.parametrize(
    ("value", "bound"), [("0.0.0.0", "0.0.0.0"), (" :: ", "::"), ("0:0::1", "0:0::1")]
)
def test_the_bind_address_is_an_ip_literal(value: str, bound: str) -> None:
    settings = load_settings(HttpSettings, {**VALID, "GATEHOUSE_HTTP_HOST": value})
    assert settings.host == bound


def test_a_long_bad_value_is_shortened_in_the_message() -> None:
    message = refusal(GATEHOUSE_TRUSTED_PROXIES="10.0.0.0/8," * 50 + "nope")
    assert "is not a CIDR" in message and len(message) < 300
