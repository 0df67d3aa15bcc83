"""The RPC server's connection limits with mutual TLS: a connection is counted in when it is
accepted, before its TLS handshake, so connects that never start one cannot hold sockets past
the per-address share, nor, while unauthenticated, past the smaller handshake cap of their
address; the other peers still get through."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from devstack.ports import wait_until_async
from devstack.rpc_tls import RpcCertificates
from services.contract import auth_methods as methods
from services.foundation.rpc.client import RpcConnection
from services.foundation.rpc.routes import Route
from services.foundation.rpc.server import RpcServer, ServerLimits
from services.foundation.rpc.tls import TlsFiles, server_context
from tests.auth.test_server import LIMITS, echo, echo_request, echoed, open_from

PER_PEER = 3
HANDSHAKES_PER_PEER = 2
AUTHENTICATED = HANDSHAKES_PER_PEER + 1  # more completed handshakes than the cap allows


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "gatehouse_auth_rpc_rejected_connections_total", {"reason": reason}
    )
    return value or 0.0


@asynccontextmanager
async def echo_server_over_tls(
    tmp_path: Path, limits: ServerLimits, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[RpcServer, int, RpcCertificates]]:
    certificates = RpcCertificates.issue(tmp_path)
    issued = certificates.server
    rpc = RpcServer(
        [Route(methods.GET_BLOB, echo)],
        limits,
        agent="test",
        tls=server_context(TlsFiles(issued.ca_path, issued.cert_path, issued.key_path)),
    )
    port = await rpc.start(host, 0)
    try:
        yield rpc, port, certificates
    finally:
        await rpc.close()


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[RpcServer, int, RpcCertificates]]:
    limits = dataclasses.replace(LIMITS, max_connections=8, max_connections_per_peer=PER_PEER)
    async with echo_server_over_tls(tmp_path, limits) as served:
        yield served


async def test_connects_that_never_start_tls_get_one_addresss_share_and_no_more(
    tls_server: tuple[RpcServer, int, RpcCertificates],
) -> None:
    rpc, port, certificates = tls_server
    failed_before = rejected("tls_handshake_failed")
    silent = [(await open_from("127.0.0.2", port))[1] for _ in range(PER_PEER)]
    try:
        await wait_until_async(
            lambda: rpc.connection_count == PER_PEER, 5.0, "the silent connects to be counted"
        )
        refused_before = rejected("too_many_from_peer")
        reader, writer = await open_from("127.0.0.2", port)
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed before any handshake
        writer.close()
        assert rejected("too_many_from_peer") == refused_before + 1

        await call_gets_through(port, certificates)

        # Handshakes never begun end at GATEHOUSE_HANDSHAKE_TIMEOUT, and stop counting.
        await wait_until_async(
            lambda: rpc.connection_count == 0, 5.0, "the silent connects to time out"
        )
        assert rejected("tls_handshake_failed") == failed_before + PER_PEER
    finally:
        for held in silent:
            held.close()


@pytest.fixture
async def handshake_capped_server(
    tmp_path: Path,
) -> AsyncIterator[tuple[RpcServer, int, RpcCertificates]]:
    limits = dataclasses.replace(
        LIMITS,
        max_connections=8,
        # Room for the test's connections and one more, which the handshake cap refuses: a
        # refusal that left it counted here would be refused by this share next time.
        max_connections_per_peer=AUTHENTICATED + HANDSHAKES_PER_PEER + 1,
        max_tls_handshakes_per_peer=HANDSHAKES_PER_PEER,
        # Nothing here may time out on a slow machine: the test ends each connection itself.
        handshake_timeout=30.0,
    )
    async with echo_server_over_tls(tmp_path, limits) as served:
        yield served


async def call_gets_through(port: int, certificates: RpcCertificates) -> None:
    """A new client from 127.0.0.1 connects over mutual TLS and is answered."""
    connection = await RpcConnection.open(
        "127.0.0.1", port, connect_timeout=5.0, agent="test", tls=certificates.client_tls()
    )
    reply = await connection.call(methods.GET_BLOB.number, echo_request("in"), timeout=5.0)
    assert echoed(reply) == "in"
    connection.close()


async def authenticated_from(
    address: str, port: int, certificates: RpcCertificates
) -> asyncio.StreamWriter:
    """A connection from `address` whose TLS handshake (the client certificate's) completed."""
    client = certificates.client_tls()
    _, writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        local_addr=(address, 0),
        ssl=client.context,
        server_hostname=client.server_name,
    )
    return writer


async def test_connects_still_in_their_tls_handshake_have_a_smaller_cap_per_address(
    handshake_capped_server: tuple[RpcServer, int, RpcCertificates],
) -> None:
    rpc, port, certificates = handshake_capped_server
    held: list[asyncio.StreamWriter] = []
    try:
        # Completed handshakes do not count against the cap.
        handshakes_before = tls_handshakes()
        for _ in range(AUTHENTICATED):
            held.append(await authenticated_from("127.0.0.2", port, certificates))
        await wait_until_async(
            lambda: tls_handshakes() == handshakes_before + AUTHENTICATED,
            10.0,
            "the server to complete the handshakes",
        )
        silent = await silent_connects(rpc, port, HANDSHAKES_PER_PEER, AUTHENTICATED)
        # Under its share, but one more unauthenticated connection than the cap.
        await assert_refused_for_handshakes(port)
        assert rpc.connection_count == AUTHENTICATED + HANDSHAKES_PER_PEER

        # Another address has a cap of its own.
        await call_gets_through(port, certificates)

        # A handshake that fails (its peer hangs up) frees its place.
        for writer in silent:
            writer.close()
        await wait_until_async(
            lambda: rpc.connection_count == AUTHENTICATED, 10.0, "the failed handshakes to end"
        )
        held.extend(await silent_connects(rpc, port, HANDSHAKES_PER_PEER, AUTHENTICATED))
        await assert_refused_for_handshakes(port)
    finally:
        for writer in held:
            writer.close()


def tls_handshakes() -> float:
    return REGISTRY.get_sample_value("gatehouse_auth_rpc_tls_handshakes_total") or 0.0


async def silent_connects(
    rpc: RpcServer, port: int, count: int, connections_before: int
) -> list[asyncio.StreamWriter]:
    """`count` connects from 127.0.0.2 that start no handshake, once the server holds them."""
    writers = [(await open_from("127.0.0.2", port))[1] for _ in range(count)]
    await wait_until_async(
        lambda: rpc.connection_count == connections_before + count,
        10.0,
        "the silent connects to be counted",
    )
    return writers


async def assert_refused_for_handshakes(port: int) -> None:
    refused_before = rejected("too_many_handshakes_from_peer")
    reader, writer = await open_from("127.0.0.2", port)
    assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed before any handshake
    writer.close()
    assert rejected("too_many_handshakes_from_peer") == refused_before + 1


async def test_an_empty_host_serves_tls_on_every_interface(tmp_path: Path) -> None:
    """As asyncio binds it for the plaintext server: "" is all interfaces."""
    async with echo_server_over_tls(tmp_path, LIMITS, host="") as (_, port, certificates):
        await call_gets_through(port, certificates)


# Four silent connects fill the server; they must outlast the test.
FULL_OF_HANDSHAKES = dataclasses.replace(
    LIMITS,
    max_connections=4,
    max_connections_per_peer=4,
    max_tls_handshakes_per_peer=HANDSHAKES_PER_PEER,
    handshake_timeout=30.0,
    handshake_evictable_after=0.0,
)
SILENT_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


async def test_silent_connects_from_many_addresses_do_not_keep_a_caller_out(
    tmp_path: Path,
) -> None:
    """Each address under its handshake cap, together they fill the server: a connect closes
    the oldest handshake of an address holding more handshakes than its own."""
    async with echo_server_over_tls(tmp_path, FULL_OF_HANDSHAKES) as served:
        await fill_with_silent_connects_then_call(*served)


async def fill_with_silent_connects_then_call(
    rpc: RpcServer, port: int, certificates: RpcCertificates
) -> None:
    silent: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def silent_connect(address: str) -> None:
        silent.setdefault(address, []).append(await open_from(address, port))
        await wait_until_async(
            lambda: rpc.connection_count == sum(map(len, silent.values())),
            10.0,
            f"the silent connect from {address} to be counted",
        )

    try:
        for address in SILENT_ADDRESSES:
            await silent_connect(address)
        assert rpc.connection_count == rpc.limits.max_connections
        evicted_before = rejected("evicted_in_tls_handshake")
        # No address holds more handshakes than 127.0.0.3: no room for it.
        await assert_refused_at_the_cap("127.0.0.3", port)

        # 127.0.0.1 holds none: the oldest handshake, 127.0.0.2's, makes room for its caller.
        await call_gets_through(port, certificates)
        assert rejected("evicted_in_tls_handshake") == evicted_before + 1
        assert await asyncio.wait_for(silent["127.0.0.2"][0][0].read(), 5.0) == b""
        silent.pop("127.0.0.2")[0][1].close()
        await wait_until_async(
            lambda: rpc.connection_count == len(SILENT_ADDRESSES) - 1,
            10.0,
            "the evicted connect and the caller's to be uncounted",
        )

        # 127.0.0.3 passes over the older handshakes of addresses holding as many as it does.
        await silent_connect("127.0.0.5")
        _, writer = await open_from("127.0.0.3", port)
        assert await asyncio.wait_for(silent["127.0.0.5"][0][0].read(), 5.0) == b""
        assert rejected("evicted_in_tls_handshake") == evicted_before + 2
        writer.close()
    finally:
        for connections in silent.values():
            for _, held in connections:
                held.close()


async def test_a_handshake_younger_than_the_eviction_age_is_not_closed(tmp_path: Path) -> None:
    """A caller's handshake in progress is young: the same connects, none old enough."""
    limits = dataclasses.replace(FULL_OF_HANDSHAKES, handshake_evictable_after=60.0)
    async with echo_server_over_tls(tmp_path, limits) as (rpc, port, _):
        held = [await open_from(address, port) for address in SILENT_ADDRESSES]
        try:
            await wait_until_async(
                lambda: rpc.connection_count == rpc.limits.max_connections,
                10.0,
                "the silent connects to fill the server",
            )
            await assert_refused_at_the_cap("127.0.0.1", port)
            assert rpc.connection_count == rpc.limits.max_connections
        finally:
            for _, writer in held:
                writer.close()


async def assert_refused_at_the_cap(address: str, port: int) -> None:
    """A connect from `address` is closed before any handshake, for the cap, evicting no one."""
    full_before = rejected("too_many_connections")
    evicted_before = rejected("evicted_in_tls_handshake")
    reader, writer = await open_from(address, port)
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    writer.close()
    assert rejected("too_many_connections") == full_before + 1
    assert rejected("evicted_in_tls_handshake") == evicted_before
