"""Chart.yaml's metadata for people and for Artifact Hub: where the project lives, who keeps it,
an icon that exists in the repository, its license, and the images the chart deploys."""

from __future__ import annotations

import tomllib
from typing import Any

import yaml

from tests.delivery.chart import CHART, render
from tests.delivery.toolbox import REPO_ROOT

CHART_YAML: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
ANNOTATIONS: dict[str, str] = CHART_YAML.get("annotations", {})
# https://artifacthub.io/docs/topics/annotations/helm/
CHANGE_KINDS = {"added", "changed", "deprecated", "removed", "fixed", "security"}
ICON_PATH_IN_HOME = "/raw/main/"


def _listed(annotation: str) -> list[dict[str, str]]:
    """Artifact Hub's list annotations are YAML documents inside a string."""
    entries = yaml.safe_load(ANNOTATIONS[annotation])
    assert isinstance(entries, list) and entries, annotation
    return entries


def test_home_sources_and_maintainers() -> None:
    home = CHART_YAML["home"]
    assert home.startswith("https://")
    assert home in CHART_YAML["sources"]
    for maintainer in CHART_YAML["maintainers"]:
        assert maintainer["name"] and (maintainer.get("email") or maintainer.get("url"))


def test_the_icon_is_a_file_of_the_repository_served_under_home() -> None:
    icon: str = CHART_YAML["icon"]
    prefix = CHART_YAML["home"] + ICON_PATH_IN_HOME
    assert icon.startswith(prefix), icon
    path = REPO_ROOT / icon.removeprefix(prefix)
    assert path.is_file() and path.suffix == ".svg", path
    assert path.read_text().lstrip().startswith("<svg"), path


def test_the_license_is_the_projects() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert ANNOTATIONS["artifacthub.io/license"] == pyproject["project"]["license"]
    assert (REPO_ROOT / "LICENSE").is_file()


def test_links_and_changes() -> None:
    for link in _listed("artifacthub.io/links"):
        assert link["name"] and link["url"].startswith("https://"), link
    for change in _listed("artifacthub.io/changes"):
        assert change["kind"] in CHANGE_KINDS and change["description"], change
    for flag in ("artifacthub.io/containsSecurityUpdates", "artifacthub.io/prerelease"):
        assert ANNOTATIONS[flag] in {"true", "false"}, flag


def test_the_images_annotation_lists_what_the_default_values_deploy() -> None:
    deployed = set()
    for manifest in render(None):
        spec = manifest.get("spec", {})
        pod = spec if manifest["kind"] == "Pod" else spec.get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            deployed.add(container["image"])
    listed = {entry["image"] for entry in _listed("artifacthub.io/images")}
    assert listed == deployed
