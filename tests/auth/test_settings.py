"""AuthSettings from the environment: every kind of setting is parsed into what the code uses,
and every bad value is one ConfigError line that names its variable and never quotes a secret."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack.certs import CertificateAuthority
from services.auth.replica import server_limits
from services.auth.settings import AuthSettings, BootstrapSettings, DatabaseSettings
from services.auth.store.dsn import parse_dsn
from services.auth.store.redis_url import TLS_OPTIONS
from services.auth.tokens import generate_private_key_pem
from services.foundation.config import ConfigError, load_settings

PEM = generate_private_key_pem()
VALID_DSN = "mysql://app:hunter2pw@db.internal:3307/gatehouse"
VALID = {
    "GATEHOUSE_MYSQL_PRIMARY_DSN": VALID_DSN,
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
        # Each of these once started a process that could not work.
        ("GATEHOUSE_HEARTBEAT_INTERVAL", "0", "must be at least 0.01"),  # a busy loop
        ("GATEHOUSE_HEARTBEAT_INTERVAL", "60", "must be at most 1"),  # reads all on the primary
        ("GATEHOUSE_MYSQL_TIMEOUT", "0", "must be above 0"),
        ("GATEHOUSE_MYSQL_POOL_SIZE", "0", "must be at least 1"),
        ("GATEHOUSE_REDIS_TIMEOUT", "-1", "must be above 0"),
        ("GATEHOUSE_AUTH_PORT", "70000", "must be at most 65535"),
        ("GATEHOUSE_MAX_CONNECTIONS", "0", "must be at least 1"),
        ("GATEHOUSE_MAX_FRAME_BYTES", "65536", "must be at least 524288"),  # no room for an export
        ("GATEHOUSE_DRAIN_GRACE", "-1", "must be at least 0"),
        ("GATEHOUSE_SESSION_PURGE_BATCH_SIZE", "10001", "must be at most 10000"),
        ("GATEHOUSE_SESSION_PURGE_ROWS_PER_SECOND", "0", "must be at least 1"),
        ("GATEHOUSE_SESSION_PURGE_ROWS_PER_SECOND", "50001", "must be at most 50000"),
        ("GATEHOUSE_SESSION_PURGE_ROWS_PER_SECOND", "8", "GATEHOUSE_SESSION_PURGE_BATCH_SIZE"),
        # A record HTTP tiers would ignore: refused at start, not registered unseen.
        ("GATEHOUSE_INSTANCE_ID", "auth:0", "a pod name"),
        ("GATEHOUSE_AUTH_ADVERTISE_HOST", "[fd00::7]", "IP address or a DNS name"),
        ("GATEHOUSE_AUTH_ADVERTISE_HOST", "auth..svc", "IP address or a DNS name"),
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


def test_the_large_frame_limits_reach_the_rpc_server() -> None:
    """Behind a mesh sidecar every HTTP pod is one address: its share must be raisable."""
    settings = load_settings(
        AuthSettings,
        {
            **VALID,
            "GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER": "33554432",
            "GATEHOUSE_MAX_LARGE_FRAME_BYTES_TOTAL": "67108864",
        },
    )
    limits = server_limits(settings)
    assert (limits.max_large_frame_bytes_per_peer, limits.max_large_frame_bytes_total) == (
        32 * 1024 * 1024,
        64 * 1024 * 1024,
    )


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            {"GATEHOUSE_MAX_FRAME_BYTES": "8388608"},
            "GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER must be at least twice",
        ),
        (
            {"GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER": "2097151"},
            "GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER must be at least twice",
        ),
        (
            {"GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER": "134217728"},
            "GATEHOUSE_MAX_LARGE_FRAME_BYTES_TOTAL must be at least"
            " GATEHOUSE_MAX_LARGE_FRAME_BYTES_PER_PEER",
        ),
    ],
)
def test_large_frame_limits_that_refuse_a_full_frame_are_refused(
    overrides: dict[str, str], problem: str
) -> None:
    assert problem in refusal(**overrides)


def test_every_problem_is_reported_at_once_on_one_line() -> None:
    message = refusal(
        GATEHOUSE_PEPPERS="nope", GATEHOUSE_JWT_PRIVATE_KEY="nope", GATEHOUSE_AUTH_PORT="x"
    )
    for variable in ("GATEHOUSE_PEPPERS", "GATEHOUSE_JWT_PRIVATE_KEY", "GATEHOUSE_AUTH_PORT"):
        assert variable in message


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(CertificateAuthority(tmp_path_factory.mktemp("ca")).cert_path)


@pytest.mark.parametrize(
    ("options", "mode", "verified", "checks_host"),
    [
        ("", "disabled", None, None),
        ("?ssl-mode=required", "required", False, False),
        ("?ssl-mode=VERIFY_CA&ssl-ca={ca}", "verify-ca", True, False),
        ("?ssl-ca={ca}", "verify-ca", True, False),  # the MySQL client's meaning of ssl-ca alone
        ("?ssl-mode=verify-identity&ssl-ca={ca}", "verify-identity", True, True),
        ("?ssl-mode=verify-identity", "verify-identity", True, True),  # the system's CAs
    ],
)
def test_dsn_tls_options_become_the_ssl_context_aiomysql_gets(
    ca_file: str, options: str, mode: str, verified: bool | None, checks_host: bool | None
) -> None:
    dsn = f"mysql://app:hunter2pw@db.internal:3307/gatehouse{options.format(ca=ca_file)}"
    settings = load_settings(AuthSettings, {**VALID, "GATEHOUSE_MYSQL_PRIMARY_DSN": dsn})
    address = parse_dsn(settings.mysql_primary_dsn)
    assert address.ssl_mode == mode
    context = address.ssl_context()
    if verified is None:
        assert context is None
        return
    assert context is not None
    assert (context.verify_mode == ssl.CERT_REQUIRED) is verified
    assert context.check_hostname is checks_host
    if "{ca}" in options:
        ours = {cert["serialNumber"] for cert in context.get_ca_certs()}
        assert len(ours) == 1  # only the named CA, not the system's


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ("?ssl-mode=preferred", "fall back to plaintext"),
        ("?ssl-mode=sometimes", "ssl-mode of a MySQL DSN is one of"),
        ("?ssl-mode=required&ssl-ca={ca}", "ssl-ca is used only by ssl-mode verify-ca"),
        ("?ssl-ca=/nonexistent/ca.pem", "not a readable PEM file"),
        ("?ssl-ca={not_pem}", "not a readable PEM file"),
        ("?sslmode=require", "takes only the options ssl-mode, ssl-ca, not sslmode"),
        ("?ssl-mode=required&ssl-mode=disabled", "may appear once"),
    ],
)
def test_bad_dsn_tls_options_stop_the_process_at_start(
    ca_file: str, tmp_path: Path, options: str, problem: str
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hunter2\n")
    dsn = f"mysql://app:hunter2@db/gatehouse{options.format(ca=ca_file, not_pem=not_pem)}"
    for variable in ("GATEHOUSE_MYSQL_PRIMARY_DSN", "GATEHOUSE_MYSQL_REPLICA_DSNS"):
        message = refusal(**{variable: dsn})
        assert message.startswith(f"{variable} is not valid: ") and problem in message
        assert "hunter2" not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw@cache:6379/0",
        "rediss://:pw@cache:6379/0",
        "rediss://:pw@cache:6379/0?ssl_ca_certs={ca}",
        "rediss://:pw@cache:6379/0?ssl_ca_certs={ca}&ssl_check_hostname=false",
        "rediss://:pw@cache:6379/0?ssl_cert_reqs=none",
        "unix://:pw@/run/redis/redis.sock?db=0",
    ],
)
def test_redis_urls_with_tls_options_are_taken(ca_file: str, url: str) -> None:
    settings = load_settings(AuthSettings, {**VALID, "GATEHOUSE_REDIS_URL": url.format(ca=ca_file)})
    assert settings.redis_url == url.format(ca=ca_file)


def test_the_current_pepper_is_the_highest_unless_named() -> None:
    assert load_settings(AuthSettings, VALID).current_pepper_version == 2
    named = load_settings(AuthSettings, {**VALID, "GATEHOUSE_PEPPER_CURRENT": "1"})
    assert named.current_pepper_version == 1
    message = refusal(GATEHOUSE_PEPPER_CURRENT="3")
    assert "GATEHOUSE_PEPPER_CURRENT=3 is not a version of GATEHOUSE_PEPPERS (it holds 1, 2)" in (
        message
    )
    assert "hunter2" not in message


def test_an_empty_current_pepper_is_unset_and_odd_spellings_are_refused() -> None:
    """Step 2 of a rotation unsets it: a chart value or env file writes it empty."""
    empty = load_settings(AuthSettings, {**VALID, "GATEHOUSE_PEPPER_CURRENT": ""})
    assert empty.current_pepper_version == 2
    for odd in ("1_0", "+1", "\uff11"):
        assert "GATEHOUSE_PEPPER_CURRENT" in refusal(GATEHOUSE_PEPPER_CURRENT=odd)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://:hunter2@cache:6379/0", "schemes"),
        ("redis://:hunter2@cache:6379/0?ssl_ca_certs={ca}", "need a rediss:// URL"),
        ("rediss://:hunter2@cache:6379/0?ssl_ca_certs=/nonexistent.pem", "not a readable PEM"),
        ("rediss://:hunter2@cache:6379/0?ssl_cert_reqs=optional", "ssl_cert_reqs is one of"),
        ("rediss://:hunter2@cache:6379/0?ssl_ca=x", "takes only the options"),
        ("unix://:hunter2@?db=0", "names its socket"),
        ("UNIX://:hunter2@?db=0", "names its socket"),
    ],
)
def test_bad_redis_urls_stop_the_process_at_start(ca_file: str, url: str, problem: str) -> None:
    message = refusal(GATEHOUSE_REDIS_URL=url.format(ca=ca_file))
    assert message.startswith("GATEHOUSE_REDIS_URL is not valid: ") and problem in message
    assert "hunter2" not in message


def test_a_migration_of_a_large_table_may_have_an_hour_per_statement() -> None:
    """docs/design.md: an index build too long for a replica's start runs by `migrate` with
    GATEHOUSE_MYSQL_TIMEOUT raised to cover it; on devstack it took 5.2 s per million rows (20 s
    under load), so a table of tens of millions needs more than minutes."""
    settings = load_settings(
        DatabaseSettings,
        {"GATEHOUSE_MYSQL_PRIMARY_DSN": VALID_DSN, "GATEHOUSE_MYSQL_TIMEOUT": "3600"},
    )
    assert settings.mysql_timeout == 3600.0
    assert "must be at most" in refusal(GATEHOUSE_MYSQL_TIMEOUT="1e9")


def test_migrations_use_the_migration_dsn_when_there_is_one() -> None:
    migrator = "mysql://ddl:hunter2ddl@db.internal:3307/gatehouse"
    plain = load_settings(DatabaseSettings, {"GATEHOUSE_MYSQL_PRIMARY_DSN": VALID_DSN})
    assert plain.migration_dsn == VALID_DSN
    split = load_settings(
        DatabaseSettings,
        {"GATEHOUSE_MYSQL_PRIMARY_DSN": VALID_DSN, "GATEHOUSE_MYSQL_MIGRATION_DSN": migrator},
    )
    assert split.migration_dsn == migrator
    with pytest.raises(ConfigError, match="GATEHOUSE_MYSQL_MIGRATION_DSN is not valid"):
        load_settings(
            DatabaseSettings,
            {"GATEHOUSE_MYSQL_PRIMARY_DSN": VALID_DSN, "GATEHOUSE_MYSQL_MIGRATION_DSN": "ddl@db"},
        )


def test_the_bootstrap_command_needs_the_migration_dsn() -> None:
    with pytest.raises(ConfigError, match="GATEHOUSE_MYSQL_MIGRATION_DSN is required by"):
        load_settings(
            BootstrapSettings,
            {
                "GATEHOUSE_MYSQL_PRIMARY_DSN": VALID_DSN,
                "GATEHOUSE_MYSQL_ADMIN_DSN": "mysql://root:pw@db.internal/gatehouse",
            },
        )


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Zk3p/9qLmW@redis.internal:6379/0",  # the password's start read as the port
        "redis://default:Qx7abc?Wq9def@redis.internal:6379/0",
        "redis://:pW4x#Fr4g@redis.internal:6379",
        "redis://:1234?secretpart=1@redis.internal:6379/0",  # as an option's name
        "rediss://:1234?ssl_ca_certs=secretpart@redis.internal:6379/0",  # as a CA file
        "redis://:pa\uff0fsswd@redis.internal:6379/0",  # NFKC-unsafe: urllib quoted the netloc
        "redis://:se@cret?secretpart=1@redis.internal:6379/0",  # an '@' before the cut too
        "rediss://:se@cret?ssl_ca_certs=secretpart@redis.internal:6379/0",
        "unix://:se@cret/secretpart@/run/redis.sock",
        # The host part reads as host:port: taken, and connection errors named "default:2024".
        "redis://default:2024?Spring@redis.internal:6379/0",
    ],
)
def test_a_redis_url_refused_never_quotes_part_of_its_password(url: str) -> None:
    """A password with an unencoded '/', '?' or '#' ends the URL's host part early: urllib
    then read its first part as the port and redis-py's error quoted it, and the refusal is
    logged at start."""
    message = refusal(GATEHOUSE_REDIS_URL=url)
    password = url.split("://", 1)[1].rsplit("@", 1)[0].partition(":")[2]
    pieces = {piece for piece in re.split(r"[/?#=]", password) if len(piece) >= 3}
    fragments = pieces - set(TLS_OPTIONS)  # named by the messages themselves
    assert fragments and not any(piece in message for piece in fragments), message
    assert "percent-encode" in message


@pytest.mark.parametrize(
    "url",
    [
        "unix:///run/redis.sock?db=0&password=s3cr@t",  # redis-py's documented unix:// password
        "unix://user@/run/redis.sock?db=0&password=s3cr@t",
        "redis://:p@ss@redis.internal:6379/0",  # urllib takes the host part's last '@'
        "redis://user:pw@[::1]:6379/0",
        "redis://:Zk3p%2F9qLmW@redis.internal:6379/0",
        "rediss://:pw@cache:6379/0?ssl_ca_certs={ca_at}",  # a CA file whose name holds an '@'
        "rediss://cache:6379/0?ssl_ca_certs={ca_at}",  # the same without a password
        "redis://cache:6379/0?password=s3cr@t",  # redis-py takes a password option anywhere
        "unix://localhost/run/redis@0.sock",
    ],
)
def test_an_at_sign_that_cuts_no_password_is_taken(ca_file: str, tmp_path: Path, url: str) -> None:
    ca_at = tmp_path / "ca@corp.pem"
    ca_at.write_bytes(Path(ca_file).read_bytes())
    url = url.format(ca_at=ca_at)
    assert load_settings(AuthSettings, {**VALID, "GATEHOUSE_REDIS_URL": url}).redis_url == url


def test_a_unix_url_whose_password_a_slash_cuts_is_refused() -> None:
    """Else the socket's path is the password's second half, and every Redis failure's warning
    ("Error 2 connecting to /9qLmW@/run/redis.sock") quotes it."""
    message = refusal(GATEHOUSE_REDIS_URL="unix://:Zk3p/9qLmW@/run/redis.sock")
    assert "9qLmW" not in message and "percent-encode" in message, message


def test_secret_files_made_with_kubectl_from_file_load_as_their_variables_did(
    tmp_path: Path,
) -> None:
    """`kubectl create secret --from-file` keeps an editor's final line break: a DSN, a Redis
    URL, peppers and a PEM key load without it; a key the code uses as bytes (the device
    cookie's) keeps it, as its variable did, so pods old and new sign alike."""
    values = {
        **VALID,
        "GATEHOUSE_MYSQL_REPLICA_DSNS": f"{VALID_DSN},{VALID_DSN}",
        "GATEHOUSE_REDIS_URL": "redis://:hunter2pw@cache.internal:6380/2",
    }
    files = {}
    for name, value in values.items():
        path = tmp_path / name
        path.write_text(f"{value}\n")
        files[f"{name}_FILE"] = str(path)
    settings = load_settings(AuthSettings, files)
    assert settings.mysql_primary_dsn == VALID_DSN
    assert settings.mysql_replica_dsns == (VALID_DSN, VALID_DSN)
    assert settings.redis_url == values["GATEHOUSE_REDIS_URL"]
    assert settings.peppers == {1: b"hunter2one", 2: b"hunter2two"}
    expected_key = serialization.load_pem_private_key(PEM.encode(), None)
    assert isinstance(settings.jwt_private_key, Ed25519PrivateKey)
    assert isinstance(expected_key, Ed25519PrivateKey)
    assert settings.jwt_private_key.private_bytes_raw() == expected_key.private_bytes_raw()
    assert settings.device_cookie_secret == "d" * 32 + "\n"
