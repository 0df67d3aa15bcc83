"""The ops ports (/metrics, /workers with the workers' pids, /readyz) stay inside the cluster:
no Service that can be published (LoadBalancer, NodePort) carries them, and Prometheus scrapes
them through ClusterIP Services of their own under the job names the alerts and the dashboard
select (`<release>-http`, `<release>-auth`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.delivery.chart import (
    RELEASE,
    VALUE_SETS,
    Manifest,
    labels_match,
    named,
    of_kind,
    pod_templates,
    prometheus_rule_groups,
    render,
    value_set_id,
)

MONITORED = ("serviceMonitor.enabled=true",)
EXPOSED = ["ClusterIP", "LoadBalancer", "NodePort"]
value_sets = pytest.mark.parametrize("values_file", VALUE_SETS, ids=value_set_id)


def _ops_ports(manifests: tuple[Manifest, ...]) -> set[Any]:
    """Names and numbers of the Gatehouse containers' ops ports."""
    ports: set[Any] = set()
    for _, template in pod_templates(manifests):
        for container in template["spec"]["containers"]:
            if container["name"] in ("http", "auth"):
                for port in container.get("ports", []):
                    if port["name"] == "ops":
                        ports |= {port["name"], port["containerPort"]}
    return ports


def _services_carrying_ops(manifests: tuple[Manifest, ...]) -> dict[str, str]:
    """Service name -> type of every Service with a port leading to an ops port."""
    ops = _ops_ports(manifests)
    return {
        service["metadata"]["name"]: service["spec"].get("type", "ClusterIP")
        for service in of_kind(manifests, "Service")
        if any(port.get("targetPort", port["port"]) in ops for port in service["spec"]["ports"])
    }


@pytest.mark.parametrize("service_type", EXPOSED)
def test_the_public_http_service_carries_the_api_port_only(service_type: str) -> None:
    manifests = render(None, f"http.service.type={service_type}", *MONITORED)
    public = named(manifests, "Service", f"{RELEASE}-http")
    assert [(p["name"], p["targetPort"]) for p in public["spec"]["ports"]] == [("http", "http")]
    carrying = _services_carrying_ops(manifests)
    assert carrying == {f"{RELEASE}-http-metrics": "ClusterIP", f"{RELEASE}-auth": "ClusterIP"}
    assert named(manifests, "Service", f"{RELEASE}-auth")["spec"]["clusterIP"] == "None"


@value_sets
def test_value_sets_publish_no_ops_port(values_file: Path) -> None:
    manifests = render(values_file)
    assert set(_services_carrying_ops(manifests).values()) == {"ClusterIP"}
    routed = [
        backend["name"]
        for route in of_kind(manifests, "HTTPRoute")
        for rule in route["spec"]["rules"]
        for backend in rule["backendRefs"]
    ] + [
        path["backend"]["service"]["name"]
        for ingress in of_kind(manifests, "Ingress")
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert set(routed) <= {f"{RELEASE}-http"}


def _job(manifests: tuple[Manifest, ...], monitor: Manifest) -> str:
    """The `job` label Prometheus gives the monitor's targets: the Service's name (or the
    jobLabel's value), then whatever the endpoint's relabelings write into `job`."""
    (service,) = [
        s
        for s in of_kind(manifests, "Service")
        if labels_match(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    job: str = service["metadata"]["labels"].get(
        monitor["spec"].get("jobLabel", ""), service["metadata"]["name"]
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    for relabeling in endpoint.get("relabelings", []):
        if relabeling.get("targetLabel") == "job":
            assert relabeling.get("action", "replace").lower() == "replace"
            assert not relabeling.get("sourceLabels"), relabeling
            job = relabeling["replacement"]
    return job


@pytest.mark.parametrize("service_type", EXPOSED)
def test_scrapes_keep_the_job_names_the_alerts_and_dashboard_select(service_type: str) -> None:
    manifests = render(None, f"http.service.type={service_type}", *MONITORED)
    jobs = {
        monitor["metadata"]["name"]: _job(manifests, monitor)
        for monitor in of_kind(manifests, "ServiceMonitor")
    }
    assert jobs == {
        f"{RELEASE}-{component}": f"{RELEASE}-{component}" for component in ("http", "auth", "etcd")
    }
    expressions = " ".join(
        rule["expr"] for group in prometheus_rule_groups() for rule in group["rules"]
    )
    for job in jobs.values():
        assert f'job="{job}"' in expressions
