"""Who the HTTP tier takes the client to be, as the chart configures it: the login throttle
counts per client address, so no client may choose its own (X-Forwarded-For) unless only the
proxies the operator names can reach the HTTP port, and a proxy in front is never left
untrusted (every client would then share its address and its limits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.http.client_ip import ClientAddresses, parse_trusted_proxies
from tests.delivery.chart import (
    CHART,
    RELEASE,
    VALUE_SETS,
    Manifest,
    named,
    render,
    run_helm,
    value_set_id,
)

PROXY = ("http.trustedProxies={10.42.0.0/16}",)
FROM_INGRESS = (
    "networkPolicy.httpIngressFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name"
    "=ingress-nginx",
)
ROUTED = (
    "http.ingress.enabled=true",
    "http.httpRoute.enabled=true",
    "http.httpRoute.parentRefs[0].name=public",
)


def _trusted(manifests: tuple[Manifest, ...]) -> str:
    config: str = named(manifests, "ConfigMap", f"{RELEASE}-http")["data"][
        "GATEHOUSE_TRUSTED_PROXIES"
    ]
    return config


def _client(trusted: str, peer: str, forwarded_for: str) -> str:
    scope: dict[str, Any] = {
        "type": "http",
        "client": (peer, 40000),
        "headers": [(b"x-forwarded-for", forwarded_for.encode())],
    }
    return ClientAddresses(parse_trusted_proxies(trusted)).client_ip(scope)


def _http_port_sources(manifests: tuple[Manifest, ...]) -> list[Any] | None:
    """The `from` of the HTTP NetworkPolicy's rule for the API port; None: from anywhere."""
    policy = named(manifests, "NetworkPolicy", f"{RELEASE}-http")
    (rule,) = [
        r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": 8000} in r["ports"]
    ]
    sources: list[Any] | None = rule.get("from")
    return sources


def _refusal(*assignments: str) -> str:
    args = ["template", RELEASE, str(CHART)]
    for assignment in assignments:
        args += ["--set", assignment]
    result = run_helm(*args)
    assert result.returncode != 0, f"rendered with {assignments}"
    return result.stderr


def test_by_default_a_pod_cannot_choose_its_client_address() -> None:
    """Any pod may reach the HTTP port by default: it is counted by its own address, whatever
    X-Forwarded-For it sends."""
    manifests = render(None)
    assert _http_port_sources(manifests) is None  # open to every pod
    trusted = _trusted(manifests)
    assert trusted == ""
    for pod, node in (("10.1.2.3", "172.16.0.9"), ("192.168.7.7", "fd00::7")):
        assert _client(trusted, pod, "203.0.113.9") == pod
        assert _client(trusted, node, "203.0.113.9, 198.51.100.1") == node


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=value_set_id)
def test_value_sets_trust_proxies_only_when_only_chosen_sources_reach_the_http_port(
    values_file: Path,
) -> None:
    manifests = render(values_file)
    if not _trusted(manifests):
        return
    assert named(manifests, "NetworkPolicy", f"{RELEASE}-http")
    assert _http_port_sources(manifests), "trusted proxies, yet every pod may reach the HTTP port"


def test_trusting_proxies_needs_the_http_port_closed_to_everyone_else() -> None:
    message = _refusal(*PROXY)
    assert "networkPolicy.httpIngressFrom" in message
    assert "X-Forwarded-For" in message
    manifests = render(None, *PROXY, *FROM_INGRESS)
    assert _trusted(manifests) == "10.42.0.0/16"
    sources = _http_port_sources(manifests)
    assert sources is not None
    assert sources[0] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    }
    # Behind the ingress, the client is the address the ingress saw.
    assert _client(_trusted(manifests), "10.42.3.4", "6.6.6.6, 203.0.113.9") == "203.0.113.9"


@pytest.mark.parametrize("routed", ["http.ingress.enabled=true", "http.httpRoute.enabled=true"])
def test_an_ingress_or_route_needs_its_proxies_trusted(routed: str) -> None:
    message = _refusal(routed, "http.httpRoute.parentRefs[0].name=public")
    assert "http.trustedProxies" in message
    assert "networkPolicy.httpIngressFrom" in message
    render(None, routed, "http.httpRoute.parentRefs[0].name=public", *PROXY, *FROM_INGRESS)


def test_without_network_policies_an_ingress_still_needs_its_proxies_trusted() -> None:
    message = _refusal("networkPolicy.enabled=false", "http.ingress.enabled=true")
    assert "http.trustedProxies" in message
    render(None, "networkPolicy.enabled=false", "http.ingress.enabled=true", *PROXY)


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
def test_an_exposed_service_keeps_client_addresses(service_type: str) -> None:
    """kube-proxy replaces a client's address by a node's (private, so possibly trusted) under
    externalTrafficPolicy Cluster: the chart asks for Local, and refuses Cluster with trusted
    proxies."""
    kind = f"http.service.type={service_type}"
    service = named(render(None, kind), "Service", f"{RELEASE}-http")
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    message = _refusal(kind, "http.service.externalTrafficPolicy=Cluster", *PROXY, *FROM_INGRESS)
    assert "http.service.externalTrafficPolicy" in message
    assert "Local" in message
    render(None, kind, *PROXY, *FROM_INGRESS)
    # Cluster without trusted proxies: nobody forges, the operator chose node addresses.
    render(None, kind, "http.service.externalTrafficPolicy=Cluster")


def test_a_cluster_ip_service_has_no_external_traffic_policy() -> None:
    service = named(render(None), "Service", f"{RELEASE}-http")
    assert "externalTrafficPolicy" not in service["spec"]


def test_routing_with_trusted_proxies_renders_both() -> None:
    manifests = render(None, *ROUTED, *PROXY, *FROM_INGRESS)
    assert _trusted(manifests) == "10.42.0.0/16"


def test_the_trusted_proxies_are_not_set_around_the_check() -> None:
    message = _refusal("http.extraEnv.GATEHOUSE_TRUSTED_PROXIES=10.0.0.0/8")
    assert "set http.trustedProxies instead" in message


def test_without_network_policies_the_notes_warn_about_trusted_proxies() -> None:
    def notes(*assignments: str) -> str:
        args = ["install", RELEASE, str(CHART), "--dry-run=client", "--set"]
        result = run_helm(*args, ",".join(("networkPolicy.enabled=false", *assignments)))
        assert result.returncode == 0, result.stderr
        return result.stdout.split("\nNOTES:\n", 1)[1]

    assert "X-Forwarded-For" not in notes()
    assert "X-Forwarded-For" in notes(*PROXY)
