"""Who may call what: the role of each RPC method, by the caller's certificate identity.

With mutual TLS on (GATEHOUSE_AUTH_TLS=mtls) an identity is the URI SAN of the client's
certificate (services.foundation.rpc.tls). The HTTP tier calls the account methods; the
operator (`gatehouse` CLI, with the certificate mounted into the auth pods only) calls the
Admin* methods, and deletes the picture of an account it deletes. Ping answers anyone
verified. Every method of the contract has an entry (a test checks it): a new method is
refused to everybody until it is given one here.
"""

from __future__ import annotations

from typing import Any

from services.contract import auth_methods as methods
from services.contract.method import Method

HTTP_IDENTITY = "spiffe://gatehouse/http"
OPERATOR_IDENTITY = "spiffe://gatehouse/operator"

_HTTP = frozenset({HTTP_IDENTITY})
_OPERATOR = frozenset({OPERATOR_IDENTITY})
_BOTH = _HTTP | _OPERATOR

ROLES: dict[str, frozenset[str]] = {
    methods.PING.name: _BOTH,
    methods.REGISTER.name: _HTTP,
    methods.AUTHENTICATE.name: _HTTP,
    methods.GET_PROFILE.name: _HTTP,
    methods.UPDATE_PROFILE.name: _HTTP,
    methods.LOGOUT.name: _HTTP,
    methods.PUT_BLOB.name: _HTTP,
    methods.GET_BLOB.name: _HTTP,
    methods.DELETE_BLOB.name: _BOTH,
    methods.LIST_SESSIONS.name: _HTTP,
    methods.END_SESSION.name: _HTTP,
    methods.END_ALL_SESSIONS.name: _HTTP,
    methods.CHANGE_PASSWORD.name: _HTTP,
    methods.EXPORT_ACCOUNT.name: _HTTP,
    methods.DELETE_ACCOUNT.name: _HTTP,
    methods.ADMIN_SHOW_USER.name: _OPERATOR,
    methods.ADMIN_LOCK_USER.name: _OPERATOR,
    methods.ADMIN_UNLOCK_USER.name: _OPERATOR,
    methods.ADMIN_DELETE_USER.name: _OPERATOR,
    methods.ADMIN_LIST_SESSIONS.name: _OPERATOR,
    methods.ADMIN_END_SESSIONS.name: _OPERATOR,
    methods.ADMIN_PEPPER_USAGE.name: _OPERATOR,
}


def permits(identity: str | None, method: Method[Any, Any]) -> bool:
    """Whether a caller proven to be `identity` may call `method`."""
    return identity is not None and identity in ROLES.get(method.name, frozenset())
