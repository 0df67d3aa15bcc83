"""The role table: every method of the contract has callers, and admin calls are the
operator's alone."""

from __future__ import annotations

from services.auth.roles import HTTP, OPERATOR, ROLES, Roles
from services.contract import auth_methods as methods

ROLES_HERE = Roles("gh-prod.prod")
permits = ROLES_HERE.permits
HTTP_IDENTITY = ROLES_HERE.identity(HTTP)
OPERATOR_IDENTITY = ROLES_HERE.identity(OPERATOR)


def test_every_method_has_a_role() -> None:
    missing = [method.name for method in methods.METHODS if not ROLES.get(method.name)]
    assert missing == []
    assert set(ROLES) == {method.name for method in methods.METHODS}


def test_only_the_operator_may_call_admin_methods() -> None:
    admin = [method for method in methods.METHODS if method.name.startswith("admin_")]
    assert admin, "the contract has admin methods"
    for method in admin:
        assert permits(OPERATOR_IDENTITY, method), method.name
        assert not permits(HTTP_IDENTITY, method), method.name


def test_the_http_identity_may_call_the_account_methods() -> None:
    for method in (methods.REGISTER, methods.AUTHENTICATE, methods.GET_PROFILE, methods.GET_BLOB):
        assert permits(HTTP_IDENTITY, method), method.name
        assert not permits(OPERATOR_IDENTITY, method), method.name


def test_no_identity_may_call_nothing() -> None:
    assert not any(permits(None, method) for method in methods.METHODS)
    assert not any(permits("spiffe://gatehouse/other", method) for method in methods.METHODS)


def test_the_identities_of_another_trust_domain_have_no_role() -> None:
    assert OPERATOR_IDENTITY == "spiffe://gh-prod.prod/operator"
    for stranger in (
        "spiffe://gh-staging.staging/operator",
        "spiffe://gatehouse/operator",
        "spiffe://prod/operator",
        "spiffe://GH-PROD.PROD/operator",
        "spiffe://gh-prod.prod/operator/",
    ):
        assert ROLES_HERE.role_of(stranger) is None, stranger
        assert not any(permits(stranger, method) for method in methods.METHODS), stranger
    assert ROLES_HERE.role_of(OPERATOR_IDENTITY) == OPERATOR
