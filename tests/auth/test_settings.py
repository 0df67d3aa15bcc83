"""AuthSettings from the environment: every kind of setting is parsed into what the code uses,
and every bad value is one ConfigError line that names its variable and never quotes a secret."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.settings import AuthSettings, DatabaseSettings
from services.auth.tokens import generate_private_key_pem
from services.foundation.config import ConfigError, load_settings

PEM = generate_private_key_pem()
VALID = {
    "GATEHOUSE_MYSQL_PRIMARY_DSN": "mysql://app:hunter2pw@db.internal:3307/gatehouse",
    "GATEHOUSE_PEPPERS": "1:hunter2one,2:hunter2two",
    "GATEHOUSE_JWT_PRIVATE_KEY": PEM,
    "GATEHOUSE_DEVICE_COOKIE_SECRET": "d" * 32,
}
RSA_PEM = (
    rsa.generate_private_key(65537, 2048)
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode()
)


def refusal(**overrides: str) -> str:
    """The one-line message of the ConfigError that VALID with `overrides` raises."""
    with pytest.raises(ConfigError) as refused:
        load_settings(AuthSettings, {**VALID, **overrides})
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_valid_values_become_typed_fields() -> None:
    settings = load_settings(
        AuthSettings,
        {
            **VALID,
            "GATEHOUSE_MYSQL_REPLICA_DSNS": "mysql://app:pw@r1:3306/gatehouse, mysql://app:pw@r2/gatehouse",
            "GATEHOUSE_ETCD_ENDPOINTS": "10.0.0.1:2379, etcd-2:2379",
        },
    )
    assert settings.peppers == {1: b"hunter2one", 2: b"hunter2two"}
    assert isinstance(settings.jwt_private_key, Ed25519PrivateKey)
    public = settings.jwt_private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    expected = (
        serialization.load_pem_private_key(PEM.encode(), password=None)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert public == expected
    assert settings.mysql_replica_dsns == (
        "mysql://app:pw@r1:3306/gatehouse",
        "mysql://app:pw@r2/gatehouse",
    )
    assert settings.etcd_endpoints == ("10.0.0.1:2379", "etcd-2:2379")
    for secret in ("hunter2", PEM.splitlines()[1]):
        assert secret not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("GATEHOUSE_AUTH_PORT", "seventy", "invalid literal"),  # int
        ("GATEHOUSE_DRAIN_GRACE", "nan", "finite"),  # float
        ("GATEHOUSE_MIGRATE_ON_START", "maybe", "true/false"),  # bool
        ("GATEHOUSE_ETCD_ENDPOINTS", " , ", "at least one host:port"),  # tuple
        ("GATEHOUSE_ETCD_ENDPOINTS", "127.0.0.1:2379,localhost", "is not host:port"),
        ("GATEHOUSE_WORKER_ID_PREFIX", "worker-ids", "starts and ends with '/'"),  # parsed str
        ("GATEHOUSE_BCRYPT_COST", "3", "must be at least 4"),  # declared bounds
        ("GATEHOUSE_BCRYPT_COST", "32", "must be at most 31"),
        ("GATEHOUSE_LEASE_TTL", "1", "must be at least 2"),
        ("GATEHOUSE_TOKEN_TTL", "0", "must be at least 1"),
        ("GATEHOUSE_HASH_THREADS", "-1", "must be at least 0"),
        ("GATEHOUSE_HASH_QUEUE_LIMIT", "0", "at least 1"),
        ("GATEHOUSE_LOGIN_FIRST_DELAY", "0", "must be above 0"),
        ("GATEHOUSE_LOGIN_FIRST_DELAY", "100000", "GATEHOUSE_LOGIN_MAX_DELAY"),  # __post_init__,
        ("GATEHOUSE_SESSION_PURGE_AFTER", "59", "must be at least 60"),
        ("GATEHOUSE_SESSION_PURGE_BATCH_SIZE", "10001", "must be at most 10000"),
        ("GATEHOUSE_SESSION_PURGE_ROWS_PER_SECOND", "0", "must be at least 1"),
        ("GATEHOUSE_SESSION_PURGE_ROWS_PER_SECOND", "50001", "must be at most 50000"),
        ("GATEHOUSE_SESSION_PURGE_ROWS_PER_SECOND", "8", "GATEHOUSE_SESSION_PURGE_BATCH_SIZE"),
    ],
)
def test_bad_plain_values_name_their_variable(variable: str, value: str, problem: str) -> None:
    message = refusal(**{variable: value})
    assert variable in message and problem in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "entry 1 is not version:secret"),
        ("hunter2", "entry 1 is not version:secret"),
        ("1:hunter2,hunter3", "entry 2 is not version:secret"),
        ("1:", "empty secret"),
        ("1:hunter2,1:hunter3", "appears twice"),
    ],
)
def test_bad_peppers_are_explained_without_quoting_them(value: str, problem: str) -> None:
    message = refusal(GATEHOUSE_PEPPERS=value)
    assert message.startswith("GATEHOUSE_PEPPERS is not valid: ") and problem in message
    assert "hunter" not in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "not an unencrypted PEM private key"),
        (
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n",
            "not an unencrypted",
        ),
        (RSA_PEM, "RSAPrivateKey, but tokens are signed with Ed25519"),
    ],
)
def test_bad_private_keys_are_explained_without_quoting_them(value: str, problem: str) -> None:
    message = refusal(GATEHOUSE_JWT_PRIVATE_KEY=value)
    assert message.startswith("GATEHOUSE_JWT_PRIVATE_KEY is not valid: ") and problem in message
    assert "c2VjcmV0" not in message and RSA_PEM.splitlines()[1] not in message


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        (
            "GATEHOUSE_MYSQL_PRIMARY_DSN",
            "postgres://app:hunter2@db/gatehouse",
            "starts with mysql://",
        ),
        (
            "GATEHOUSE_MYSQL_PRIMARY_DSN",
            "mysql://app:hunter2@db:port/gatehouse",
            "port of the MySQL DSN",
        ),
        (
            "GATEHOUSE_MYSQL_PRIMARY_DSN",
            "mysql://app:hunter2@db",
            "needs a user, a host and a database",
        ),
        (
            "GATEHOUSE_MYSQL_REPLICA_DSNS",
            "mysql://app:pw@r1/gatehouse,mysql://hunter2@/x",
            "needs a user",
        ),
    ],
)
def test_bad_dsns_are_explained_without_quoting_the_password(
    variable: str, value: str, problem: str
) -> None:
    message = refusal(**{variable: value})
    assert message.startswith(f"{variable} is not valid: ") and problem in message
    assert "hunter2" not in message


def test_the_migrate_command_checks_its_dsn_too() -> None:
    with pytest.raises(ConfigError, match="GATEHOUSE_MYSQL_PRIMARY_DSN is not valid"):
        load_settings(DatabaseSettings, {"GATEHOUSE_MYSQL_PRIMARY_DSN": "db.internal:3306"})


def test_a_short_device_cookie_secret_is_refused() -> None:
    message = refusal(GATEHOUSE_DEVICE_COOKIE_SECRET="x" * 31)
    assert "GATEHOUSE_DEVICE_COOKIE_SECRET must be at least 32 characters" in message
    assert "x" * 31 not in message


def test_a_write_buffer_ceiling_below_the_mark_plus_a_frame_is_refused() -> None:
    message = refusal(
        GATEHOUSE_WRITE_HIGH_WATER_BYTES="1048576",
        GATEHOUSE_MAX_FRAME_BYTES="1048576",
        GATEHOUSE_MAX_WRITE_BUFFER_BYTES="2000000",
    )
    assert "GATEHOUSE_MAX_WRITE_BUFFER_BYTES must be at least" in message


def test_every_problem_is_reported_at_once_on_one_line() -> None:
    message = refusal(
        GATEHOUSE_PEPPERS="nope", GATEHOUSE_JWT_PRIVATE_KEY="nope", GATEHOUSE_AUTH_PORT="x"
    )
    for variable in ("GATEHOUSE_PEPPERS", "GATEHOUSE_JWT_PRIVATE_KEY", "GATEHOUSE_AUTH_PORT"):
        assert variable in message
