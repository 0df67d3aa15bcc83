"""The Terraform environment, statically (terraform cannot fetch providers here): it parses,
pins providers and modules exactly, types and describes every variable and output, wires the
data stores into the chart's external.* values, and passes checkov."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

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


def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(resource type, name) -> body of every resource."""
    return {
        (kind, name): body
        for block in _blocks("resource")
        for kind, named in block.items()
        for name, body in named.items()
    }


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
    resources = _resources()
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
    # The Ingress routes all of the HTTP port: the pages and /avatars/ as well as the API.
    assert 'paths=["/"]' in values, 'the Ingress\'s paths are not ["/"]'
    secret = resources[("kubernetes_secret_v1", "mysql_dsns")]
    # The chart's Jobs: the migration user's DSN, and the master user's for the bootstrap.
    assert set(secret["data"]) == {"primary-dsn", "replica-dsns", "migration-dsn", "admin-dsn"}
    assert set(resources[("kubernetes_secret_v1", "redis_url")]["data"]) == {"url"}


def test_the_ingress_controller_alone_reaches_the_http_port_and_is_trusted() -> None:
    """The chart refuses an Ingress without trusted proxies, and trusted proxies with the HTTP
    port open to every pod: the environment passes both, and asks for the proxies' addresses
    before it applies."""
    release = _resources()[("helm_release", "gatehouse")]
    values = re.sub(r"\s", "", release["values"][0])
    assert "trustedProxies=local.trusted_proxies" in values
    assert "httpIngressFrom=local.http_ingress_from" in values
    local = {name: body for block in _blocks("locals") for name, body in block.items()}
    assert "var.ingress_proxy_cidrs" in local["trusted_proxies"]
    assert "var.ingress_controller_namespace" in local["http_ingress_from"]
    (lifecycle,) = release["lifecycle"]
    (precondition,) = lifecycle["precondition"]
    assert "var.ingress_proxy_cidrs" in precondition["condition"]


def test_aurora_refuses_plaintext_and_the_app_is_not_its_master_user() -> None:
    resources = _resources()
    cluster = resources[("aws_rds_cluster", "mysql")]
    assert cluster["db_cluster_parameter_group_name"] == (
        "${aws_rds_cluster_parameter_group.mysql.name}"
    )
    group = resources[("aws_rds_cluster_parameter_group", "mysql")]
    parameters = {p["name"]: p["value"] for p in group["parameter"]}
    assert parameters["require_secure_transport"] == "ON"
    cache = resources[("aws_elasticache_replication_group", "redis")]
    assert cache["transit_encryption_enabled"] is True and cache["auth_token"]
    dsns = {name: body for block in _blocks("locals") for name, body in block.items()}
    master = cluster["master_username"]
    assert dsns["mysql_dsn"].startswith("mysql://gatehouse_app:") and master != "gatehouse_app"
    assert dsns["mysql_migration_dsn"].startswith("mysql://gatehouse_ddl:")
    assert dsns["mysql_admin_dsn"].startswith(f"mysql://{master}:")
    assert all("?${local.mysql_tls}" in dsns[key] for key in ("mysql_dsn", "mysql_admin_dsn"))


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


def test_an_etcd_of_your_own_is_reached_over_tls_verified_against_its_ca() -> None:
    """The chart refuses etcd users without a CA: Terraform must be able to pass one."""
    resources = _resources()
    secret = resources[("kubernetes_secret_v1", "etcd_ca")]
    assert secret["data"] == {"ca.crt": "${var.etcd_ca_pem}"}
    assert _named("variable")["etcd_ca_pem"]["default"] == ""
    values = re.sub(r"\s", "", resources[("helm_release", "gatehouse")]["values"][0])
    assert "caSecret=length(kubernetes_secret_v1.etcd_ca)>0?kubernetes_secret_v1.etcd_ca[0]" in (
        values
    )


def test_the_in_chart_etcd_gets_its_volumes_on_eks() -> None:
    """EKS 1.30 and later has no default StorageClass, and the EBS CSI driver's controller may
    not create volumes with the node role: without a class named in the values and a role of the
    driver's own, the etcd StatefulSet's claims stay Pending and the release never gets ready."""
    resources = _resources()
    storage_class = resources[("kubernetes_storage_class_v1", "etcd")]
    assert storage_class["storage_provisioner"] == "ebs.csi.aws.com"
    assert storage_class["volume_binding_mode"] == "WaitForFirstConsumer"
    assert storage_class["parameters"]["encrypted"] == "true"
    values = re.sub(r"\s", "", resources[("helm_release", "gatehouse")]["values"][0])
    assert "persistence={storageClass=kubernetes_storage_class_v1.etcd.metadata[0].name}" in values
    addon = _named("module")["eks"]["cluster_addons"]["aws-ebs-csi-driver"]
    assert addon.get("service_account_role_arn") == "${aws_iam_role.ebs_csi.arn}", addon
    trust = re.sub(r"\s", "", resources[("aws_iam_role", "ebs_csi")]["assume_role_policy"])
    assert (
        "sts:AssumeRoleWithWebIdentity" in trust
        and "Federated=module.eks.oidc_provider_arn" in trust
    )
    assert '"system:serviceaccount:kube-system:ebs-csi-controller-sa"' in trust
    attachment = resources[("aws_iam_role_policy_attachment", "ebs_csi")]
    assert attachment["role"] == "${aws_iam_role.ebs_csi.name}"
    assert attachment["policy_arn"].endswith(":policy/service-role/AmazonEBSCSIDriverPolicy")


# Terraform is not in any package registry this project installs from, so `make` cannot
# install it: the checks below that run it skip without it (the structural checks still run).
NO_TERRAFORM = "terraform is not installed and no package registry serves it"


def _terraform(workdir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`terraform <arguments> -no-color` in `workdir`, offline (no provider, no module)."""
    return subprocess.run(
        ["terraform", *arguments, "-no-color"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _plan_variables(workdir: Path, **values: str) -> subprocess.CompletedProcess[str]:
    """`terraform plan` of variables.tf alone."""
    variables = [f"-var={name}={value}" for name, value in values.items()]
    return _terraform(workdir, "plan", "-input=false", "-lock=false", *variables)


def test_a_vpc_cidr_whose_subnets_aws_refuses_fails_the_plan(tmp_path: Path) -> None:
    """network.tf cuts the public and database subnets 8 bits longer than the VPC: a /22 VPC
    gave /30 subnets, which AWS refuses (a subnet is /16 to /28), so the apply failed midway
    with the VPC created. The variable refuses such a block before anything is planned."""
    assert any(
        "vpc_cidr" in check["condition"]
        for check in _named("variable")["vpc_cidr"].get("validation", [])
    ), "vpc_cidr has no validation"
    if shutil.which("terraform") is None:
        pytest.skip(f"{NO_TERRAFORM}: the validation's presence was checked, not evaluated")
    shutil.copy(TERRAFORM / "variables.tf", tmp_path)
    init = _terraform(tmp_path, "init", "-input=false", "-backend=false")
    assert init.returncode == 0, init.stderr
    required = {
        "region": "eu-west-1",
        "availability_zones": '["eu-west-1a","eu-west-1b","eu-west-1c"]',
        "environment": "prod",
        "image_tag": "0.1.0",
    }
    for cidr in ("10.40.0.0/16", "10.40.0.0/19"):
        result = _plan_variables(tmp_path, **required, vpc_cidr=cidr)
        assert result.returncode == 0, f"{cidr} refused:\n{result.stderr}"
    for cidr in ("10.40.0.0/20", "10.40.0.0/22", "10.0.0.0/8", "not-a-cidr", "2001:db8::/56"):
        result = _plan_variables(tmp_path, **required, vpc_cidr=cidr)
        assert result.returncode != 0 and "vpc_cidr must be" in result.stderr, (
            f"{cidr} accepted:\n{result.stdout[-500:]}"
        )


def test_terraform_fmt_check_passes() -> None:
    """The README tells operators to run `terraform fmt -check`: it must pass as shipped."""
    if shutil.which("terraform") is None:
        pytest.skip(NO_TERRAFORM)
    result = _terraform(TERRAFORM, "fmt", "-check", "-diff")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-500:]


def test_the_replica_dsns_name_the_instances_that_are_not_the_writer() -> None:
    """The instances of a count are created in parallel: the writer is whichever Aurora took
    first, and a failover moves it. Taking "every instance but index 0" as the readers gave
    the auth service the writer as a replica and left a reader unused."""
    instances = _resources()[("aws_rds_cluster_instance", "mysql")]
    assert instances["count"] == "${1 + var.aurora_reader_count}"
    local = {name: body for block in _blocks("locals") for name, body in block.items()}
    reader_hosts = re.sub(r"\s", "", local["reader_hosts"])
    assert reader_hosts == (
        "${[forinstanceinaws_rds_cluster_instance.mysql:instance.endpointif!instance.writer]}"
    ), local["reader_hosts"]


def test_aws_minor_upgrades_of_aurora_are_not_planned_back() -> None:
    """With auto_minor_version_upgrade, AWS moves the cluster to a newer patch; the provider
    then reads the new version, and a configuration pinned to the old patch plans
    `engine_version = "8.0.mysql_aurora.3.08.3" -> "8.0.mysql_aurora.3.08.2"` on the cluster
    and every instance: a downgrade AWS refuses, failing every later apply."""
    resources = _resources()
    instances = resources[("aws_rds_cluster_instance", "mysql")]
    assert instances["auto_minor_version_upgrade"] is True
    for key in (("aws_rds_cluster", "mysql"), ("aws_rds_cluster_instance", "mysql")):
        ignored = [
            change
            for lifecycle in resources[key].get("lifecycle", [])
            for change in lifecycle.get("ignore_changes", [])
        ]
        assert "${engine_version}" in ignored or "engine_version" in ignored, (key, ignored)
