"""What the code serving an RPC call may need to know about the call itself.

The server runs each call as its own task and sets `current_call` in it. When the caller sends
METHOD_CANCEL, the server marks the call abandoned; a call that has not started yet is not run,
and work inside it that has not started yet (a password hash waiting for a thread) checks the
mark and is skipped. Nothing is interrupted halfway, so
a cancel can never leave a write half done.

The scope also carries the caller's proven identity (the URI SAN of its client certificate with
mutual TLS; None without), for the few handlers whose rules depend on who calls.
"""

from __future__ import annotations

from contextvars import ContextVar


class CallScope:
    __slots__ = ("abandoned", "identity")

    def __init__(self, identity: str | None = None) -> None:
        # Read from hashing threads without a lock: a bool attribute is one atomic store.
        self.abandoned = False
        self.identity = identity


def caller_identity() -> str | None:
    """The proven identity of the caller of the call being served; None without one."""
    scope = current_call.get()
    return scope.identity if scope is not None else None


current_call: ContextVar[CallScope | None] = ContextVar("current_call", default=None)
