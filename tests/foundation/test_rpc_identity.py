"""The identity a verified RPC peer certificate names, and the trust domain setting."""

from __future__ import annotations

from typing import Any

import pytest

from services.foundation.config import load_settings
from services.foundation.rpc.tls import peer_identity, trust_domain_problem
from services.foundation.rpc.tls_settings import RpcTlsSettings


def _dns(*names: str) -> dict[str, Any]:
    return {"subjectAltName": tuple(("DNS", name) for name in names)}


def test_a_dns_san_names_its_role_in_a_dotted_trust_domain() -> None:
    assert peer_identity(_dns("http.gh-prod.prod.identity.invalid")) == (
        "spiffe://gh-prod.prod/http"
    )
    assert peer_identity(_dns("operator.gh-prod.prod.identity.invalid")) == (
        "spiffe://gh-prod.prod/operator"
    )
    assert peer_identity(_dns("http.gatehouse.identity.invalid")) == "spiffe://gatehouse/http"


def test_dns_names_that_only_look_like_identities_name_none() -> None:
    for name in (
        "http.gh.prod.identity.invalid.evil",
        "http.gh-prod.prod.identity.invalid.example.com",
        "http.identity.invalid",
        ".gh-prod.prod.identity.invalid",
        "http..identity.invalid",
        "http.gh-prod..prod.identity.invalid",
        "http.-gh.prod.identity.invalid",
        "gatehouse-auth",
    ):
        assert peer_identity(_dns(name)) is None, name


def test_the_role_is_the_first_label_and_the_rest_the_trust_domain() -> None:
    # A name cannot smuggle a role into the trust domain's place: this is http, elsewhere.
    assert peer_identity(_dns("http.operator.gh-prod.prod.identity.invalid")) == (
        "spiffe://operator.gh-prod.prod/http"
    )


def test_a_dns_san_is_read_case_insensitively_as_dns_names_are() -> None:
    assert peer_identity(_dns("Operator.GH-Prod.Prod.Identity.Invalid")) == (
        "spiffe://gh-prod.prod/operator"
    )


def test_a_uri_san_is_taken_as_written() -> None:
    peercert = {"subjectAltName": (("URI", "spiffe://GH-PROD.prod/operator"),)}
    assert peer_identity(peercert) == "spiffe://GH-PROD.prod/operator"


@pytest.mark.parametrize("good", ["gatehouse", "gh-prod.prod", "a.b-c.d0", "x" * 63])
def test_trust_domains_of_dns_labels_are_accepted(good: str) -> None:
    assert trust_domain_problem(good) is None


@pytest.mark.parametrize(
    "bad",
    ["", "GH-Prod", "gh_prod", "gh-prod.", ".prod", "a..b", "-a", "a-", "a/b", "x" * 64, "é"],
)
def test_other_trust_domains_are_refused(bad: str) -> None:
    assert trust_domain_problem(bad) is not None


def test_the_tiers_report_a_bad_trust_domain_even_in_plaintext() -> None:
    bad = load_settings(RpcTlsSettings, {"GATEHOUSE_RPC_TRUST_DOMAIN": "gh_prod.Prod"})
    assert any("GATEHOUSE_RPC_TRUST_DOMAIN" in problem for problem in bad.rpc_tls_problems())
    good = load_settings(RpcTlsSettings, {"GATEHOUSE_RPC_TRUST_DOMAIN": "gh-prod.prod"})
    assert good.rpc_trust_domain == "gh-prod.prod"
    assert good.rpc_tls_problems() == []
    assert load_settings(RpcTlsSettings, {}).rpc_trust_domain == "gatehouse"
