"""The Dockerfiles' promises, read statically (tests/delivery/test_zz_images.py builds and runs
them): one shared base (Dockerfile.base, multi-stage from a configurable Python image) that both
service images start from, a numeric non-root user, exec-form entrypoints of the services, OCI
labels, and a .dockerignore that keeps the build context small."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.delivery.toolbox import REPO_ROOT

SERVICES = ("http", "auth")


def _instructions(name: str) -> list[tuple[str, str]]:
    text = (REPO_ROOT / f"Dockerfile.{name}").read_text().replace("\\\n", " ")
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_shared_base_is_multi_stage_from_a_configurable_image() -> None:
    instructions = _instructions("base")
    # The Python the lock is made for (requirements/runtime.txt: "with Python 3.11").
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    stages = [argument for keyword, argument in instructions if keyword == "FROM"]
    assert stages == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert not [keyword for keyword, _ in instructions if keyword in ("ENTRYPOINT", "CMD")]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_image_starts_from_the_shared_base(service: str) -> None:
    instructions = _instructions(service)
    assert instructions[0] == ("ARG", "GATEHOUSE_BASE=gatehouse-base")
    stages = [argument for keyword, argument in instructions if keyword == "FROM"]
    assert stages == ["${GATEHOUSE_BASE}"]
    assert not [keyword for keyword, _ in instructions if keyword in ("RUN", "COPY")]


@pytest.mark.parametrize("service", SERVICES)
def test_runs_as_a_numeric_non_root_user(service: str) -> None:
    users = [
        argument
        for keyword, argument in [*_instructions("base"), *_instructions(service)]
        if keyword == "USER"
    ]
    assert len(users) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[0]), users


@pytest.mark.parametrize("service", SERVICES)
def test_exec_form_entrypoint_of_the_service(service: str) -> None:
    (entrypoint,) = [
        argument for keyword, argument in _instructions(service) if keyword == "ENTRYPOINT"
    ]
    assert json.loads(entrypoint) == ["python", "-m", f"services.{service}"]
    assert not [keyword for keyword, _ in _instructions(service) if keyword == "CMD"]


@pytest.mark.parametrize("service", SERVICES)
def test_oci_labels(service: str) -> None:
    labels = " ".join(
        argument for keyword, argument in _instructions(service) if keyword == "LABEL"
    )
    for key in ("title", "description", "source", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert f'org.opencontainers.image.title="gatehouse-{service}"' in labels


def test_the_shared_base_puts_the_gatehouse_command_on_the_path() -> None:
    """The console script of pyproject.toml, which pip would write if the code were installed
    rather than copied: it runs services.cli, whose __main__ calls the same entry point."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"gatehouse": "services.cli:run"}
    assert (
        "from services.cli import run"
        in (REPO_ROOT / "services" / "cli" / "__main__.py").read_text()
    )
    runs = " ".join(argument for keyword, argument in _instructions("base") if keyword == "RUN")
    assert "exec python -m services.cli" in runs and "> /opt/gatehouse/bin/gatehouse" in runs
    assert "chmod 0755 /opt/gatehouse/bin/gatehouse" in runs


def test_dockerignore_sends_only_what_the_images_need() -> None:
    lines = [
        line
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {"!requirements/runtime.txt", "!services/"} <= set(lines)


def test_the_shared_base_installs_the_runtime_lock_with_hashes() -> None:
    instructions = _instructions("base")
    assert ("COPY", "requirements/runtime.txt ./") in instructions
    (install,) = [argument for keyword, argument in instructions if "pip install" in argument]
    assert "--require-hashes --requirement runtime.txt" in install
