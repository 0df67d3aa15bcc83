"""The RPC server's connection limits with mutual TLS: a connection is counted in when it is
accepted, before its TLS handshake, so connects that never start one cannot hold sockets past
the per-address share, and the other peers still get through."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from devstack.ports import wait_until_async
from devstack.rpc_tls import RpcCertificates
from services.contract import auth_methods as methods
from services.foundation.rpc.client import RpcConnection
from services.foundation.rpc.routes import Route
from services.foundation.rpc.server import RpcServer
from services.foundation.rpc.tls import TlsFiles, server_context
from tests.auth.test_server import LIMITS, echo, echo_request, echoed, open_from

PER_PEER = 3


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "gatehouse_auth_rpc_rejected_connections_total", {"reason": reason}
    )
    return value or 0.0


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[RpcServer, int, RpcCertificates]]:
    certificates = RpcCertificates.issue(tmp_path)
    issued = certificates.server
    rpc = RpcServer(
        [Route(methods.GET_BLOB, echo)],
        dataclasses.replace(LIMITS, max_connections=8, max_connections_per_peer=PER_PEER),
        agent="test",
        tls=server_context(TlsFiles(issued.ca_path, issued.cert_path, issued.key_path)),
    )
    port = await rpc.start("127.0.0.1", 0)
    yield rpc, port, certificates
    await rpc.close()


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

        connection = await RpcConnection.open(
            "127.0.0.1", port, connect_timeout=5.0, agent="test", tls=certificates.client_tls()
        )
        reply = await connection.call(methods.GET_BLOB.number, echo_request("in"), timeout=5.0)
        assert echoed(reply) == "in"
        connection.close()

        # Handshakes never begun end at GATEHOUSE_HANDSHAKE_TIMEOUT, and stop counting.
        await wait_until_async(
            lambda: rpc.connection_count == 0, 5.0, "the silent connects to time out"
        )
        assert rejected("tls_handshake_failed") == failed_before + PER_PEER
    finally:
        for held in silent:
            held.close()


async def test_an_empty_host_serves_tls_on_every_interface(tmp_path: Path) -> None:
    """As asyncio binds it for the plaintext server: "" is all interfaces."""
    certificates = RpcCertificates.issue(tmp_path)
    issued = certificates.server
    rpc = RpcServer(
        [Route(methods.GET_BLOB, echo)],
        LIMITS,
        agent="test",
        tls=server_context(TlsFiles(issued.ca_path, issued.cert_path, issued.key_path)),
    )
    port = await rpc.start("", 0)
    try:
        connection = await RpcConnection.open(
            "127.0.0.1", port, connect_timeout=5.0, agent="test", tls=certificates.client_tls()
        )
        reply = await connection.call(methods.GET_BLOB.number, echo_request("any"), timeout=5.0)
        assert echoed(reply) == "any"
        connection.close()
    finally:
        await rpc.close()
