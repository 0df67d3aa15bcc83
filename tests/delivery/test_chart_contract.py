"""What the chart promises the services, checked on the manifests of every CI value set:
settings the loaders read, ports the processes listen on, probe paths that exist, scrape
targets that resolve, network paths that are open (and closed), and the pod hardening.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.auth.settings import (
    AuthSettings,
    BootstrapSettings,
    DatabaseSettings,
    EtcdBootstrapSettings,
)
from services.auth.store.database import parse_dsn
from services.cli.settings import CliSettings
from services.foundation.config import REQUIRED, SettingInfo, describe
from services.foundation.ops import ops_app
from services.http.settings import HttpSettings, parse_bind_address
from tests.delivery.chart import (
    CHART,
    RELEASE,
    VALUE_SETS,
    Manifest,
    environment,
    labels_match,
    manifests_of,
    named,
    of_kind,
    pod_templates,
    render,
    render_upgrade,
    run_helm,
    secret_files,
    value_set_id,
)

# The `gatehouse` command runs in the auth container too (kubectl exec), with its environment.
SETTINGS_OF_CONTAINER: dict[str, tuple[type[Any], ...]] = {
    "http": (HttpSettings,),
    "auth": (AuthSettings, CliSettings),
    "migrate": (DatabaseSettings,),
    "bootstrap": (BootstrapSettings,),
    "etcd-bootstrap": (EtcdBootstrapSettings,),
}
value_sets = pytest.mark.parametrize("values_file", VALUE_SETS, ids=value_set_id)


def _settings(container_name: str) -> dict[str, SettingInfo]:
    return {
        info.env: info
        for settings in SETTINGS_OF_CONTAINER[container_name]
        for info in describe(settings)
    }


def _gatehouse_containers(manifests: tuple[Manifest, ...]) -> list[tuple[Manifest, dict[str, Any]]]:
    return [
        (workload, container)
        for workload, template in pod_templates(manifests)
        for container in template["spec"]["containers"] + template["spec"].get("initContainers", [])
        if container["name"] in SETTINGS_OF_CONTAINER
    ]


def _setting(env: dict[str, Any], info: SettingInfo) -> Any:
    return env.get(info.env, info.default)


@value_sets
def test_every_variable_the_chart_sets_is_read_by_the_service(values_file: Path) -> None:
    manifests = render(values_file)
    containers = _gatehouse_containers(manifests)
    assert {container["name"] for _, container in containers} >= {"http", "auth"}
    for workload, container in containers:
        settings = _settings(container["name"])
        read = set(settings) | {info.file_env for info in settings.values() if info.file_env}
        unknown = set(environment(manifests, container)) - read
        assert not unknown, (
            f"{workload['metadata']['name']} sets variables no settings loader reads: {unknown}"
        )


@value_sets
def test_every_required_setting_is_set(values_file: Path) -> None:
    manifests = render(values_file)
    for workload, container in _gatehouse_containers(manifests):
        env = environment(manifests, container)
        missing = [
            name
            for name, info in _settings(container["name"]).items()
            if info.default is REQUIRED and name not in env and info.file_env not in env
        ]
        assert not missing, f"{workload['metadata']['name']} lacks required settings {missing}"


@value_sets
def test_container_ports_are_the_ports_the_processes_listen_on(values_file: Path) -> None:
    manifests = render(values_file)
    listening = {
        "http": {"http": "GATEHOUSE_HTTP_PORT", "ops": "GATEHOUSE_HTTP_OPS_PORT"},
        "auth": {"rpc": "GATEHOUSE_AUTH_PORT", "ops": "GATEHOUSE_OPS_PORT"},
    }
    bind = {"http": "GATEHOUSE_HTTP_HOST", "auth": "GATEHOUSE_AUTH_HOST"}
    for component, ports in listening.items():
        deployment = named(manifests, "Deployment", f"{RELEASE}-{component}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = environment(manifests, container)
        settings = _settings(component)
        declared = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert set(declared) == set(ports)
        for port_name, variable in ports.items():
            assert int(_setting(env, settings[variable])) == declared[port_name], (
                component,
                port_name,
            )
        assert _setting(env, settings[bind[component]]) == "0.0.0.0", (
            f"{component} must bind every address in a pod"
        )


def _served_paths() -> dict[str, set[str]]:
    """The paths each process really serves on the port its probes use."""
    from services.http.workers.ops_port import (
        ops_port_app,  # the HTTP tier: imported only where needed
    )

    http_ops = ops_port_app(Path("/nonexistent-heartbeats"))
    return {
        "http": {route.path for route in http_ops.routes},  # type: ignore[attr-defined]
        "auth": {route.path for route in ops_app(lambda: None).routes},  # type: ignore[attr-defined]
    }


@value_sets
def test_probes_use_real_endpoints_on_the_right_ports(values_file: Path) -> None:
    manifests = render(values_file)
    served = _served_paths()
    probe_port = {"http": "ops", "auth": "ops"}
    for component in ("http", "auth"):
        (container,) = named(manifests, "Deployment", f"{RELEASE}-{component}")["spec"]["template"][
            "spec"
        ]["containers"]
        expected = {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        for probe, path in expected.items():
            get = container[probe]["httpGet"]
            assert get["path"] == path and path in served[component], (component, probe)
            assert get["port"] == probe_port[component], (component, probe)
        assert "/metrics" in served[component]


@value_sets
def test_service_monitors_scrape_real_service_ports(values_file: Path) -> None:
    manifests = render(values_file)
    monitors = of_kind(manifests, "ServiceMonitor")
    served = _served_paths()
    for monitor in monitors:
        services = [
            s
            for s in of_kind(manifests, "Service")
            if labels_match(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, f"{monitor['metadata']['name']} selects {len(services)} Services"
        (service,) = services
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        kind = "StatefulSet" if component == "etcd" else "Deployment"
        (container,) = named(manifests, kind, f"{RELEASE}-{component}")["spec"]["template"]["spec"][
            "containers"
        ]
        for endpoint in monitor["spec"]["endpoints"]:
            (port,) = [p for p in service["spec"]["ports"] if p.get("name") == endpoint["port"]]
            (target,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
            if component == "etcd":
                # etcd's own listener for /metrics and /health, in plaintext.
                listen = environment(manifests, container)["ETCD_LISTEN_METRICS_URLS"]
                assert listen == f"http://0.0.0.0:{target['containerPort']}"
                assert endpoint["path"] == "/metrics"
            else:
                assert endpoint["path"] in served[component]


def test_service_monitors_carry_the_additional_labels() -> None:
    manifests = render(
        None,
        "serviceMonitor.enabled=true",
        "serviceMonitor.additionalLabels.release=kps",
        "prometheusRule.enabled=true",
        "prometheusRule.additionalLabels.release=kps",
    )
    for manifest in of_kind(manifests, "ServiceMonitor") + of_kind(manifests, "PrometheusRule"):
        assert manifest["metadata"]["labels"]["release"] == "kps"
    assert len(of_kind(manifests, "ServiceMonitor")) == 3  # http, auth and the chart's etcd


@value_sets
def test_services_select_pods_and_name_container_ports(values_file: Path) -> None:
    manifests = render(values_file)
    templates = [template for _, template in pod_templates(manifests)]
    for service in of_kind(manifests, "Service"):
        selected = [
            t
            for t in templates
            if labels_match({"matchLabels": service["spec"]["selector"]}, t["metadata"]["labels"])
        ]
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        port_names = {
            p["name"] for t in selected for c in t["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service["metadata"]["name"], port)


# Requests of each kind the HTTP tier answers publicly: the API, the partner API, its OpenAPI
# document, the token keys, the pictures the API's avatar_url names, and the web pages with their
# static files (services/http/app.py lists every route).
PUBLIC_REQUESTS = (
    "/api/v1/me",
    "/api/v1/sessions/current",
    "/open_api/v1/authenticate",
    "/openapi.json",
    "/.well-known/jwks.json",
    "/avatars/3f/3f2a9c.webp",
    "/",
    "/signup",
    "/login",
    "/profile",
    "/profile/avatar",
    "/logout",
    "/static/style.css",
)
ROUTED = (
    "http.ingress.enabled=true",
    "http.httpRoute.enabled=true",
    "http.httpRoute.parentRefs[0].name=public",
    # A proxy in front needs its addresses trusted and the port closed to everyone else.
    "http.trustedProxies={10.42.0.0/16}",
    "networkPolicy.httpIngressFrom[0].namespaceSelector.matchLabels.team=edge",
)


def _prefix_matches(prefix: str, path: str) -> bool:
    """Ingress Prefix and HTTPRoute PathPrefix: a match of whole path elements."""
    elements = [element for element in prefix.split("/") if element]
    return path.split("/")[1 : len(elements) + 1] == elements


def _path_matches(kind: str, value: str, path: str) -> bool:
    if kind == "Exact":
        return value == path
    assert kind in ("Prefix", "PathPrefix"), kind
    return _prefix_matches(value, path)


def _http_target_port(manifests: tuple[Manifest, ...], service_name: str, port: Any) -> Any:
    """The container port a Service port (by name or number) leads to."""
    service = named(manifests, "Service", service_name)
    (found,) = [p for p in service["spec"]["ports"] if port in (p["name"], p["port"])]
    return found["targetPort"]


def _ingress_backends(manifests: tuple[Manifest, ...], path: str) -> list[tuple[str, Any]]:
    return [
        (backend["name"], _http_target_port(manifests, backend["name"], backend["port"]["name"]))
        for ingress in of_kind(manifests, "Ingress")
        for rule in ingress["spec"]["rules"]
        for entry in rule["http"]["paths"]
        if _path_matches(entry["pathType"], entry["path"], path)
        for backend in [entry["backend"]["service"]]
    ]


def _route_backends(manifests: tuple[Manifest, ...], path: str) -> list[tuple[str, Any]]:
    return [
        (backend["name"], _http_target_port(manifests, backend["name"], backend["port"]))
        for route in of_kind(manifests, "HTTPRoute")
        for rule in route["spec"]["rules"]
        if any(
            _path_matches(match["path"]["type"], match["path"]["value"], path)
            for match in rule["matches"]
        )
        for backend in rule["backendRefs"]
    ]


def _assert_public_requests_reach_the_http_port(manifests: tuple[Manifest, ...]) -> None:
    wanted = (f"{RELEASE}-http", "http")  # the API port; never the ops port
    wrong = {
        (kind, path): found
        for kind, backends in (("Ingress", _ingress_backends), ("HTTPRoute", _route_backends))
        if of_kind(manifests, kind)
        for path in PUBLIC_REQUESTS
        if set(found := backends(manifests, path)) != {wanted}
    }
    assert not wrong, "not sent to the HTTP Service's http port only:\n" + "\n".join(
        f"{kind} {path}: {found or 'no backend'}" for (kind, path), found in wrong.items()
    )


def test_default_ingress_and_http_route_reach_every_public_page() -> None:
    manifests = render(None, *ROUTED)
    assert of_kind(manifests, "Ingress") and of_kind(manifests, "HTTPRoute")
    _assert_public_requests_reach_the_http_port(manifests)


def test_value_sets_ingress_and_http_route_reach_every_public_page() -> None:
    routed = []
    for values_file in VALUE_SETS:
        manifests = render(values_file)
        if of_kind(manifests, "Ingress") or of_kind(manifests, "HTTPRoute"):
            routed.append(values_file.name)
            _assert_public_requests_reach_the_http_port(manifests)
    assert routed, "no value set renders an Ingress or an HTTPRoute: nothing was checked"


# NetworkPolicy evaluation, for pods of the release talking to each other.


def _policies_for(
    manifests: tuple[Manifest, ...], labels: dict[str, str], direction: str
) -> list[Manifest]:
    policy_type = {"ingress": "Ingress", "egress": "Egress"}[direction]
    return [
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if policy_type in p["spec"]["policyTypes"]
        and labels_match(p["spec"]["podSelector"], labels)
    ]


def _rule_allows(
    rule: dict[str, Any], peer_key: str, peer_labels: dict[str, str], port: int
) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port for p in ports):
        return False
    peers = rule.get(peer_key)
    if not peers:
        return True
    return any(
        "podSelector" in peer
        and "namespaceSelector" not in peer
        and labels_match(peer["podSelector"], peer_labels)
        for peer in peers
    )


def _allowed(
    manifests: tuple[Manifest, ...], source: dict[str, str], target: dict[str, str], port: int
) -> bool:
    egress = _policies_for(manifests, source, "egress")
    ingress = _policies_for(manifests, target, "ingress")
    out = not egress or any(
        _rule_allows(r, "to", target, port) for p in egress for r in p["spec"].get("egress", [])
    )
    into = not ingress or any(
        _rule_allows(r, "from", source, port) for p in ingress for r in p["spec"].get("ingress", [])
    )
    return out and into


def _pod_labels(manifests: tuple[Manifest, ...]) -> dict[str, dict[str, str]]:
    return {
        template["metadata"]["labels"]["app.kubernetes.io/component"]: template["metadata"][
            "labels"
        ]
        for _, template in pod_templates(manifests)
    }


@value_sets
def test_network_policy_selectors_match_pods(values_file: Path) -> None:
    manifests = render(values_file)
    # Some pods run at upgrades only (the database hook Jobs with the in-chart MySQL).
    labels = list((_pod_labels(render_upgrade(values_file)) | _pod_labels(manifests)).values())
    for policy in of_kind(manifests, "NetworkPolicy"):
        name = policy["metadata"]["name"]
        assert any(labels_match(policy["spec"]["podSelector"], pod) for pod in labels), (
            f"{name} selects no pod"
        )
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(labels_match(peer["podSelector"], pod) for pod in labels), (
                        f"{name}: {peer} selects no pod"
                    )


def test_network_policies_open_what_the_system_needs_and_nothing_else() -> None:
    manifests = render(None, "auth.migrationJob.enabled=true")
    pods = _pod_labels(manifests)
    auth_port, ops_port, http_port, http_ops_port, mysql, redis, etcd_client, etcd_peer = (
        7000,
        9100,
        8000,
        9101,
        3306,
        6379,
        2379,
        2380,
    )
    needed = [
        ("http", "auth", auth_port),
        ("auth", "mysql-primary", mysql),
        ("auth", "mysql-replica", mysql),
        ("migrate", "mysql-primary", mysql),
        ("mysql-replica", "mysql-primary", mysql),
        ("auth", "redis", redis),
        ("http", "etcd", etcd_client),
        ("auth", "etcd", etcd_client),
        ("etcd", "etcd", etcd_peer),
        # The runbooks' etcdctl in one member asks them all.
        ("etcd", "etcd", etcd_client),
        ("etcd-bootstrap", "etcd", etcd_client),
        ("test", "http", http_port),
        # `helm test` checks the RPC port refuses a plaintext client (with mTLS, the default).
        ("test", "auth", auth_port),
    ]
    forbidden = [
        ("http", "mysql-primary", mysql),
        ("http", "redis", redis),
        ("http", "auth", ops_port),
        ("test", "http", http_ops_port),
        ("redis", "mysql-primary", mysql),
        ("http", "etcd", etcd_peer),
        ("mysql-primary", "mysql-replica", mysql),
        ("etcd-bootstrap", "etcd", etcd_peer),
        ("etcd-bootstrap", "mysql-primary", mysql),
        ("etcd-bootstrap", "auth", auth_port),
    ]
    for source, target, port in needed:
        assert _allowed(manifests, pods[source], pods[target], port), (
            f"{source} -> {target}:{port} is blocked"
        )
    for source, target, port in forbidden:
        assert not _allowed(manifests, pods[source], pods[target], port), (
            f"{source} -> {target}:{port} is open"
        )
    plaintext = render(None, "auth.migrationJob.enabled=true", "tls.rpc.mode=plaintext")
    assert not _allowed(plaintext, pods["test"], pods["auth"], auth_port)


@pytest.mark.parametrize(("component", "metrics_port"), [("auth", 9100), ("etcd", 2381)])
def test_prometheus_may_scrape_the_metrics_port_only(component: str, metrics_port: int) -> None:
    manifests = render(None)
    (policy,) = [
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if p["metadata"]["name"] == f"{RELEASE}-{component}"
    ]
    scrape_rules = [
        r
        for r in policy["spec"]["ingress"]
        if any("namespaceSelector" in peer for peer in r["from"])
    ]
    assert [r["ports"] for r in scrape_rules] == [[{"protocol": "TCP", "port": metrics_port}]]
    (peer,) = scrape_rules[0]["from"]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
    }


@value_sets
def test_termination_grace_outlasts_the_drain(values_file: Path) -> None:
    manifests = render(values_file)
    auth = named(manifests, "Deployment", f"{RELEASE}-auth")["spec"]["template"]["spec"]
    env = environment(manifests, auth["containers"][0])
    settings = _settings("auth")
    drain = float(_setting(env, settings["GATEHOUSE_DRAIN_DELAY"])) + float(
        _setting(env, settings["GATEHOUSE_DRAIN_GRACE"])
    )
    assert auth["terminationGracePeriodSeconds"] > drain

    http = named(manifests, "Deployment", f"{RELEASE}-http")["spec"]["template"]["spec"]
    (container,) = http["containers"]
    env = environment(manifests, container)
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    call_timeout = float(_setting(env, _settings("http")["GATEHOUSE_CALL_TIMEOUT"]))
    assert http["terminationGracePeriodSeconds"] > pre_stop + call_timeout + 5


# Value sets under which the chart sets different variables itself (RPC TLS or not, the one
# signing key or the rotating ones).
CHART_SET_VARIANTS = ((), ("tls.rpc.mode=plaintext", "auth.jwtKeys.existingSecret=keys"))
# ConfigMap entries the chart checks against other values (terminationGracePeriodSeconds).
CHECKED_CONFIG = {"http": "GATEHOUSE_CALL_TIMEOUT", "auth": "GATEHOUSE_DRAIN_GRACE"}


def _refused(component: str, names: list[str], assignments: tuple[str, ...]) -> None:
    """One render with an extraEnv entry for each of `names`: refused, naming every one."""
    args = ["template", RELEASE, str(CHART)]
    for assignment in [*(f"{component}.extraEnv.{name}=1" for name in names), *assignments]:
        args += ["--set", assignment]
    result = run_helm(*args)
    assert result.returncode != 0, f"{component}.extraEnv {names} rendered with {assignments}"
    for name in names:
        assert f"{component}.extraEnv.{name}" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("component", "free_setting"),
    [("http", "GATEHOUSE_HTTP_SERVER=granian"), ("auth", "GATEHOUSE_LEASE_TTL=15")],
)
def test_extra_env_cannot_replace_what_the_chart_sets(component: str, free_setting: str) -> None:
    """An extraEnv entry of a variable the chart sets would follow the chart's own in the
    ConfigMap and replace it (GATEHOUSE_DRAIN_GRACE past terminationGracePeriodSeconds, around
    the chart's check), or lose to the container's `env` (a DSN left in plain text in the
    ConfigMap, unused): refused, for every variable of the container's `env`."""
    for assignments in CHART_SET_VARIANTS:
        manifests = render(None, *assignments)
        template = named(manifests, "Deployment", f"{RELEASE}-{component}")["spec"]["template"]
        (container,) = template["spec"]["containers"]
        config = named(manifests, "ConfigMap", f"{RELEASE}-{component}")["data"]
        names = {variable["name"] for variable in container["env"]}
        assert CHECKED_CONFIG[component] in config
        _refused(component, [*sorted(names), CHECKED_CONFIG[component]], assignments)
    _refused(component, ["GATEHOUSE_RPC_TLS"], ())
    # A setting the chart leaves to the service's default stays the operator's to set.
    manifests = render(None, f"{component}.extraEnv.{free_setting}")
    template = named(manifests, "Deployment", f"{RELEASE}-{component}")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    name, value = free_setting.split("=")
    assert environment(manifests, container)[name] == value


@pytest.mark.parametrize("component", ["http", "auth"])
def test_extra_env_cannot_carry_a_secret(component: str) -> None:
    """Every secret setting of the service: one the chart sets from a Secret is refused above;
    the rest (the migration DSN, an etcd password) would sit in plain text in the ConfigMap."""
    secrets = sorted(info.env for info in _settings(component).values() if info.secret)
    assert "GATEHOUSE_ETCD_PASSWORD" in secrets
    _refused(component, secrets, ())


@pytest.mark.parametrize(
    ("component", "variable"), [("http", "GATEHOUSE_HTTP_HOST"), ("auth", "GATEHOUSE_AUTH_HOST")]
)
def test_the_address_a_tier_binds_is_a_value_of_the_chart(component: str, variable: str) -> None:
    """On a cluster that gives pods IPv6 addresses only, the servers must bind "::". extraEnv
    may not set the variable (the chart sets it: refused), so the chart's value does."""
    _refused(component, [variable], ())
    for address in ("0.0.0.0", "::"):
        manifests = render(None, f"{component}.bindAddress={address}")
        template = named(manifests, "Deployment", f"{RELEASE}-{component}")["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert environment(manifests, container)[variable] == address


def test_a_host_name_as_the_http_bind_address_is_refused_at_install() -> None:
    """The HTTP server binds only IP literals; a host name would crash-loop its pods."""
    refused = _render_release(RELEASE, "http.bindAddress=localhost")
    assert refused.returncode != 0 and "/http/bindAddress" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "::", "10.1.2.3", "::ffff:127.0.0.1", "fd00::1", "localhost", "cafe",
     "dead.beef", "[::]", "fe80::1%eth0", "10.0.0.0/8", "10.0.0.1:80"],
)  # fmt: skip
def test_the_bind_address_pattern_refuses_what_the_http_server_refuses(address: str) -> None:
    """Helm versions that skip `format` still check the pattern: it must not let through a
    value the server then refuses (most IP literals it cannot tell apart are refused by
    Helm's format check where that runs)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = schema["properties"]["http"]["properties"]["bindAddress"]["pattern"]
    try:
        parse_bind_address(address)
        accepted = True
    except ValueError:
        accepted = False
    assert bool(re.search(pattern, address)) == accepted


# Helm's longest release name (53 characters).
LONGEST_RELEASE = "gatehouse-production-eu-west-1-blue-green-canary-abcd"
# The StatefulSet controller labels each pod controller-revision-hash: <name>-<10-character hash>.
STATEFULSET_NAME_MAX = 63 - 1 - 10
EXTERNAL_MYSQL = (
    "mysql.enabled=false",
    "external.mysql.writerHost=db.example",
    "external.mysql.adminPassword=admin",
    "external.mysql.migrationPassword=ddl",
)


def _render_release(release: str, *assignments: str) -> subprocess.CompletedProcess[str]:
    args = ["template", release, str(CHART), "--namespace", "gatehouse"]
    for assignment in assignments:
        args += ["--set", assignment]
    return run_helm(*args)


def test_a_long_release_name_renders_names_kubernetes_accepts_or_is_refused() -> None:
    """A StatefulSet over 52 characters never gets a pod (its pods' controller-revision-hash
    label would pass 63): with the in-chart MySQL, a release name that makes one is refused
    with what to set; a fullnameOverride of 38 characters, or an external MySQL, renders names
    and labels within Kubernetes' limits."""
    assert len(LONGEST_RELEASE) == 53
    refused = _render_release(LONGEST_RELEASE)
    assert refused.returncode != 0 and "fullnameOverride" in refused.stderr, refused.stderr
    for assignments in (("fullnameOverride=" + "g" * 38,), EXTERNAL_MYSQL):
        result = _render_release(LONGEST_RELEASE, *assignments)
        assert result.returncode == 0, result.stderr
        manifests = manifests_of(result.stdout)
        assert of_kind(manifests, "StatefulSet"), assignments
        for manifest in manifests:
            name = manifest["metadata"]["name"]
            if manifest["kind"] == "StatefulSet":
                assert len(name) <= STATEFULSET_NAME_MAX, name
            if manifest["kind"] in ("Service", "StatefulSet", "Job"):
                assert len(name) <= 63, name
            labels = dict(manifest["metadata"].get("labels", {}))
            if manifest["kind"] in ("Deployment", "StatefulSet", "Job"):
                labels |= manifest["spec"]["template"]["metadata"]["labels"]
            for key, value in labels.items():
                assert len(str(value)) <= 63, f"{name}: {key}={value}"


@value_sets
def test_every_pod_is_hardened(values_file: Path) -> None:
    for workload, template in pod_templates(render(values_file)):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 0, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in security["capabilities"], name
            assert (
                container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            ), name


@value_sets
def test_gatehouse_pods_spread_and_roll_on_config_changes(values_file: Path) -> None:
    manifests = render(values_file)
    for component, checksums in (
        ("http", {"checksum/config"}),
        ("auth", {"checksum/config", "checksum/secret"}),
    ):
        template = named(manifests, "Deployment", f"{RELEASE}-{component}")["spec"]["template"]
        assert checksums <= set(template["metadata"]["annotations"])
        keys = {c["topologyKey"] for c in template["spec"]["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for constraint in template["spec"]["topologySpreadConstraints"]:
            assert labels_match(constraint["labelSelector"], template["metadata"]["labels"])


def test_checksums_follow_the_config() -> None:
    def checksum(*assignments: str) -> str:
        deployment = named(render(None, *assignments), "Deployment", f"{RELEASE}-auth")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() == checksum()
    assert checksum("auth.bcryptCost=12") != checksum()


@value_sets
def test_signing_key_reaches_the_auth_pods_only(values_file: Path) -> None:
    manifests = render(values_file)
    for workload, template in pod_templates(manifests):
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        containers = template["spec"]["containers"] + template["spec"].get("initContainers", [])
        secret_refs = [
            ref | {"env": env}
            for container in containers
            for env, ref in secret_files(template["spec"], container).items()
        ]
        refs = [(ref["env"], ref["key"]) for ref in secret_refs]
        if component not in ("mysql-primary", "mysql-replica", "redis"):
            # The Gatehouse pods read their secrets from files, never from a variable.
            assert not [
                variable["name"]
                for container in containers
                for variable in container.get("env", [])
                if "secretKeyRef" in variable.get("valueFrom", {})
            ], workload["metadata"]["name"]
        # The one key as a variable, or the rotating keys as files (auth.jwtKeys).
        has_key = ("GATEHOUSE_JWT_PRIVATE_KEY", "jwt-private-key") in refs or any(
            v["name"] == "jwt-keys" for v in template["spec"].get("volumes", [])
        )
        assert has_key == (component == "auth"), workload["metadata"]["name"]
        if component == "http":
            # The CSRF key only, from a Secret of its own: never the auth service's keys.
            assert refs == [("GATEHOUSE_CSRF_SECRET", "csrf-secret")], refs
            assert {ref["name"] for ref in secret_refs} == {f"{RELEASE}-http-keys"}
        if component == "test":
            assert not refs, f"{workload['metadata']['name']} gets secrets: {refs}"
        # Mounted: Valkey's own config, etcd's, the data stores' certificate (clients take
        # ca.crt), each tier's RPC certificate, etcd's CA and each tier's own etcd password
        # and client certificate (test_chart_etcd.py checks whose) and, in the auth pods, the operator's RPC
        # certificate and the rotating signing keys (auth.jwtKeys).
        volumes = template["spec"].get("volumes", [])
        if any(v["name"] == "rpc-tls" for v in volumes):
            assert component in ("http", "auth"), workload["metadata"]["name"]
        mounted = [
            v
            for v in volumes
            if "secret" in v
            and v["secret"]["secretName"] != f"{RELEASE}-data-stores-tls"
            and v["name"] not in ("rpc-tls", "etcd-ca", "etcd-password", "etcd-client")
        ]
        assert component in ("redis", "auth", "etcd") or not mounted, workload["metadata"]["name"]
        if component == "auth":
            assert [v["name"] for v in mounted if v["name"] != "rpc-operator-tls"] in (
                [],
                ["jwt-keys"],
            )
        if secret_refs:
            assert component in ("http", "auth", "migrate", "mysql-bootstrap"), component


def test_rotating_keys_are_mounted_as_the_folder_the_auth_pods_read() -> None:
    manifests = render(None, "auth.jwtKeys.existingSecret=my-jwt-keys")
    for workload, template in pod_templates(manifests):
        if template["metadata"]["labels"]["app.kubernetes.io/component"] != "auth":
            continue
        (container,) = template["spec"]["containers"]
        env = {variable["name"]: variable for variable in container.get("env", [])}
        assert "GATEHOUSE_JWT_PRIVATE_KEY" not in env, workload["metadata"]["name"]
        folder = env["GATEHOUSE_JWT_KEYS_DIR"]["value"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "jwt-keys"]
        assert mount["mountPath"] == folder and mount["readOnly"] and "subPath" not in mount
        (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "jwt-keys"]
        assert volume["secret"]["secretName"] == "my-jwt-keys"


@value_sets
def test_autoscaling_owns_the_replica_count(values_file: Path) -> None:
    manifests = render(values_file)
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h
        for h in of_kind(manifests, "HorizontalPodAutoscaler")
    }
    for component in ("http", "auth"):
        deployment = named(manifests, "Deployment", f"{RELEASE}-{component}")
        autoscaler = autoscalers.get(deployment["metadata"]["name"])
        if autoscaler is None:
            assert deployment["spec"]["replicas"] >= 1
            continue
        assert "replicas" not in deployment["spec"], (
            "the HPA and the Deployment would fight over replicas"
        )
        spec = autoscaler["spec"]
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        assert spec["metrics"][0]["resource"]["name"] == "cpu"
        assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0


def _most_replicas(manifests: tuple[Manifest, ...], component: str) -> int:
    """The most pods of a component: its HPA's maxReplicas, else the Deployment's replicas."""
    name = f"{RELEASE}-{component}"
    for autoscaler in of_kind(manifests, "HorizontalPodAutoscaler"):
        if autoscaler["spec"]["scaleTargetRef"]["name"] == name:
            return int(autoscaler["spec"]["maxReplicas"])
    return int(named(manifests, "Deployment", name)["spec"]["replicas"])


def _check_disruption_budgets(manifests: tuple[Manifest, ...]) -> None:
    budgets = {p["metadata"]["name"]: p for p in of_kind(manifests, "PodDisruptionBudget")}
    for component in ("http", "auth"):
        name = f"{RELEASE}-{component}"
        assert (name in budgets) == (_most_replicas(manifests, component) > 1), name
        if name in budgets:
            template = named(manifests, "Deployment", name)["spec"]["template"]
            assert labels_match(budgets[name]["spec"]["selector"], template["metadata"]["labels"])


@value_sets
def test_disruption_budgets_exist_when_there_is_more_than_one_replica(values_file: Path) -> None:
    _check_disruption_budgets(render(values_file))


def test_an_autoscaler_from_one_replica_gets_a_disruption_budget() -> None:
    """minReplicas 1 with maxReplicas 10: once the HPA has scaled up, a node drain must not
    evict every pod of the tier at once (maxUnavailable 1 never blocks evicting a single pod)."""
    manifests = render(None, "http.autoscaling.minReplicas=1", "auth.autoscaling.minReplicas=1")
    _check_disruption_budgets(manifests)
    for component in ("http", "auth"):
        budget = named(manifests, "PodDisruptionBudget", f"{RELEASE}-{component}")
        assert budget["spec"]["maxUnavailable"] == 1


def test_in_chart_stores_are_where_the_auth_pods_look() -> None:
    manifests = render(None)
    auth = named(manifests, "Deployment", f"{RELEASE}-auth")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = environment(manifests, auth)
    etcd = named(manifests, "StatefulSet", f"{RELEASE}-etcd")
    service = named(manifests, "Service", etcd["spec"]["serviceName"])
    assert (
        service["spec"]["clusterIP"] == "None"
        and service["spec"]["publishNotReadyAddresses"] is True
    )
    assert etcd["spec"]["replicas"] == 3
    expected = [f"{RELEASE}-etcd-{i}.{RELEASE}-etcd.gatehouse.svc:2379" for i in range(3)]
    assert env["GATEHOUSE_ETCD_ENDPOINTS"].split(",") == expected
    for name in (f"{RELEASE}-mysql-primary", f"{RELEASE}-mysql-read", f"{RELEASE}-redis"):
        named(manifests, "Service", name)
    connections = named(manifests, "Secret", f"{RELEASE}-auth-connections")["stringData"]
    assert connections["mysql-primary-dsn"].startswith("mysql://gatehouse:")
    assert (
        f"@{RELEASE}-mysql-primary.gatehouse.svc:3306/gatehouse" in connections["mysql-primary-dsn"]
    )
    assert (
        f"@{RELEASE}-mysql-replica-0.{RELEASE}-mysql-replica.gatehouse.svc:3306/"
        in connections["mysql-replica-dsns"]
    )
    assert connections["redis-url"].startswith("rediss://:") and connections["redis-url"].endswith(
        f"@{RELEASE}-redis.gatehouse.svc:6379/0?ssl_ca_certs=/etc/gatehouse/data-stores-ca/ca.crt"
    )


def test_external_services_come_from_their_secrets() -> None:
    manifests = render(next(p for p in VALUE_SETS if p.stem == "external-values"))
    assert not of_kind(manifests, "StatefulSet")
    auth = named(manifests, "Deployment", f"{RELEASE}-auth")["spec"]["template"]["spec"][
        "containers"
    ][0]
    auth_files = secret_files(
        named(manifests, "Deployment", f"{RELEASE}-auth")["spec"]["template"]["spec"], auth
    )
    assert auth_files["GATEHOUSE_MYSQL_PRIMARY_DSN"] == {
        "name": "gatehouse-mysql-dsns",
        "key": "primary-dsn",
    }
    assert auth_files["GATEHOUSE_REDIS_URL"] == {"name": "gatehouse-redis-url", "key": "url"}
    assert auth_files["GATEHOUSE_PEPPERS"] == {"name": "gatehouse-auth-keys", "key": "peppers"}
    env = environment(manifests, auth)
    assert env["GATEHOUSE_ETCD_ENDPOINTS"].startswith("etcd-0.etcd.platform.svc:2379,")
    http_pod = named(manifests, "Deployment", f"{RELEASE}-http")["spec"]["template"]["spec"]
    assert secret_files(http_pod, http_pod["containers"][0]) == {
        "GATEHOUSE_CSRF_SECRET": {"name": "gatehouse-http-keys", "key": "csrf-secret"}
    }
    assert not list(of_kind(manifests, "Secret")), "every secret comes from an existing Secret here"


def test_external_services_from_plain_values() -> None:
    manifests = render(
        None,
        "mysql.enabled=false",
        "redis.enabled=false",
        "external.mysql.writerHost=writer.example",
        "external.mysql.readerHosts={r1.example,r2.example}",
        "external.mysql.password=p@ss word",
        "external.mysql.migrationPassword=ddl:pw",
        "external.mysql.adminPassword=master/pw",
        "external.redis.url=rediss://cache.example:6379/0",
    )
    connections = named(manifests, "Secret", f"{RELEASE}-auth-connections")["stringData"]
    primary = parse_dsn(connections["mysql-primary-dsn"])
    assert (primary.user, primary.password, primary.host, primary.port) == (
        "gatehouse",
        "p@ss word",
        "writer.example",
        3306,
    )
    replicas = [parse_dsn(dsn) for dsn in connections["mysql-replica-dsns"].split(",")]
    assert [r.host for r in replicas] == ["r1.example", "r2.example"]
    assert connections["redis-url"] == "rediss://cache.example:6379/0"
    job_dsns = named(manifests, "Secret", f"{RELEASE}-mysql-jobs")["stringData"]
    users = {key: parse_dsn(dsn) for key, dsn in job_dsns.items()}
    assert {key: (a.user, a.password, a.host) for key, a in users.items()} == {
        "primary-dsn": ("gatehouse", "p@ss word", "writer.example"),
        "migration-dsn": ("gatehouse_ddl", "ddl:pw", "writer.example"),
        "admin-dsn": ("admin", "master/pw", "writer.example"),
    }


def test_generated_secrets_hold_a_pepper_and_an_ed25519_key() -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    keys = named(render(None), "Secret", f"{RELEASE}-auth-keys")
    assert keys["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = {key: base64.b64decode(value) for key, value in keys["data"].items()}
    version, _, pepper = data["peppers"].decode().partition(":")
    assert version == "1" and len(pepper) >= 32
    assert len(data["device-cookie-secret"]) >= 32
    assert isinstance(
        load_pem_private_key(data["jwt-private-key"], password=None), Ed25519PrivateKey
    )


def _egress_without_destinations(manifests: tuple[Manifest, ...]) -> list[str]:
    """Egress rules that name no destination: Kubernetes reads them as every destination."""
    return [
        f"{policy['metadata']['name']}: {rule}"
        for policy in of_kind(manifests, "NetworkPolicy")
        for rule in policy["spec"].get("egress", [])
        if not rule.get("to")
    ]


@value_sets
def test_no_egress_rule_allows_every_destination(values_file: Path) -> None:
    assert not _egress_without_destinations(render(values_file))


def test_no_external_cidrs_allow_no_external_destination(tmp_path: Path) -> None:
    """`networkPolicy.externalCidrs: []` with external stores: no egress to them at all, not a
    rule with `to: []`, which would open their ports to every address."""
    empty = tmp_path / "no-external-cidrs.yaml"
    empty.write_text("networkPolicy:\n  externalCidrs: []\n")
    external = next(p for p in VALUE_SETS if p.stem == "external-values")
    args = ["template", RELEASE, str(CHART), "--values", str(external), "--values", str(empty)]
    result = run_helm(*args)
    assert result.returncode == 0, result.stderr
    manifests = manifests_of(result.stdout)
    assert not _egress_without_destinations(manifests)
    ports = {
        port["port"]
        for policy in of_kind(manifests, "NetworkPolicy")
        for rule in policy["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }
    assert not ports & {3306, 6379, 2379}, ports
    # The in-chart stores are still reached, whatever the list says.
    in_chart = render(None, "networkPolicy.externalCidrs=null")
    assert not _egress_without_destinations(in_chart)
    auth = named(in_chart, "NetworkPolicy", f"{RELEASE}-auth")
    assert {rule["ports"][0]["port"] for rule in auth["spec"]["egress"]} >= {3306, 6379, 2379}
