"""How much of GATEHOUSE_CALL_TIMEOUT one request's RPCs may still take.

The setting is the deadline of one API call's RPCs, not of each RPC: a page that registers,
logs in and renders the profile makes several calls in a row, and against a slow auth replica
each one's own deadline would let the request run several times the setting, past the clients'
patience and past the server's kill timeout at shutdown (GATEHOUSE_CALL_TIMEOUT plus a margin).
Time the request spends elsewhere (a picture's slow upload) is not counted: only the RPCs', and
a login's wait for its client's share of the hashing budget (services.http.middleware.admission).

    token = begin_request()        # RequestContextMiddleware, for each request
    budget = call_budget_var.get() # AuthClient.call: None outside a request (background work)
    remaining = budget.remaining(call_timeout); ...; budget.spend(seconds)
    end_request(token)
"""

from __future__ import annotations

from contextvars import ContextVar, Token


class CallBudget:
    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent = 0.0  # seconds the request's RPCs took; concurrent ones each count

    def remaining(self, call_timeout: float) -> float:
        return call_timeout - self.spent

    def spend(self, seconds: float) -> None:
        self.spent += seconds


call_budget_var: ContextVar[CallBudget | None] = ContextVar("call_budget", default=None)


def begin_request() -> Token[CallBudget | None]:
    return call_budget_var.set(CallBudget())


def end_request(token: Token[CallBudget | None]) -> None:
    call_budget_var.reset(token)
