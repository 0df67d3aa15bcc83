"""The rendered manifests against the Kubernetes API schemas of the oldest and newest supported
versions (kubernetes-validate, strict), the Prometheus Operator CRD schemas, cert-manager's
schemas (the validators of the npm package @kubernetes-models/cert-manager), and HTTPRoute's
shape.

kubernetes-validate knows only built-in kinds and says so for the rest ("could not find
schema"); here that is a failure, except for the kinds checked below by other means.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from tests.delivery.chart import CHART, VALUE_SETS, Manifest, named, of_kind, render, value_set_id
from tests.delivery.toolbox import cert_manager_problems

CRD_DIR = Path(__file__).parent / "crds"
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")
STRUCTURALLY_CHECKED_KINDS = ("HTTPRoute",)
CERT_MANAGER_KINDS = ("Certificate",)


def supported_versions() -> list[str]:
    """The oldest version Chart.yaml admits and the newest kubernetes-validate has schemas for."""
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    oldest = kube_version.removeprefix(">=").removesuffix("-0")
    newest = kubernetes_validate.latest_version()
    return [oldest, newest]


def test_supported_versions_have_schemas() -> None:
    shipped = set(kubernetes_validate.utils.all_versions())
    assert set(supported_versions()) <= shipped, sorted(shipped)


@pytest.mark.parametrize("kube_version", supported_versions())
@pytest.mark.parametrize("values_file", VALUE_SETS, ids=value_set_id)
def test_builtin_kinds_are_valid(values_file: Path, kube_version: str) -> None:
    problems = []
    for manifest in render(values_file):
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            if manifest["kind"] not in CRD_KINDS + STRUCTURALLY_CHECKED_KINDS + CERT_MANAGER_KINDS:
                problems.append(f"{where}: {exc}")
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {exc.message} at {'.'.join(map(str, exc.path))}")
    assert not problems, "\n".join(problems)


def _strict(schema: Any) -> Any:
    """A copy of an OpenAPI schema that rejects properties it does not declare, like --strict."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD under tests/delivery/crds."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = _strict(
                copy.deepcopy(version["schema"]["openAPIV3Schema"])
            )
    return schemas


def test_crds_are_there() -> None:
    kinds = {kind for _, kind in _crd_schemas()}
    assert set(CRD_KINDS) <= kinds, f"missing CRDs in {CRD_DIR}: {set(CRD_KINDS) - kinds}"


def _custom_resources() -> list[tuple[str, Manifest]]:
    return [
        (values_file.stem, manifest)
        for values_file in VALUE_SETS
        for manifest in render(values_file)
        if manifest["kind"] in CRD_KINDS
    ]


def test_every_custom_resource_kind_is_rendered_by_some_value_set() -> None:
    assert {manifest["kind"] for _, manifest in _custom_resources()} == set(CRD_KINDS)


def test_custom_resources_match_their_crd() -> None:
    schemas = _crd_schemas()
    problems = []
    for value_set, manifest in _custom_resources():
        schema = schemas[(manifest["apiVersion"], manifest["kind"])]
        for error in jsonschema.Draft7Validator(schema).iter_errors(manifest):
            path = ".".join(map(str, error.absolute_path))
            problems.append(
                f"{value_set}: {manifest['kind']}/{manifest['metadata']['name']} {path}: {error.message}"
            )
    assert not problems, "\n".join(problems)


def test_the_strict_crd_schema_catches_a_misspelt_field() -> None:
    schemas = _crd_schemas()
    monitor = copy.deepcopy(
        next(m for _, m in _custom_resources() if m["kind"] == "ServiceMonitor")
    )
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    errors = list(
        jsonschema.Draft7Validator(schemas[(monitor["apiVersion"], "ServiceMonitor")]).iter_errors(
            monitor
        )
    )
    assert errors


def _cert_manager_resources() -> list[Manifest]:
    return [
        manifest
        for values_file in VALUE_SETS
        for manifest in render(values_file)
        if manifest["kind"] in CERT_MANAGER_KINDS
    ]


def test_cert_manager_resources_match_cert_managers_schemas() -> None:
    resources = _cert_manager_resources()
    assert {manifest["kind"] for manifest in resources} == set(CERT_MANAGER_KINDS)
    problems = cert_manager_problems(resources)
    assert not problems, "\n".join(problems)


def test_cert_managers_schema_catches_a_wrong_usage() -> None:
    certificate = copy.deepcopy(_cert_manager_resources()[0])
    certificate["spec"]["usages"] = ["client-auth"]
    assert cert_manager_problems([certificate])


def test_http_route_is_well_formed() -> None:
    values_file = CHART / "ci" / "external-values.yaml"
    manifests = render(values_file)
    (route,) = of_kind(manifests, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = route["spec"]
    assert set(spec) <= {"parentRefs", "hostnames", "rules"}, spec.keys()
    assert spec["parentRefs"] and all(
        isinstance(ref.get("name"), str) and ref["name"] for ref in spec["parentRefs"]
    )
    assert all(isinstance(host, str) and host for host in spec.get("hostnames", []))
    assert spec["rules"]
    for rule in spec["rules"]:
        assert set(rule) <= {"matches", "backendRefs", "filters", "timeouts"}, rule.keys()
        for match in rule["matches"]:
            assert match["path"]["type"] in ("Exact", "PathPrefix", "RegularExpression")
            assert match["path"]["value"].startswith("/")
        for backend in rule["backendRefs"]:
            service = named(manifests, "Service", backend["name"])
            assert backend["port"] in [port["port"] for port in service["spec"]["ports"]]
