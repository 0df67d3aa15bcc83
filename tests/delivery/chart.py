"""Rendering the chart with helm, and finding things in what it renders."""

from __future__ import annotations

import copy
import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.delivery.toolbox import REPO_ROOT, helm, tool_environment

CHART = REPO_ROOT / "charts" / "gatehouse"
VALUE_SETS = tuple(sorted((CHART / "ci").glob("*.yaml")))
RELEASE = "gatehouse"
NAMESPACE = "gatehouse"

Manifest = dict[str, Any]


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm()), *args],
        check=False,
        capture_output=True,
        text=True,
        env=tool_environment(),
        timeout=120,
    )


def render(values_file: Path | None = None, *set_values: str) -> tuple[Manifest, ...]:
    """The manifests `helm template` renders for an install (hooks and test pods included);
    read-only."""
    return _template(False, values_file, set_values)


def render_upgrade(values_file: Path | None = None, *set_values: str) -> tuple[Manifest, ...]:
    """The same for an upgrade (`.Release.IsUpgrade`); read-only."""
    return _template(True, values_file, set_values)


@functools.cache
def _template(
    upgrade: bool, values_file: Path | None, set_values: tuple[str, ...]
) -> tuple[Manifest, ...]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if upgrade:
        args.append("--is-upgrade")
    if values_file is not None:
        args += ["--values", str(values_file)]
    for assignment in set_values:
        args += ["--set", assignment]
    result = run_helm(*args)
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return manifests_of(result.stdout)


def render_release(release: str, namespace: str, *set_values: str) -> tuple[Manifest, ...]:
    """The manifests of an install under another release name and namespace; read-only."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for assignment in set_values:
        args += ["--set", assignment]
    result = run_helm(*args)
    assert result.returncode == 0, result.stderr
    return manifests_of(result.stdout)


def manifests_of(rendered: str) -> tuple[Manifest, ...]:
    """The documents of `helm template`'s output, parsed by libyaml (ten times PyYAML's own
    parser on the chart's 3,000 lines: 0.02 against 0.2 s a render)."""
    return tuple(doc for doc in yaml.load_all(rendered, Loader=yaml.CSafeLoader) if doc)


def value_set_id(path: Path) -> str:
    return path.stem


def of_kind(manifests: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    for manifest in of_kind(manifests, kind):
        if manifest["metadata"]["name"] == name:
            return manifest
    raise AssertionError(f"no {kind} named {name!r} in the rendered chart")


def environment(manifests: tuple[Manifest, ...], container: dict[str, Any]) -> dict[str, Any]:
    """Every variable a container gets: name -> literal value, or the valueFrom source."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"unexpected envFrom source {source}"
        env.update(named(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return env


SECRET_FILES = "/var/run/secrets/gatehouse"


def secret_files(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The secrets a Gatehouse container reads from files: setting -> {"name": Secret, "key":
    key}, followed from its `<SETTING>_FILE` variable through its mount to the projected volume.
    Every file of that volume is one a variable names."""
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == SECRET_FILES]
    if not mounts:
        return {}
    (mount,) = mounts
    assert mount.get("readOnly") and "subPath" not in mount, mount
    (volume,) = [v for v in pod.get("volumes", []) if v["name"] == mount["name"]]
    items = {
        item["path"]: {"name": source["secret"]["name"], "key": item["key"]}
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    files = {
        variable["name"].removesuffix("_FILE"): items[
            variable["value"].removeprefix(f"{SECRET_FILES}/")
        ]
        for variable in container.get("env", [])
        if variable.get("value", "").startswith(f"{SECRET_FILES}/")
    }
    assert len(files) == len(items), f"{container['name']}: files no variable names: {items}"
    return files


def secret_keys_mounted(pod: dict[str, Any], container: dict[str, Any]) -> set[tuple[str, str]]:
    """(Secret, key) of every Secret key a container's mounts give it, wherever mounted; a
    whole Secret mounted gives (Secret, "*")."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    keys: set[tuple[str, str]] = set()
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = [volume] if "secret" in volume else volume.get("projected", {}).get("sources", [])
        for source in sources:
            secret = source.get("secret")
            if secret is None:
                continue
            name = secret.get("secretName", secret.get("name"))
            items = secret.get("items")
            keys |= {(name, item["key"]) for item in items} if items else {(name, "*")}
    return keys


def pod_templates(manifests: tuple[Manifest, ...]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """(workload, pod template) of every Deployment, StatefulSet and Job, and bare Pods."""
    for manifest in manifests:
        kind = manifest["kind"]
        if kind in ("Deployment", "StatefulSet", "Job"):
            yield manifest, manifest["spec"]["template"]
        elif kind == "Pod":
            yield manifest, manifest


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects `labels`."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = (
            expression["key"],
            expression["operator"],
            expression.get("values", []),
        )
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def prometheus_rule_groups(*set_values: str) -> list[dict[str, Any]]:
    """A copy of the rule groups of the PrometheusRule (release and namespace "gatehouse"), of
    a release whose ServiceMonitors scrape it (the rules on etcd's own metrics need them)."""
    rendered = render(
        None, "prometheusRule.enabled=true", "serviceMonitor.enabled=true", *set_values
    )
    (rule,) = of_kind(rendered, "PrometheusRule")
    return copy.deepcopy(rule["spec"]["groups"])
