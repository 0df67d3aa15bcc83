"""Protocol versions, the handshake, and the RPC boundary's one error type."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from services.contract import auth_pb2 as pb

# Version 1: Hello handshake, then Envelopes multiplexed by call_id (proto/gatehouse/v1).
# Version 2: the client may send METHOD_CANCEL for a call it gave up on.
# Version 3: the account lifecycle's methods (ListSessions ... DeleteAccount; the method table's
#   `since_protocol`). A server answers them UNIMPLEMENTED on a connection that negotiated less,
#   and the HTTP tier sends them only to replicas that advertise and negotiated 3.
# Version 4: operator calls (AdminShowUser ... AdminPepperUsage) for the `gatehouse` CLI, and
#   the "account_locked" answer to Authenticate.
# Version 5: a call its client cancelled is answered once the server is done with it
#   (UNAVAILABLE, reason "cancelled"): a handler that had started runs on, and the client counts
#   the call against the connection's cap of calls in flight until that answer (or its deadline).
PROTOCOL_MIN = 1
PROTOCOL_MAX = 5
# The first version in which a client may send METHOD_CANCEL.
CANCEL_SINCE = 2
# The first version in which a cancelled call is answered when the server is done with it.
CANCELLED_ANSWER_SINCE = 5
CANCELLED_REASON = "cancelled"
# DRAINING with this reason: this call was not run because the replica cannot serve its method
# yet; the caller retries it elsewhere and keeps sending the replica its other calls.
NOT_READY_REASON = "not_ready"

STATUS_NAMES: dict[int, str] = {
    value.number: value.name.removeprefix("STATUS_") for value in pb.Status.DESCRIPTOR.values
}


class ProtocolMismatch(Exception):
    """The two sides share no protocol version."""


class RpcError(Exception):
    """A call answered with a status other than OK, or one that never got an answer.

    `status` is a pb.Status value; `reason` is the machine-readable cause (snake_case);
    `retry_after_seconds` (0: not said) tells when a refused call may be tried again.
    Build a fresh one for every raise: a raised exception keeps the frames it passed through
    (and their locals) in its traceback, so one shared instance grows with every raise.
    """

    def __init__(
        self, status: pb.Status, message: str, reason: str = "", *, retry_after_seconds: int = 0
    ) -> None:
        super().__init__(f"{STATUS_NAMES.get(status, status)}: {message}")
        self.status = status
        self.message = message
        self.reason = reason
        self.retry_after_seconds = retry_after_seconds


def hello(
    agent: str,
    protocol_min: int = PROTOCOL_MIN,
    protocol_max: int = PROTOCOL_MAX,
    *,
    max_calls_in_flight: int = 0,
) -> bytes:
    """A Hello; a server says in `max_calls_in_flight` how many calls a connection may have in
    flight at once (0: no cap said)."""
    return pb.Hello(
        protocol_min=protocol_min,
        protocol_max=protocol_max,
        agent=agent,
        max_calls_in_flight=max_calls_in_flight,
    ).SerializeToString()


def decode_hello(body: bytes) -> pb.Hello:
    try:
        message = pb.Hello.FromString(body)
    except DecodeError as exc:
        raise ProtocolMismatch(f"the first frame is not a Hello: {exc}") from exc
    if message.protocol_min == 0 or message.protocol_min > message.protocol_max:
        raise ProtocolMismatch(
            f"the peer's Hello has no valid version range ({message.protocol_min}..{message.protocol_max})"
        )
    return message


def negotiate(local_min: int, local_max: int, remote_min: int, remote_max: int) -> int:
    """The highest version both ranges contain."""
    highest = min(local_max, remote_max)
    if highest < max(local_min, remote_min):
        raise ProtocolMismatch(
            f"no common protocol version: we speak {local_min}..{local_max}, "
            f"the peer speaks {remote_min}..{remote_max}; upgrade the older side"
        )
    return highest
