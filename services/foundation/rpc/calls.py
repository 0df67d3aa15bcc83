"""What the code serving an RPC call may need to know about the call itself.

The server runs each call as its own task and sets `current_call` in it. When the caller sends
METHOD_CANCEL, the server marks the call abandoned; a call that has not started yet is not run,
and work inside it that has not started yet (a password hash waiting for a thread) checks the
mark and is skipped. Nothing is interrupted halfway, so
a cancel can never leave a write half done.
"""

from __future__ import annotations

from contextvars import ContextVar


class CallScope:
    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        # Read from hashing threads without a lock: a bool attribute is one atomic store.
        self.abandoned = False


current_call: ContextVar[CallScope | None] = ContextVar("current_call", default=None)
