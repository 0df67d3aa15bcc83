"""Both images built on a Debian base and run as a deployment would: read-only root
filesystem, non-root, against the test stack's MariaDB, Redis and etcd. A sign-up and a login go
through the containers (with the chart's `helm test` script), and SIGTERM drains and exits 0.

Slow (a Docker daemon, two image builds): marked `images`, and run after the other delivery
checks (the file's name sorts last).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devstack import DataStores
from devstack.etcd import Etcd
from devstack.gatehouse import http_status
from devstack.ports import free_port, wait_until
from tests.delivery.chart import CHART
from tests.delivery.docker_host import Docker, base_image, docker_daemon
from tests.delivery.toolbox import REPO_ROOT

pytestmark = pytest.mark.images
READY_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    with docker_daemon() as daemon:
        yield daemon


def _build(docker: Docker, dockerfile: str, tag: str, *build_args: str) -> None:
    arguments = [part for build_arg in build_args for part in ("--build-arg", build_arg)]
    docker.run(
        "build",
        "--network",
        "host",
        "--file",
        str(REPO_ROOT / dockerfile),
        *arguments,
        "--tag",
        tag,
        str(REPO_ROOT),
    )


@pytest.fixture(scope="module")
def images(docker: Docker) -> dict[str, str]:
    """Both images, on the shared base built once, as skaffold builds them."""
    shared_base = "gatehouse-base:test"
    _build(docker, "Dockerfile.base", shared_base, f"BASE_IMAGE={base_image(docker)}")
    built = {}
    for service in ("http", "auth"):
        tag = f"gatehouse-{service}:test"
        _build(
            docker, f"Dockerfile.{service}", tag, f"GATEHOUSE_BASE={shared_base}", "VERSION=test"
        )
        built[service] = tag
    return built


def _run_container(
    docker: Docker, name: str, image: str, env: dict[str, str], *args: str, detach: bool = True
) -> None:
    """Start `image` as `name` in the background; without `detach`, run it to its end (an error
    if it fails) and remove it."""
    docker.run("rm", "--force", name, check=False)
    options = [option for key, value in env.items() for option in ("--env", f"{key}={value}")]
    docker.run(
        "run",
        "--detach" if detach else "--rm",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,size=64m",
        *options,
        image,
        *args,
    )


def _exited(docker: Docker, name: str) -> str | None:
    result = docker.run(
        "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name, check=False
    )
    running, _, code = result.stdout.strip().partition(" ")
    return None if running == "true" else f"the container exited with {code}"


def _logs(docker: Docker, name: str) -> str:
    result = docker.run("logs", "--tail", "60", name, check=False)
    return result.stdout + result.stderr


@dataclass(frozen=True)
class Deployment:
    containers: dict[str, str]  # service -> container name
    http_port: int


@pytest.fixture(scope="module")
def containers_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    """An etcd of the containers' own, plain on 127.0.0.1: the shared one serves TLS with auth,
    whose CA and password files (readable by this user only) a container's user cannot read.
    TLS and auth to etcd are the chart's, checked by tests/delivery/test_chart_contract.py and
    tests/system/test_etcd_auth_stack.py."""
    etcd = Etcd(tmp_path_factory.mktemp("images-etcd"))
    etcd.start()
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture(scope="module")
def deployment(
    docker: Docker, images: dict[str, str], data_stores: DataStores, containers_etcd: Etcd
) -> Iterator[Deployment]:
    """An auth replica and the HTTP tier in containers, under etcd prefixes of their own."""
    from services.auth.tokens import generate_private_key_pem

    run_id = secrets.token_hex(4)
    prefixes = {
        "GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-images-{run_id}/services/auth/",
        "GATEHOUSE_JWT_KEYS_PREFIX": f"/gatehouse-images-{run_id}/jwt-keys/",
    }
    ports = {"rpc": free_port(), "ops": free_port(), "http": free_port(), "http_ops": free_port()}
    stores_env = {
        name: value
        for name, value in data_stores.service_env().items()
        if not name.startswith("GATEHOUSE_ETCD_")
    }
    auth_env = {
        **stores_env,
        "GATEHOUSE_ETCD_ENDPOINTS": containers_etcd.endpoint,
        **prefixes,
        "GATEHOUSE_WORKER_ID_PREFIX": f"/gatehouse-images-{run_id}/worker-ids/",
        "GATEHOUSE_INSTANCE_ID": f"image-test-{run_id}",
        "GATEHOUSE_AUTH_HOST": "127.0.0.1",
        "GATEHOUSE_AUTH_PORT": str(ports["rpc"]),
        "GATEHOUSE_OPS_PORT": str(ports["ops"]),
        "GATEHOUSE_PEPPERS": f"1:{secrets.token_urlsafe(32)}",
        "GATEHOUSE_JWT_PRIVATE_KEY": generate_private_key_pem(),
        "GATEHOUSE_DEVICE_COOKIE_SECRET": secrets.token_urlsafe(32),
        "GATEHOUSE_BCRYPT_COST": "4",
        # The RPC runs in plaintext here: the operator calls over this socket, as the chart sets.
        "GATEHOUSE_OPERATOR_SOCKET": "/tmp/gatehouse/operator.sock",
    }
    http_env = {
        "GATEHOUSE_ETCD_ENDPOINTS": containers_etcd.endpoint,
        **prefixes,
        "GATEHOUSE_HTTP_HOST": "127.0.0.1",
        "GATEHOUSE_HTTP_PORT": str(ports["http"]),
        "GATEHOUSE_HTTP_OPS_PORT": str(ports["http_ops"]),
        "GATEHOUSE_HTTP_WORKERS": "1",
        "GATEHOUSE_CSRF_SECRET": secrets.token_urlsafe(48),
        "GATEHOUSE_METRICS_DIR": "/tmp/metrics",
    }
    names = {"auth": f"gatehouse-auth-{run_id}", "http": f"gatehouse-http-{run_id}"}
    try:
        # As the chart's migration Job: the auth replica has the application user only.
        migrate_env = {
            "GATEHOUSE_MYSQL_PRIMARY_DSN": data_stores.primary_dsn,
            "GATEHOUSE_MYSQL_MIGRATION_DSN": data_stores.migration_dsn,
        }
        _run_container(
            docker,
            f"gatehouse-migrate-{run_id}",
            images["auth"],
            migrate_env,
            "migrate",
            detach=False,
        )
        _run_container(docker, names["auth"], images["auth"], auth_env)
        _run_container(docker, names["http"], images["http"], http_env)
        for service, url in (
            ("auth", f"http://127.0.0.1:{ports['ops']}/readyz"),
            ("http", f"http://127.0.0.1:{ports['http']}/readyz"),
        ):
            try:
                wait_until(
                    lambda url=url: http_status(url) == 200,
                    READY_TIMEOUT,
                    f"the {service} container is ready ({url})",
                    abort=lambda name=names[service]: _exited(docker, name),
                )
            except (TimeoutError, RuntimeError) as exc:
                raise AssertionError(
                    f"{exc}\n{service} container log:\n{_logs(docker, names[service])}"
                ) from None
        yield Deployment(containers=names, http_port=ports["http"])
    finally:
        for name in names.values():
            docker.run("rm", "--force", name, check=False)


def test_images_run_as_a_numeric_non_root_user_with_labels(
    docker: Docker, images: dict[str, str]
) -> None:
    for service, tag in images.items():
        (config,) = json.loads(docker.run("image", "inspect", tag).stdout)
        assert config["Config"]["User"] == "10001:10001"
        assert config["Config"]["Entrypoint"] == ["python", "-m", f"services.{service}"]
        labels = config["Config"]["Labels"]
        assert labels["org.opencontainers.image.title"] == f"gatehouse-{service}"
        assert labels["org.opencontainers.image.version"] == "test"


def test_both_images_are_the_shared_base_plus_metadata(
    docker: Docker, images: dict[str, str]
) -> None:
    (shared,) = json.loads(docker.run("image", "inspect", "gatehouse-base:test").stdout)
    for tag in images.values():
        (config,) = json.loads(docker.run("image", "inspect", tag).stdout)
        assert config["RootFS"]["Layers"] == shared["RootFS"]["Layers"], tag


def test_sign_up_and_log_in_through_the_containers(deployment: Deployment) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(CHART / "files" / "signup_login.py"),
            f"http://127.0.0.1:{deployment.http_port}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "signed up and logged in" in result.stdout


def test_the_gatehouse_command_runs_in_the_auth_container(
    docker: Docker, deployment: Deployment
) -> None:
    """As `kubectl exec deploy/<release>-auth -- gatehouse ...` runs it: on the PATH, calling
    the replica of its own container."""
    auth = deployment.containers["auth"]
    shown = docker.run("exec", auth, "gatehouse", "--help")
    assert "users" in shown.stdout and "sessions" in shown.stdout
    nobody = docker.run("exec", auth, "gatehouse", "users", "show", "nobody-here", check=False)
    assert nobody.returncode == 1, nobody.stderr
    assert nobody.stderr.strip() == "gatehouse: no live account is named 'nobody-here'"


def test_sigterm_drains_and_exits_zero(docker: Docker, deployment: Deployment) -> None:
    names = deployment.containers
    for service in ("http", "auth"):
        docker.run("stop", "--time", "40", names[service], timeout=60)
        (state,) = json.loads(docker.run("inspect", names[service]).stdout)
        assert state["State"]["ExitCode"] == 0, (
            f"{service} exited {state['State']['ExitCode']}:\n{_logs(docker, names[service])}"
        )
