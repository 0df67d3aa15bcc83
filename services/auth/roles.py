"""Who may call what: the role of each RPC method, by the caller's certificate identity.

With mutual TLS on (GATEHOUSE_RPC_TLS=mtls) an identity is the URI SAN of the client's
certificate (services.foundation.rpc.tls), `spiffe://<trust domain>/<role>`: only the trust
domain of this deployment (GATEHOUSE_RPC_TRUST_DOMAIN) has roles, so a certificate another
deployment got from the same issuer has none. The HTTP tier calls the account methods; the
operator (`gatehouse` CLI, with the certificate mounted into the auth pods only) calls the
Admin* methods, and deletes the picture of an account it deletes. Ping answers anyone
verified. Every method of the contract has an entry (a test checks it): a new method is
refused to everybody until it is given one here.

Without TLS (GATEHOUSE_RPC_TLS=plaintext, behind a mesh) a caller over TCP holds the HTTP role:
a mesh can admit or refuse a connection, but cannot tell the methods called over this protocol
apart, and the HTTP pods must be admitted. The operator calls on a Unix socket instead
(GATEHOUSE_OPERATOR_SOCKET, its user's only), whose callers hold the operator's identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.contract import auth_methods as methods
from services.contract.method import Method
from services.foundation.rpc.tls import DEFAULT_TRUST_DOMAIN, spiffe_id

HTTP = "http"
OPERATOR = "operator"

_HTTP = frozenset({HTTP})
_OPERATOR = frozenset({OPERATOR})
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


@dataclass(frozen=True)
class Roles:
    """The role table applied to the identities of one trust domain."""

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    _role_of: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        role_of = {self.identity(role): role for role in (HTTP, OPERATOR)}
        object.__setattr__(self, "_role_of", role_of)

    def identity(self, role: str) -> str:
        """The identity a certificate carries to hold `role` in this trust domain."""
        return spiffe_id(self.trust_domain, role)

    def role_of(self, identity: str | None) -> str | None:
        """The role of a caller proven to be `identity`; None for another trust domain."""
        return self._role_of.get(identity) if identity is not None else None

    def permits(self, identity: str | None, method: Method[Any, Any]) -> bool:
        """Whether a caller proven to be `identity` may call `method`."""
        role = self.role_of(identity)
        return role is not None and role in ROLES.get(method.name, frozenset())

    def permits_without_tls(self, identity: str | None, method: Method[Any, Any]) -> bool:
        """`permits` for a server without TLS: a caller over TCP (no identity) holds the HTTP
        role, whoever it is, as a mesh in front can admit or refuse a connection but not judge
        the methods called over it; a caller on the operator's Unix socket, the operator's."""
        return self.permits(identity if identity is not None else self.identity(HTTP), method)
