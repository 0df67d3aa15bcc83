"""One RPC method of the wire contract, as the generated table declares it (auth_methods.py).

The table is generated from the `service` block in proto/ by `make proto`; this module holds
only the type of its entries, so the contract needs nothing from the layers above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

RequestT = TypeVar("RequestT", bound=Message)
ReplyT = TypeVar("ReplyT", bound=Message)


@dataclass(frozen=True)
class Method(Generic[RequestT, ReplyT]):
    """A call that sends a `request_type` and is answered with a `reply_type`."""

    number: int  # the Method enum value its Envelopes carry
    name: str  # snake_case, for logs and metric labels
    request_type: type[RequestT]
    reply_type: type[ReplyT]
    # Safe to send twice (a read, or a write keyed by its content): the caller may retry it
    # on another replica after an answer that is not definite.
    idempotent: bool
    # The first protocol version that has this method: send it only to replicas whose
    # advertised range reaches it.
    since_protocol: int
