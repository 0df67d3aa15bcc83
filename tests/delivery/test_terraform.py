"""The Terraform environment, statically (terraform cannot fetch providers here): it parses,
pins providers and modules exactly, types and describes every variable and output, wires the
data stores into the chart's external.* values, and passes checkov."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2

from tests.delivery.toolbox import REPO_ROOT, run_checkov

TERRAFORM = REPO_ROOT / "infra" / "terraform"
EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+")
PLAIN = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)


def _load(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return hcl2.load(handle, serialization_options=PLAIN)


def _blocks(kind: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(TERRAFORM.glob("*.tf")):
        found += _load(path).get(kind, [])
    return found


def _named(kind: str) -> dict[str, dict[str, Any]]:
    return {name: body for block in _blocks(kind) for name, body in block.items()}


def test_every_file_parses() -> None:
    files = sorted(TERRAFORM.glob("*.tf"))
    assert files
    for path in files:
        _load(path)


def test_providers_are_pinned_exactly() -> None:
    (terraform,) = _blocks("terraform")
    providers = {
        name: spec for block in terraform["required_providers"] for name, spec in block.items()
    }
    assert set(providers) == {"aws", "helm", "kubernetes", "random"}
    for name, spec in providers.items():
        assert EXACT_VERSION.fullmatch(spec["version"]), f"{name} is not pinned: {spec['version']}"
    assert terraform["required_version"]


def test_modules_are_pinned_exactly() -> None:
    modules = _named("module")
    assert {"vpc", "eks"} <= set(modules)
    for name, module in modules.items():
        assert module["source"].startswith("terraform-aws-modules/"), name
        assert EXACT_VERSION.fullmatch(module["version"]), f"module {name} is not pinned"


def test_variables_are_typed_and_described() -> None:
    for name, variable in _named("variable").items():
        assert "type" in variable, f"variable {name} has no type"
        assert len(variable.get("description", "")) > 10, f"variable {name} has no description"


def test_outputs_are_described() -> None:
    outputs = _named("output")
    assert {
        "cluster_name",
        "mysql_writer_endpoint",
        "mysql_reader_endpoint",
        "redis_primary_endpoint",
    } <= set(outputs)
    for name, output in outputs.items():
        assert output.get("description"), f"output {name} has no description"


def test_the_release_uses_the_managed_data_stores() -> None:
    resources = {
        (kind, name): body
        for block in _blocks("resource")
        for kind, named in block.items()
        for name, body in named.items()
    }
    assert resources[("aws_rds_cluster", "mysql")]["engine"] == "aurora-mysql"
    assert (
        resources[("aws_elasticache_replication_group", "redis")]["transit_encryption_enabled"]
        is True
    )
    release = resources[("helm_release", "gatehouse")]
    assert release["chart"] == "${var.chart_path}"
    assert (
        TERRAFORM / _named("variable")["chart_path"]["default"]
    ).resolve() == REPO_ROOT / "charts" / "gatehouse"
    values = re.sub(r"\s", "", release["values"][0])
    for wiring in (
        "mysql={enabled=false}",
        "redis={enabled=false}",
        "writerHost=aws_rds_cluster.mysql.endpoint",
        "readerHosts=local.reader_hosts",
        "existingSecret=kubernetes_secret_v1.mysql_dsns",
        "existingSecret=kubernetes_secret_v1.redis_url",
    ):
        assert wiring in values, wiring
    secret = resources[("kubernetes_secret_v1", "mysql_dsns")]
    assert set(secret["data"]) == {"primary-dsn", "replica-dsns"}
    assert set(resources[("kubernetes_secret_v1", "redis_url")]["data"]) == {"url"}


def test_checkov_passes_with_only_explained_skips(tmp_path: Path) -> None:
    config = TERRAFORM / ".checkov.yaml"
    skipped = [line for line in config.read_text().splitlines() if line.strip().startswith("- CKV")]
    lines = config.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("- CKV"):
            assert lines[index - 1].strip().startswith("#") or lines[index - 1].strip().startswith(
                "- CKV"
            ), f"{line.strip()} is skipped without a reason above it"
    result, report = run_checkov(TERRAFORM, config)
    failures = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}"
        for c in report["results"]["failed_checks"]
    ]
    assert report["summary"]["passed"] > 0 and skipped
    assert result.returncode == 0 and not failures, "\n".join(failures) or result.stderr
