"""Small helpers for the system tests."""

from __future__ import annotations

import urllib.request
import uuid

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from devstack.gatehouse import Service


def new_username(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a /metrics page by sample name: [(labels, value), ...]."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        url, timeout=5
    ) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def current_samples(service: Service) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of an HTTP process as its workers hold them now, read from its multiprocess
    folder: /metrics serves a copy up to a second old, which cannot show that a counter did
    *not* move."""
    registry = CollectorRegistry()
    assert service.process.env is not None
    MultiProcessCollector(registry, path=service.process.env["GATEHOUSE_METRICS_DIR"])
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def sample_sum(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items())
    )


def known_replicas_per_worker(http_url: str) -> list[float]:
    """How many auth replicas each worker of one HTTP process currently knows."""
    samples = scrape(f"{http_url}/metrics")
    return [value for _, value in samples.get("gatehouse_http_discovered_replicas", [])]
