"""The metric names of the rules and the dashboard: extracted correctly, and each one defined
by the services (or by an exporter named below)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from services.auth import metrics as auth_metrics
from services.foundation.rpc import server_metrics as rpc_server_metrics
from services.http import metrics as http_metrics
from services.http.workers import supervisor_metrics
from tests.delivery.chart import CHART, prometheus_rule_groups
from tests.delivery.metric_names import (
    names_in_dashboard,
    names_in_expression,
    names_in_rule_groups,
)

DASHBOARD = CHART / "dashboards" / "gatehouse.json"
# Read by the rules but exported by kube-state-metrics and by the chart's etcd, not by Gatehouse.
NOT_FROM_GATEHOUSE = frozenset(
    {
        "kube_horizontalpodautoscaler_status_current_replicas",
        "kube_horizontalpodautoscaler_spec_max_replicas",
        "etcd_server_has_leader",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_server_quota_backend_bytes",
    }
)


def defined_sample_names() -> set[str]:
    """Series names the services' metric definitions expose (suffixes included)."""
    suffixes = {Counter: ("_total",), Histogram: ("_bucket", "_count", "_sum"), Gauge: ("",)}
    names = set()
    for module in (auth_metrics, rpc_server_metrics, http_metrics, supervisor_metrics):
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase):
                for suffix in suffixes[type(metric)]:
                    names.add(metric._name + suffix)
    return names


def test_extraction_skips_functions_labels_ranges_and_keywords() -> None:
    expression = (
        'histogram_quantile(0.99, sum by (route, le) (rate(a_seconds_bucket{job="x",route!~"/m|/r"}[5m])))'
        " > 0.5 and on (namespace) b_total offset 5m unless ignoring (pod) c:recorded:rate5m == bool 1"
    )
    assert names_in_expression(expression) == {"a_seconds_bucket", "b_total", "c:recorded:rate5m"}


def test_rules_read_only_metrics_the_services_define() -> None:
    names = names_in_rule_groups(prometheus_rule_groups())
    assert "gatehouse_http_request_seconds_count" in names
    assert not any(name.startswith("gatehouse:") for name in names), (
        "recorded series are not scraped"
    )
    missing = names - defined_sample_names() - NOT_FROM_GATEHOUSE
    assert not missing, f"the rules read metrics no service defines: {sorted(missing)}"


def test_dashboard_reads_only_metrics_the_services_define() -> None:
    names = names_in_dashboard(DASHBOARD)
    assert {"gatehouse_auth_logins_total", "gatehouse_http_pool_in_flight"} <= names
    missing = names - defined_sample_names() - NOT_FROM_GATEHOUSE
    assert not missing, f"the dashboard reads metrics no service defines: {sorted(missing)}"


def test_the_dashboard_shows_every_metric_an_alert_reads() -> None:
    """Whoever an alert wakes finds its metric on the dashboard (docs/runbooks/README.md)."""
    read_by_rules = names_in_rule_groups(prometheus_rule_groups()) - NOT_FROM_GATEHOUSE
    missing = read_by_rules - names_in_dashboard(DASHBOARD)
    assert not missing, f"no dashboard panel shows these metrics of the alerts: {sorted(missing)}"
