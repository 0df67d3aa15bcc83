"""How long the server may spend on a call, by the caller's clock as well as its own.

A call's `deadline_ms` is the time it had left when the caller sent it; the caller gives up
at `sent_at_unix_ms + deadline_ms` by its wall clock. Counting the budget from the moment the
server reads the frame would make a frame that sat in a socket buffer (the replica was frozen,
or its event loop blocked) look fresh, and a write its caller already answered as failed could
then land after a later write the caller saw succeed. So the budget is the smaller of the two,
and a call whose caller has already given up is not started (docs/design.md, "Deadlines").

`skew_allowance` counts a call as expired that much early: with the server's clock behind the
caller's by no more than it, a call the caller has given up on is never started.
"""

from __future__ import annotations

from services.contract import auth_pb2 as pb

# Calls sent with no deadline still get one, so no call can hold a replica forever.
DEFAULT_DEADLINE = 30.0
# Nor with a deadline of days (deadline_ms takes up to 49.7 days): the longest any caller
# waits is the gatehouse command's GATEHOUSE_CLI_TIMEOUT at its maximum.
MAX_DEADLINE = 300.0


def call_budget(request: pb.Envelope, *, wall_now: float, skew_allowance: float) -> float:
    """Seconds the server may spend on `request` from now (`wall_now`: Unix seconds).
    Zero or less: its caller has given up already. Callers that do not send their clock
    (sent_at_unix_ms 0) get their deadline counted from now, as before."""
    if not request.deadline_ms:
        return DEFAULT_DEADLINE
    budget = min(request.deadline_ms / 1000, MAX_DEADLINE)
    if not request.sent_at_unix_ms:
        return budget
    given_up_at = (request.sent_at_unix_ms + request.deadline_ms) / 1000
    return min(budget, given_up_at - wall_now - skew_allowance)
