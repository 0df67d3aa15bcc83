"""Small helpers for the system tests."""

from __future__ import annotations

import shutil
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from devstack.gatehouse import REPO_ROOT, Gatehouse, Service
from devstack.stack import DataStores
from services.foundation.rpc.client import RpcConnection


def copy_of_the_code(root: Path, *folders: str) -> Path:
    """`root` holding a copy of the repository's `services` (and `folders`), to be patched into
    another release of the code (compatibility tests: Gatehouse.start_*(code_root=root))."""
    for folder in ("services", *folders):
        shutil.copytree(
            REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


def new_username(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def signed_up_token(
    client: httpx.AsyncClient, username: str | None = None
) -> tuple[str, str]:
    """A new account and a session token for it: (username, token)."""
    username = username or new_username()
    created = await client.post(
        "/api/v1/users", json={"username": username, "password": "password1"}
    )
    assert created.status_code == 201, created.text
    login = await client.post(
        "/api/v1/sessions", json={"username": username, "password": "password1"}
    )
    assert login.status_code == 200, login.text
    return username, login.json()["token"]


@contextmanager
def stack_of_its_own(
    data_stores: DataStores,
    state_dir: Path,
    name: str,
    settings: dict[str, str],
    *,
    rpc_tls: bool = True,
) -> Iterator[Gatehouse]:
    """A Gatehouse (nothing started yet) under discovery prefixes of its own, so the shared
    stack never sees it; everything it started is stopped on exit."""
    run = f"{name}-{uuid.uuid4().hex[:8]}"
    own = {
        **settings,
        "GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-{run}/auth/",
        "GATEHOUSE_JWT_KEYS_PREFIX": f"/gatehouse-{run}/jwt-keys/",
    }
    stack = Gatehouse(data_stores, state_dir, settings=own, rpc_tls=rpc_tls)
    try:
        yield stack
    finally:
        stack.stop()


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


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` now (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@asynccontextmanager
async def rpc_connection(
    stack: Gatehouse, replica: Service, agent: str, *, operator: bool = False
) -> AsyncIterator[RpcConnection]:
    """A connection straight to one of `stack`'s auth replicas, from 127.0.0.1, with the HTTP
    tier's client certificate (the operator's with `operator`) when the RPC runs mutual TLS;
    closed on exit."""
    connection = await RpcConnection.open(
        "127.0.0.1",
        replica.ports["rpc"],
        connect_timeout=5.0,
        agent=agent,
        tls=stack.client_tls(operator),
    )
    try:
        yield connection
    finally:
        connection.close()
