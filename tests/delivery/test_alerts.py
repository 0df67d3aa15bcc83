"""The chart's PrometheusRule: valid for promtool, every alert unit-tested both ways
(alerts/alerts_test.yaml), and every alert documented by a runbook in docs/runbooks/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.delivery.chart import CHART, of_kind, render
from tests.delivery.chart import prometheus_rule_groups as rule_groups
from tests.delivery.toolbox import REPO_ROOT, promtool

UNIT_TESTS = Path(__file__).parent / "alerts" / "alerts_test.yaml"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/gatehouse/gatehouse/blob/main/docs/runbooks"
EXPECTED_ALERTS = {
    "GatehouseErrorBudgetBurnFast",
    "GatehouseErrorBudgetBurnSlow",
    "GatehouseHighLatency",
    "GatehouseNoAuthReplicasDiscovered",
    "GatehouseAuthPoolSaturated",
    "GatehouseLoginFailureSpike",
    "GatehouseCacheDegraded",
    "GatehouseReplicaLagHigh",
    "GatehouseOverloaded",
    "GatehouseEtcdRegistrationFailing",
    "GatehouseUserIdsFromDatabase",
    "GatehouseMySQLPrimaryUnavailable",
    "GatehouseRedisBreakerOpen",
    "GatehouseRedisMayEvict",
    "GatehouseAuthReplicaOutOfRotation",
    "GatehouseHTTPWorkersRestarting",
    "GatehouseEtcdDataLost",
    "GatehouseEtcdNoLeader",
    "GatehouseEtcdMemberDown",
    "GatehouseEtcdSpaceLow",
    "GatehouseHPAAtMax",
}
IN_CHART_ETCD_ALERTS = {"GatehouseEtcdNoLeader", "GatehouseEtcdMemberDown", "GatehouseEtcdSpaceLow"}


def alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def run_promtool(*args: str) -> None:
    result = subprocess.run(
        [promtool(), *args], check=False, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_are_valid(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    run_promtool("check", "rules", str(rules))


def test_every_alert_fires_and_stays_silent_as_specified(tmp_path: Path) -> None:
    # Annotations are left out: promtool would otherwise compare every rendered description;
    # their templates are checked by `promtool check rules` above.
    groups = rule_groups()
    for rule in alerts(groups):
        rule.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    run_promtool("test", "rules", str(tmp_path / UNIT_TESTS.name))


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    for name in (rule["alert"] for rule in alerts(rule_groups())):
        assert cases.get(name) == {True, False}, (
            f"{name} needs a case where it fires and one where it does not"
        )


def test_the_expected_alerts_exist() -> None:
    assert {rule["alert"] for rule in alerts(rule_groups())} == EXPECTED_ALERTS


def test_without_autoscaling_there_is_no_autoscaler_alert() -> None:
    groups = rule_groups("http.autoscaling.enabled=false", "auth.autoscaling.enabled=false")
    assert {rule["alert"] for rule in alerts(groups)} == EXPECTED_ALERTS - {"GatehouseHPAAtMax"}


def test_without_the_service_monitors_there_is_no_alert_on_etcd_metrics() -> None:
    """Nothing scrapes the chart's etcd then: GatehouseEtcdNoLeader would count no member."""
    groups = rule_groups("serviceMonitor.enabled=false")
    assert {rule["alert"] for rule in alerts(groups)} == EXPECTED_ALERTS - IN_CHART_ETCD_ALERTS


def test_an_etcd_without_a_member_to_spare_has_only_the_quorum_alert() -> None:
    """With one or two members any member down loses the quorum: GatehouseEtcdNoLeader."""
    for members in (1, 2):
        groups = rule_groups(f"etcd.replicaCount={members}")
        names = {rule["alert"] for rule in alerts(groups)}
        assert names == EXPECTED_ALERTS - {"GatehouseEtcdMemberDown"}, members


def test_with_an_external_etcd_there_is_no_alert_on_its_own_metrics() -> None:
    """The chart scrapes only the etcd it runs; an external one is monitored by its owner."""
    manifests = render(
        CHART / "ci" / "external-values.yaml",
        "prometheusRule.enabled=true",
        "serviceMonitor.enabled=true",
    )
    assert not of_kind(manifests, "StatefulSet"), "an external etcd (and stores) here"
    (rule,) = of_kind(manifests, "PrometheusRule")
    names = {rule["alert"] for rule in alerts(rule["spec"]["groups"])}
    assert not names & IN_CHART_ETCD_ALERTS
    assert "GatehouseEtcdDataLost" in names  # the auth replicas' own, whatever etcd


def test_every_alert_is_labelled_and_documented() -> None:
    for rule in alerts(rule_groups()):
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}/{name}.md", name
        runbook = RUNBOOKS / f"{name}.md"
        assert runbook.is_file(), f"{name}: write the runbook {runbook.relative_to(REPO_ROOT)}"
        assert runbook.read_text().startswith(f"# {name}\n"), runbook


def test_the_runbook_base_url_is_configurable() -> None:
    for rule in alerts(rule_groups("prometheusRule.runbookBaseUrl=https://wiki.example/runbooks")):
        assert (
            rule["annotations"]["runbook_url"]
            == f"https://wiki.example/runbooks/{rule['alert']}.md"
        )


def test_every_runbook_belongs_to_an_alert() -> None:
    assert {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"} == EXPECTED_ALERTS
