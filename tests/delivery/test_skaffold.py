"""skaffold.yaml checked statically (skaffold itself cannot run here): current schema, both
images, image values that exist in the chart, a port-forward that names the real Service, and a
dev profile whose values render the small install it promises."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.delivery.chart import CHART, RELEASE, named, of_kind, render, render_upgrade
from tests.delivery.toolbox import REPO_ROOT

SKAFFOLD = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())


def _release() -> dict[str, Any]:
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    return release


def _has_value(path: str) -> bool:
    node: Any = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def test_current_schema() -> None:
    assert re.fullmatch(r"skaffold/v4beta\d+", SKAFFOLD["apiVersion"])
    assert SKAFFOLD["kind"] == "Config"


def test_both_images_are_built_from_their_dockerfiles_on_the_shared_base() -> None:
    artifacts = {a["image"]: a for a in SKAFFOLD["build"]["artifacts"]}
    assert set(artifacts) == {"gatehouse-base", "gatehouse-http", "gatehouse-auth"}
    for image, artifact in artifacts.items():
        dockerfile = REPO_ROOT / artifact["context"] / artifact["docker"]["dockerfile"]
        assert (
            dockerfile.is_file()
            and dockerfile.name == f"Dockerfile.{image.removeprefix('gatehouse-')}"
        )
    for image in ("gatehouse-http", "gatehouse-auth"):
        # The alias is the build arg that Dockerfile.http and Dockerfile.auth start FROM.
        assert artifacts[image]["requires"] == [
            {"image": "gatehouse-base", "alias": "GATEHOUSE_BASE"}
        ]


def test_the_base_image_comes_from_the_environment_defaulting_as_the_dockerfile() -> None:
    """BASE_IMAGE=<image>@sha256:<digest> pins a release build; unset, the Dockerfile's default."""
    (base,) = [a for a in SKAFFOLD["build"]["artifacts"] if a["image"] == "gatehouse-base"]
    (default,) = [
        line.removeprefix("ARG BASE_IMAGE=")
        for line in (REPO_ROOT / "Dockerfile.base").read_text().splitlines()
        if line.startswith("ARG BASE_IMAGE=")
    ]
    assert base["docker"]["buildArgs"] == {"BASE_IMAGE": f'{{{{default "{default}" .BASE_IMAGE}}}}'}


def test_image_values_are_templated_into_the_chart() -> None:
    release = _release()
    assert (REPO_ROOT / release["chartPath"]).resolve() == CHART
    templates = release["setValueTemplates"]
    for component in ("http", "auth"):
        variable = f"gatehouse_{component}"
        assert templates[f"{component}.image.repository"] == f"{{{{.IMAGE_REPO_{variable}}}}}"
        assert (
            templates[f"{component}.image.tag"]
            == f"{{{{.IMAGE_TAG_{variable}}}}}@{{{{.IMAGE_DIGEST_{variable}}}}}"
        )
    assert all(_has_value(path) for path in templates)


def test_port_forward_targets_the_http_service() -> None:
    (forward,) = SKAFFOLD["portForward"]
    assert _release()["name"] == RELEASE
    service = named(render(None), "Service", forward["resourceName"])
    assert forward["resourceType"] == "service"
    assert forward["port"] in [port["port"] for port in service["spec"]["ports"]]
    assert forward["namespace"] == _release()["namespace"]


def test_dev_profile_renders_one_pod_of_each_without_autoscaling() -> None:
    (profile,) = [p for p in SKAFFOLD["profiles"] if p["name"] == "dev"]
    (patch,) = profile["patches"]
    assert patch["path"] == "/deploy/helm/releases/0/setValues"
    values: dict[str, Any] = patch["value"]
    assert all(_has_value(path) for path in values)
    manifests = render(
        None,
        *(
            f"{key}={str(value).lower() if isinstance(value, bool) else value}"
            for key, value in values.items()
        ),
    )
    assert not of_kind(manifests, "HorizontalPodAutoscaler")
    for component in ("http", "auth"):
        assert named(manifests, "Deployment", f"{RELEASE}-{component}")["spec"]["replicas"] == 1
    assert named(manifests, "StatefulSet", f"{RELEASE}-etcd")["spec"]["replicas"] == 1


def _seconds(duration: str) -> int:
    """A Go duration of hours, minutes and seconds ("15m", "1h30m", "900s") in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, duration
    hours, minutes, seconds = (int(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def test_helm_waits_long_enough_for_the_jobs_the_pods_need() -> None:
    """`wait` makes Helm wait up to --timeout (5 min by default): for each hook Job, and at the
    install for the pods, which are not ready before the release's database and etcd Jobs ran."""
    assert _release()["wait"] is True
    flags = SKAFFOLD["deploy"]["helm"]["flags"]
    timeouts = {}
    for command in ("install", "upgrade"):
        (timeout,) = [f for f in flags[command] if f.startswith("--timeout=")]
        timeouts[command] = _seconds(timeout.removeprefix("--timeout="))
    install, upgrade = render(None), render_upgrade(None)
    for manifests, timeout in ((install, timeouts["install"]), (upgrade, timeouts["upgrade"])):
        for job in of_kind(manifests, "Job"):
            assert job["spec"]["activeDeadlineSeconds"] <= timeout, job["metadata"]["name"]
