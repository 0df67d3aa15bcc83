"""TLS to MySQL and Redis: MariaDB and Redis started to accept TLS clients only (certificates
of a throwaway CA), and Gatehouse working through them on the application user alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pymysql
import pytest
import redis

from devstack.certs import CertificateAuthority
from devstack.gatehouse import Gatehouse
from devstack.ports import HOST, wait_until
from devstack.stack import DataStores
from services.auth.store.database import Database, DatabaseError
from tests.conftest import TEST_SETTINGS
from tests.system.support import sample_sum, scrape, signed_up_token

ACCESS_DENIED = 1045


@pytest.fixture(scope="module")
def tls_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataStores]:
    stores = DataStores.start(tmp_path_factory.mktemp("tls-stores"), tls=True)
    try:
        yield stores
    finally:
        stores.stop()


@pytest.fixture(scope="module")
def tls_gatehouse(
    tls_stores: DataStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gatehouse]:
    system = Gatehouse(
        tls_stores, tmp_path_factory.mktemp("tls-gatehouse"), settings=dict(TEST_SETTINGS)
    )
    try:
        system.start(1, 1)
        yield system
    finally:
        system.stop()


@pytest.fixture
async def tls_client(tls_gatehouse: Gatehouse) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=tls_gatehouse.url(), timeout=15.0, trust_env=False
    ) as client:
        yield client


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return CertificateAuthority(tmp_path_factory.mktemp("other-ca"), name="Another CA").cert_path


def with_ca(stores: DataStores, url: str, ca: Path) -> str:
    """`url` (a DSN or Redis URL of `stores`) verifying against `ca` instead of their CA."""
    assert stores.primary.tls is not None
    ours = quote(str(stores.primary.tls.ca_path))
    assert ours in url
    return url.replace(ours, quote(str(ca)))


async def test_signup_and_login_work_with_mysql_and_redis_over_tls_only(
    tls_stores: DataStores, tls_client: httpx.AsyncClient, tls_gatehouse: Gatehouse
) -> None:
    await signed_up_token(tls_client)
    # The auth service wrote its cache (only it writes there) through Redis's TLS-only port.
    cache = redis.Redis.from_url(tls_stores.redis_url, socket_timeout=5)
    try:
        assert cache.dbsize() > 0
    finally:
        cache.close()
    # Its invalidation connection (local_cache.py) works over TLS too: the copies answer.
    ops = f"http://{HOST}:{tls_gatehouse.auth[0].ports['ops']}/metrics"
    wait_until(
        lambda: sample_sum(scrape(ops), "gatehouse_auth_local_cache_answering") == 1,
        10.0,
        "the auth replica's local cache answers",
    )
    # And its rows through MariaDB's TLS-only TCP port, as the application user.
    rows = tls_stores.primary.execute(
        f"SELECT COUNT(*) AS n FROM `{tls_stores.app_database}`.users"
    )
    assert rows[0]["n"] >= 1


async def test_the_service_dsn_gets_an_encrypted_session(tls_stores: DataStores) -> None:
    database = await Database.open(tls_stores.primary_dsn, role="primary", pool_size=1, timeout=5.0)
    try:
        row = await database.fetch_one("cipher", "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert row is not None and row["Value"], row
        user = await database.fetch_one("user", "SELECT CURRENT_USER() AS user")
        assert user is not None and user["user"].startswith(f"{tls_stores.app_user}@")
    finally:
        await database.close()


def test_plaintext_clients_are_refused_by_both_stores(tls_stores: DataStores) -> None:
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql.connect(
            host=HOST,
            port=tls_stores.primary.port,
            user=tls_stores.app_user,
            password=tls_stores.app_password,
            database=tls_stores.app_database,
            connect_timeout=5,
        )
    # MariaDB words it as a denied login; the same login over TLS is let in.
    assert refused.value.args[0] == ACCESS_DENIED
    with (
        tls_stores.primary.connect(
            tls_stores.app_user, tls_stores.app_password, tls_stores.app_database, tcp=True
        ) as secure,
        secure.cursor() as cursor,
    ):
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert cursor.fetchone()[1].startswith("TLS")
    plain = redis.Redis(host=HOST, port=tls_stores.redis.port, socket_timeout=5)
    try:
        with pytest.raises(redis.ConnectionError):
            plain.ping()
    finally:
        plain.close()


async def test_a_mysql_certificate_from_another_ca_is_refused_with_a_clear_error(
    tls_stores: DataStores, other_ca: Path
) -> None:
    dsn = with_ca(tls_stores, tls_stores.primary_dsn, other_ca)
    assert "ssl-ca=" in dsn and str(other_ca.name) in dsn
    database = await Database.open(dsn, role="primary", pool_size=1, timeout=5.0)
    try:
        with pytest.raises(DatabaseError, match=r"TLS failed: .*CERTIFICATE_VERIFY_FAILED"):
            await database.fetch_one("probe", "SELECT 1")
    finally:
        await database.close()


def test_a_redis_certificate_from_another_ca_is_refused(
    tls_stores: DataStores, other_ca: Path
) -> None:
    url = with_ca(tls_stores, tls_stores.redis_url, other_ca)
    assert "ssl_ca_certs=" in url and str(other_ca.name) in url
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            client.ping()
    finally:
        client.close()


def test_an_auth_replica_given_another_ca_stops_saying_why(
    tls_gatehouse: Gatehouse, tls_stores: DataStores, other_ca: Path
) -> None:
    replica = tls_gatehouse.start_auth(
        {"GATEHOUSE_MYSQL_PRIMARY_DSN": with_ca(tls_stores, tls_stores.primary_dsn, other_ca)},
        wait=False,
    )
    try:
        wait_until(
            lambda: not replica.process.alive,
            60,
            "the replica given another CA exits",
            where=replica.process.log_path,
        )
        assert replica.process.returncode != 0
        assert "CERTIFICATE_VERIFY_FAILED" in replica.process.log_path.read_text()
    finally:
        replica.process.stop()
        tls_gatehouse.auth.remove(replica)
