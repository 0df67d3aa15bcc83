"""Every metric name the chart's alert/recording rules and Grafana dashboard read.

For the contract test that scrapes the running services' /metrics: each name found here must
be exposed by them, except the names other exporters provide (that test keeps that list).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(?!\s*\()")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "Inf",
        "NaN",
    }
)


def names_in_expression(expression: str) -> set[str]:
    """Metric names in one PromQL expression (label matchers, ranges and label lists ignored)."""
    text = _STRING.sub('""', expression)
    text = _BRACES.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


def names_in_rule_groups(groups: list[dict[str, Any]]) -> set[str]:
    """Metric names the rules read, without the series they record themselves."""
    rules = [rule for group in groups for rule in group["rules"]]
    recorded = {rule["record"] for rule in rules if "record" in rule}
    used = set().union(*(names_in_expression(rule["expr"]) for rule in rules))
    return used - recorded


def names_in_dashboard(path: Path) -> set[str]:
    """Metric names of every panel query and template variable query of a Grafana dashboard."""
    dashboard = json.loads(path.read_text())
    expressions = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query or "")
        if match:
            expressions.append(match.group(1))
    return set().union(*(names_in_expression(expression) for expression in expressions))
