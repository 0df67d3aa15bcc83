"""Every value of values.yaml is described by values.schema.json and by the chart README's table."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from tests.delivery.chart import CHART

# Free-form maps: their keys are the user's, documented as one value.
FREE_FORM = {
    "resources",
    "affinity",
    "nodeSelector",
    "annotations",
    "podAnnotations",
    "podLabels",
    "labels",
    "additionalLabels",
    "behavior",
    "namespaceSelector",
    "podSelector",
    "extraEnv",
}


def leaf_paths(node: Any, path: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node and path.rsplit(".", 1)[-1] not in FREE_FORM:
        for key, value in node.items():
            yield from leaf_paths(value, f"{path}.{key}" if path else key)
    else:
        yield path


VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def test_the_schema_declares_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path in leaf_paths(VALUES):
        node = schema
        for key in path.split("."):
            assert key in node.get("properties", {}), f"values.schema.json does not declare {path}"
            node = node["properties"][key]
        assert "type" in node, path


def test_the_readme_table_lists_every_value() -> None:
    documented = set(
        re.findall(r"^\| `([\w.]+)` \|", (CHART / "README.md").read_text(), flags=re.MULTILINE)
    )
    assert documented == set(leaf_paths(VALUES))
