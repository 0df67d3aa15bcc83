"""`helm lint --strict` with every CI value set, and the chart's own guard rails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.delivery.chart import CHART, VALUE_SETS, run_helm, value_set_id


def test_there_are_value_sets_to_check() -> None:
    assert {path.stem for path in VALUE_SETS} >= {
        "defaults-values",
        "external-values",
        "hpa-off-values",
        "minimal-values",
    }


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=value_set_id)
def test_lint_strict(values_file: Path) -> None:
    result = run_helm("lint", "--strict", str(CHART), "--values", str(values_file))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (
            ["auth.terminationGracePeriodSeconds=20"],
            "must exceed auth.drain.delaySeconds + auth.drain.graceSeconds",
        ),
        (["http.terminationGracePeriodSeconds=15"], "must exceed http.preStopSleepSeconds"),
        (
            ["mysql.enabled=false"],
            "external.mysql.writerHost (or external.mysql.existingSecret) is required",
        ),
        (
            ["redis.enabled=false"],
            "external.redis.url (or external.redis.existingSecret) is required",
        ),
        (["etcd.enabled=false"], "external.etcd.endpoints is required"),
        (
            [
                "etcd.enabled=false",
                "external.etcd.endpoints={etcd.example:2379}",
                "external.etcd.http.username=gatehouse-http",
            ],
            "external.etcd.http.password (or external.etcd.http.existingSecret) is required",
        ),
        (["etcd.auth.httpUser=root"], "httpUser"),
        (
            ["etcd.persistence.size=512Mi"],
            "etcd.quotaBackendBytes (268435456) must be at most a third of etcd.persistence.size",
        ),
        (["etcd.quotaBackendBytes=1000"], "quotaBackendBytes"),
        (
            ["etcd.persistence.size=0.5Gi"],
            "must be at most a third of etcd.persistence.size (0.5Gi)",
        ),
        (["etcd.persistence.size=1e9"], 'etcd.persistence.size "1e9": write it as a number'),
        (["mysql.auth.existingSecret=mine"], "was not found in namespace"),
        (["http.extraEnv.NOT_A_SETTING=1"], "invalid propertyName"),
        (["auth.bcryptCost=3"], "bcryptCost"),
        (["http.httpRoute.enabled=true"], "http.httpRoute.parentRefs"),
    ],
)
def test_bad_values_fail_with_a_message_that_says_what_to_fix(
    assignments: list[str], message: str
) -> None:
    args = ["template", "gatehouse", str(CHART)]
    for assignment in assignments:
        args += ["--set", assignment]
    result = run_helm(*args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
