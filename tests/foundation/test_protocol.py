from __future__ import annotations

import pytest

from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import ProtocolMismatch, decode_hello, hello, negotiate


@pytest.mark.parametrize(
    ("local", "remote", "chosen"),
    [((1, 1), (1, 1), 1), ((1, 3), (2, 5), 3), ((2, 5), (1, 3), 3), ((1, 2), (2, 2), 2)],
)
def test_highest_common_version_is_chosen(
    local: tuple[int, int], remote: tuple[int, int], chosen: int
) -> None:
    assert negotiate(*local, *remote) == chosen


def test_disjoint_ranges_are_refused_with_both_ranges_named() -> None:
    with pytest.raises(ProtocolMismatch, match=r"we speak 1\.\.2, the peer speaks 3\.\.4"):
        negotiate(1, 2, 3, 4)


def test_hello_round_trip_and_invalid_ranges() -> None:
    decoded = decode_hello(hello("agent/1", 1, 2))
    assert (decoded.protocol_min, decoded.protocol_max, decoded.agent) == (1, 2, "agent/1")
    with pytest.raises(ProtocolMismatch):
        decode_hello(pb.Hello(protocol_min=3, protocol_max=2).SerializeToString())
    with pytest.raises(ProtocolMismatch):
        decode_hello(b"\xff\xff\xff")


def test_unknown_fields_are_ignored_on_decode() -> None:
    # A newer peer's Envelope with an extra field 15 (string) must still decode.
    newer = pb.Envelope(call_id=7, method=pb.METHOD_PING).SerializeToString() + b"\x7a\x03abc"
    decoded = pb.Envelope.FromString(newer)
    assert (decoded.call_id, decoded.method) == (7, pb.METHOD_PING)
