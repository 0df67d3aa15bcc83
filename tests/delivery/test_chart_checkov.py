"""checkov on the manifests rendered from every CI value set, with the chart's .checkov.yaml
(where each skipped check is explained)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.delivery.chart import CHART, VALUE_SETS, render
from tests.delivery.toolbox import checkov


def test_rendered_chart_passes_checkov(tmp_path: Path) -> None:
    for values_file in VALUE_SETS:
        (tmp_path / f"{values_file.stem}.yaml").write_text(yaml.safe_dump_all(render(values_file)))
    result = subprocess.run(
        [
            str(checkov()),
            "--directory",
            str(tmp_path),
            "--config-file",
            str(CHART / ".checkov.yaml"),
            "--skip-download",
            "--output",
            "json",
            "--compact",
            "--quiet",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    failures = [
        f"{check['check_id']} {check['check_name']}: {check['resource']}"
        for check in report["results"]["failed_checks"]
    ]
    assert summary["passed"] > 0, result.stderr
    assert result.returncode == 0 and not failures, "\n".join(failures) or result.stderr
