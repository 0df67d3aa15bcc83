"""Codec abuse against a real auth replica: only the offending connection ends."""

from __future__ import annotations

import struct

from devstack.gatehouse import Gatehouse
from services.contract import auth_pb2 as pb
from services.foundation.rpc.client import RpcConnection
from services.foundation.rpc.framing import encode_frame
from tests.auth.raw_peer import RawPeer


async def test_abusive_connections_end_and_the_replica_keeps_serving(gatehouse: Gatehouse) -> None:
    port = gatehouse.auth[0].ports["rpc"]
    tls = gatehouse.client_tls()
    assert tls is not None, "the shared stack runs the RPC over mutual TLS"
    bystander = await RpcConnection.open(
        "127.0.0.1", port, connect_timeout=2.0, agent="bystander", tls=tls
    )

    oversized = await RawPeer.open(port, tls=tls)
    oversized.writer.write(struct.pack(">I", 64 * 1024 * 1024))
    error = pb.Envelope.FromString(await oversized.next_frame())
    assert (error.call_id, error.reason) == (0, "frame_too_large")
    assert await oversized.closed_by_server()

    garbage = await RawPeer.open(port, tls=tls)
    garbage.writer.write(encode_frame(b"\xff" * 12))
    error = pb.Envelope.FromString(await garbage.next_frame())
    assert (error.call_id, error.reason) == (0, "undecodable_frame")
    assert await garbage.closed_by_server()

    truncated = await RawPeer.open(port, tls=tls)
    truncated.writer.write(struct.pack(">I", 1000) + b"partial")
    silent = await RawPeer.open(port, handshake=False, tls=tls)
    error = pb.Envelope.FromString(await truncated.next_frame())
    assert (error.call_id, error.reason) == (0, "frame_timeout")
    assert await truncated.closed_by_server()
    assert await silent.closed_by_server()

    reply = await bystander.call(pb.METHOD_PING, pb.PingRequest().SerializeToString(), timeout=5.0)
    assert reply.status == pb.STATUS_OK
    assert pb.PingReply.FromString(reply.payload).instance_id == gatehouse.auth[0].name
    bystander.close()
