"""checkov on the manifests rendered from every CI value set, with the chart's .checkov.yaml
(where each skipped check is explained)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.delivery.chart import CHART, VALUE_SETS, render
from tests.delivery.toolbox import run_checkov


def test_rendered_chart_passes_checkov(tmp_path: Path) -> None:
    for values_file in VALUE_SETS:
        (tmp_path / f"{values_file.stem}.yaml").write_text(yaml.safe_dump_all(render(values_file)))
    result, report = run_checkov(tmp_path, CHART / ".checkov.yaml")
    summary = report["summary"]
    failures = [
        f"{check['check_id']} {check['check_name']}: {check['resource']}"
        for check in report["results"]["failed_checks"]
    ]
    assert summary["passed"] > 0, result.stderr
    assert result.returncode == 0 and not failures, "\n".join(failures) or result.stderr
