"""`python -m services.http` under Granian and Hypercorn: serving, metrics, draining on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack import DataStores
from devstack.ports import free_port, wait_until_async
from services.contract import auth_pb2 as pb
from services.foundation.discovery import registration
from tests.http.gateway import TEST_CSRF_SECRET, kid_of, public_pem
from tests.http.stub_auth_server import Answer, StubAuthServer

REPO = Path(__file__).resolve().parents[2]


async def held_until(release: asyncio.Event, envelope: pb.Envelope) -> Answer:
    await release.wait()
    return Answer()


@pytest.fixture
async def etcd_namespace(data_stores: DataStores) -> AsyncIterator[str]:
    namespace = f"/test-http-main-{uuid.uuid4().hex}/"
    yield namespace
    client = data_stores.etcd_client()
    await client.delete_prefix(namespace.encode())
    await client.close()


@pytest.mark.parametrize("server", ["granian", "hypercorn"])
async def test_the_server_serves_and_drains_on_sigterm(
    server: str, data_stores: DataStores, etcd_namespace: str, tmp_path: Path
) -> None:
    release = asyncio.Event()
    auth_server = await StubAuthServer(lambda envelope: held_until(release, envelope)).start()
    signing_key = Ed25519PrivateKey.generate()
    port, ops_port = free_port(), free_port()
    discovery_prefix, keys_prefix = f"{etcd_namespace}services/auth/", f"{etcd_namespace}jwt-keys/"
    # Each tier's etcd user of these prefixes, as the chart's bootstrap grants them.
    prefixes = (
        discovery_prefix,
        f"{etcd_namespace}worker-ids/",
        keys_prefix,
        f"{etcd_namespace}rotation/",
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GATEHOUSE_HTTP_SERVER": server,
        "GATEHOUSE_HTTP_PORT": str(port),
        "GATEHOUSE_HTTP_OPS_PORT": str(ops_port),
        "GATEHOUSE_HTTP_WORKERS": "2",
        "GATEHOUSE_CSRF_SECRET": TEST_CSRF_SECRET,
        "GATEHOUSE_METRICS_DIR": str(tmp_path / "metrics"),
        "GATEHOUSE_ETCD_ENDPOINTS": data_stores.etcd_endpoint,
        **data_stores.tier_env("http", prefixes),
        "GATEHOUSE_DISCOVERY_PREFIX": discovery_prefix,
        "GATEHOUSE_JWT_KEYS_PREFIX": keys_prefix,
        # The etcd-published keys are covered elsewhere; this exercises the static PEM path.
        "GATEHOUSE_JWT_PUBLIC_KEYS": public_pem(signing_key),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    key = registration(
        data_stores.tier_access("auth", prefixes),
        discovery_prefix,
        auth_server.record(),
        ttl=10,
    )
    await key.start()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - returns once started; waits below poll
            [sys.executable, "-m", "services.http"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(
            base_url=base_url, limits=httpx.Limits(max_keepalive_connections=0)
        ) as client:
            ops_url = f"http://127.0.0.1:{ops_port}"

            # The ops port's, not a worker's: 200 only once every worker is ready (each connects
            # to the auth replica on its own, and one may lag the other).
            async def ready() -> bool:
                return (await client.get(f"{ops_url}/readyz")).status_code == 200

            await wait_until_async(
                ready,
                30.0,
                f"{server} to answer /readyz on its ops port with 200",
                where=log_path,
                abort=lambda: (
                    None if process.poll() is None else f"exited with {process.returncode}"
                ),
            )
            health_checks = 20
            for _ in range(health_checks):
                assert (await client.get("/healthz")).json() == {"status": "ok"}
            # Every worker writes its own samples; /metrics must add them all up. A worker adds a
            # request to them once its response is sent, and each worker's page is a copy up to
            # a second old: the page that counts every check is waited for, then read exactly.
            sample = 'gatehouse_http_request_seconds_count{route="/healthz",status="200"}'
            pages: list[str] = []

            async def counts_every_check() -> bool:
                pages[:] = [(await client.get("/metrics")).text]
                counted = re.search(rf"^{re.escape(sample)} (\S+)$", pages[0], re.MULTILINE)
                return counted is not None and float(counted[1]) >= health_checks

            await wait_until_async(
                counts_every_check, 10.0, f"/metrics to count {health_checks} health checks"
            )
            assert f"{sample} {health_checks}.0" in pages[0]

            # The ops port: one listener of the main process, answering for the workers.
            assert (await client.get(f"{ops_url}/healthz")).json() == {"status": "ok"}
            # Every worker holds the key of GATEHOUSE_JWT_PUBLIC_KEYS, and says so.
            assert (await client.get(f"{ops_url}/readyz")).json() == {
                "status": "ready",
                "signing_key_kids": [kid_of(signing_key)],
            }
            ops_metrics = await client.get(f"{ops_url}/metrics")
            assert ops_metrics.status_code == 200
            assert sample in ops_metrics.text
            held = re.findall(
                rf'^gatehouse_http_signing_key_info{{kid="{kid_of(signing_key)}",pid="\d+"}} 1.0$',
                ops_metrics.text,
                re.MULTILINE,
            )
            assert len(held) == 2, ops_metrics.text  # one per worker

            token = _token(signing_key)
            in_flight = asyncio.create_task(
                client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            )
            await wait_until_async(
                lambda: len(auth_server.calls) == 1, 10.0, "the call to reach the stub"
            )
            process.send_signal(signal.SIGTERM)

            async def refuses_new_connections() -> bool:
                try:
                    await client.get("/healthz", timeout=0.5)
                except httpx.TransportError:  # refused, reset, or left unanswered in the backlog
                    return True
                return False

            await wait_until_async(
                refuses_new_connections, 10.0, f"{server} to stop accepting", where=log_path
            )
            assert process.poll() is None, "exited with a request in flight"
            # Not ready from the SIGTERM on, while it finishes the request in flight: a load
            # balancer probing /readyz stops sending to a port that takes no connections.
            readiness = await client.get(f"{ops_url}/readyz")
            assert readiness.status_code == 503, readiness.text
            assert not in_flight.done()
            release.set()
            response = await in_flight
            assert response.status_code == 200
        await wait_until_async(
            lambda: process.poll() is not None, 20.0, f"{server} to exit", where=log_path
        )
        assert process.returncode == 0, log_path.read_text()
        log_lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        assert all(json.loads(line)["service"] == "gatehouse-http" for line in log_lines), log_lines
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
            process.wait()
        await key.stop()
        await auth_server.stop()


def _token(key: Ed25519PrivateKey) -> str:
    import time

    import jwt

    now = int(time.time())
    claims = {"sub": "1", "sid": "s", "iat": now, "exp": now + 600}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid_of(key)})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEHOUSE_JWT_PUBLIC_KEYS", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"),
        ("GATEHOUSE_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("GATEHOUSE_ALLOWED_ORIGINS", "https://example.com/login"),
        ("GATEHOUSE_HTTP_WORKERS", "two"),
        ("GATEHOUSE_CSRF_SECRET", "short"),
        ("GATEHOUSE_HTTP_HOST", "localhost"),
    ],
)
def test_a_bad_setting_stops_the_server_at_start(variable: str, value: str) -> None:
    clean = {key: val for key, val in os.environ.items() if not key.startswith("GATEHOUSE_")}
    result = subprocess.run(  # the exit code is what is checked
        [sys.executable, "-m", "services.http"],
        check=False,
        cwd=REPO,
        env={
            **clean,
            "GATEHOUSE_CSRF_SECRET": TEST_CSRF_SECRET,
            "GATEHOUSE_HTTP_PORT": str(free_port()),
            "GATEHOUSE_HTTP_OPS_PORT": str(free_port()),
            variable: value,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "configuration error" in lines[0] and variable in lines[0], lines


def test_the_entry_point_imports_no_metrics_library_before_its_folder_is_set() -> None:
    # prometheus_client picks single- or multi-process mode when first imported: imported by the
    # main process before prepare_multiprocess_dir, its own counters (worker restarts) would
    # stay in its memory and never reach /metrics.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, services.http.__main__; print('prometheus_client' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "False", result.stdout + result.stderr
