"""The chart's side of TLS to MySQL and Valkey and of the two MySQL users: the in-chart stores
accept TLS only, with a certificate the auth pods verify, and the database Jobs run before the
replicas with the only copies of the master and migration users' credentials."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from services.auth.store.database import parse_dsn
from tests.delivery.certificates import covers, verifies
from tests.delivery.chart import (
    RELEASE,
    VALUE_SETS,
    Manifest,
    named,
    of_kind,
    render,
    render_upgrade,
    secret_files,
    secret_keys_mounted,
)

CA_DIR = "/etc/gatehouse/data-stores-ca"
TLS_SECRET = f"{RELEASE}-data-stores-tls"
# The in-chart MySQL's install Job: the bootstrap (init container), then the migrations.
INSTALL_JOB = f"{RELEASE}-migrate-1"


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def _containers(manifests: tuple[Manifest, ...], kind: str, name: str) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = named(manifests, kind, name)["spec"]["template"]["spec"][
        "containers"
    ]
    return containers


def _secret_files(manifests: tuple[Manifest, ...], kind: str, name: str) -> dict[str, Any]:
    """The secret files of a workload's one container."""
    pod = named(manifests, kind, name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return secret_files(pod, container)


def _mounted_secrets(
    manifests: tuple[Manifest, ...], kind: str, name: str, containers: str = "containers"
) -> dict[str, str]:
    """mount path -> Secret name of the first container (or init container) of a workload."""
    spec = named(manifests, kind, name)["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    return {
        mount["mountPath"]: secrets[mount["name"]]
        for mount in spec[containers][0]["volumeMounts"]
        if mount["name"] in secrets
    }


def test_in_chart_stores_accept_tls_only_with_a_certificate_the_auth_pods_verify() -> None:
    manifests = render(None)
    secret = named(manifests, "Secret", TLS_SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    leaf = x509.load_pem_x509_certificate(data["tls.crt"])
    verifies(ca, leaf)

    connections = named(manifests, "Secret", f"{RELEASE}-auth-connections")["stringData"]
    dsns = [connections["mysql-primary-dsn"], *connections["mysql-replica-dsns"].split(",")]
    for dsn in dsns:
        address = parse_dsn(dsn)
        assert (address.ssl_mode, address.ssl_ca) == ("verify-identity", f"{CA_DIR}/ca.crt")
        assert covers(leaf, address.host), address.host
    redis_url = connections["redis-url"]
    assert redis_url.startswith("rediss://") and f"ssl_ca_certs={CA_DIR}/ca.crt" in redis_url
    assert covers(leaf, f"{RELEASE}-redis.gatehouse.svc")

    # The auth pods and the database Jobs (at install and as upgrade hooks) find that CA where
    # the DSNs name it; the servers get the pair.
    upgrade = render_upgrade(None)
    for rendered, kind, name, containers in (
        (manifests, "Deployment", f"{RELEASE}-auth", "containers"),
        (manifests, "Job", INSTALL_JOB, "containers"),
        (manifests, "Job", INSTALL_JOB, "initContainers"),
        (upgrade, "Job", f"{RELEASE}-migrate", "containers"),
        (upgrade, "Job", f"{RELEASE}-mysql-bootstrap", "containers"),
    ):
        mounted = _mounted_secrets(rendered, kind, name, containers)
        assert mounted[CA_DIR] == TLS_SECRET, (name, containers)
    for server in (f"{RELEASE}-mysql-primary", f"{RELEASE}-mysql-replica", f"{RELEASE}-redis"):
        assert TLS_SECRET in _mounted_secrets(manifests, "StatefulSet", server).values(), server
    primary_args = _containers(manifests, "StatefulSet", f"{RELEASE}-mysql-primary")[0]["args"]
    assert "--require-secure-transport=ON" in primary_args
    replica_args = " ".join(
        _containers(manifests, "StatefulSet", f"{RELEASE}-mysql-replica")[0]["args"]
    )
    assert "--require-secure-transport=ON" in replica_args
    init = named(manifests, "ConfigMap", f"{RELEASE}-mysql-init")["data"]["replica.sh"]
    assert "SOURCE_SSL=1" in init and "SOURCE_SSL_VERIFY_SERVER_CERT=1" in init
    redis_args = _containers(manifests, "StatefulSet", f"{RELEASE}-redis")[0]["args"]
    assert redis_args[redis_args.index("--port") + 1] == "0"  # no plaintext port
    assert redis_args[redis_args.index("--tls-port") + 1] == "6379"


def test_tls_off_leaves_plain_connections_and_no_certificate() -> None:
    manifests = render(None, "mysql.tls.enabled=false", "redis.tls.enabled=false")
    assert TLS_SECRET not in {secret["metadata"]["name"] for secret in of_kind(manifests, "Secret")}
    connections = named(manifests, "Secret", f"{RELEASE}-auth-connections")["stringData"]
    assert parse_dsn(connections["mysql-primary-dsn"]).ssl_mode == "disabled"
    assert connections["redis-url"].startswith("redis://")
    assert CA_DIR not in _mounted_secrets(manifests, "Deployment", f"{RELEASE}-auth")


def test_cert_manager_issues_the_data_stores_certificate_when_enabled() -> None:
    manifests = render(
        None, "tls.certManager.enabled=true", "tls.certManager.issuerRef.name=internal-ca"
    )
    assert TLS_SECRET not in {secret["metadata"]["name"] for secret in of_kind(manifests, "Secret")}
    certificate = named(manifests, "Certificate", TLS_SECRET)
    spec = certificate["spec"]
    assert spec["secretName"] == TLS_SECRET
    assert spec["issuerRef"] == {
        "name": "internal-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert f"{RELEASE}-mysql-primary.gatehouse.svc" in spec["dnsNames"]
    assert f"*.{RELEASE}-mysql-replica.gatehouse.svc" in spec["dnsNames"]
    assert f"{RELEASE}-redis.gatehouse.svc" in spec["dnsNames"]


def _hooks(manifest: Manifest) -> set[str]:
    hooks = manifest["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return set(filter(None, hooks.split(",")))


def test_the_install_of_the_in_chart_mysql_runs_its_jobs_as_the_releases_own_in_order() -> None:
    """`helm install --wait` (skaffold's `wait`, Terraform's) waits for the auth pods before it
    runs post-install hooks, and they are not ready until the migrations ran: the install's
    database Job must be a resource of the release, as etcd-bootstrap's is."""
    manifests = render(None)
    database_jobs = [
        job
        for job in of_kind(manifests, "Job")
        if job["metadata"]["labels"]["app.kubernetes.io/component"]
        in ("migrate", "mysql-bootstrap")
    ]
    assert [job["metadata"]["name"] for job in database_jobs] == [INSTALL_JOB]
    (job,) = database_jobs
    assert not _hooks(job)
    pod = job["spec"]["template"]["spec"]
    # Init containers run to completion, in order, before the containers start.
    assert [c["args"] for c in pod["initContainers"]] == [["bootstrap"]]
    assert [c["args"] for c in pod["containers"]] == [["migrate"]]
    # Within both deadlines together.
    assert job["spec"]["activeDeadlineSeconds"] == 420 + 420
    # Its Secret exists before the release's resources (a pre-install hook).
    job_dsns = named(manifests, "Secret", f"{RELEASE}-mysql-jobs")
    assert "pre-install" in _hooks(job_dsns)


def test_only_the_migrations_or_only_the_bootstrap_run_alone_in_the_install_job() -> None:
    job = named(render(None, "auth.bootstrapJob.enabled=false"), "Job", INSTALL_JOB)
    pod = job["spec"]["template"]["spec"]
    assert "initContainers" not in pod and pod["containers"][0]["args"] == ["migrate"]
    manifests = render(None, "auth.migrationJob.enabled=false")
    job = named(manifests, "Job", f"{RELEASE}-mysql-bootstrap-1")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["bootstrap"]
    assert job["spec"]["activeDeadlineSeconds"] == 420
    assert not _hooks(job)


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=lambda path: path.stem)
def test_nothing_waits_for_a_post_install_hook(values_file: Path) -> None:
    """Under `--wait` a post-install hook runs only once every pod is ready."""
    for manifest in render(values_file):
        assert "post-install" not in _hooks(manifest), manifest["metadata"]["name"]


def test_upgrades_run_the_database_jobs_as_hooks_before_the_new_replicas() -> None:
    manifests = render_upgrade(None)
    jobs = {job["metadata"]["name"]: job for job in of_kind(manifests, "Job")}
    assert INSTALL_JOB not in jobs
    bootstrap, migrate = jobs[f"{RELEASE}-mysql-bootstrap"], jobs[f"{RELEASE}-migrate"]
    for job, weight in ((bootstrap, -10), (migrate, 0)):
        annotations = job["metadata"]["annotations"]
        assert "pre-upgrade" in _hooks(job)
        assert int(annotations["helm.sh/hook-weight"]) == weight
        assert job["spec"]["activeDeadlineSeconds"] == 420
    job_dsns = named(manifests, "Secret", f"{RELEASE}-mysql-jobs")
    assert "pre-upgrade" in _hooks(job_dsns)
    assert int(job_dsns["metadata"]["annotations"]["helm.sh/hook-weight"]) < -10


def test_database_jobs_hold_the_master_and_migration_users_and_the_auth_pods_do_not() -> None:
    manifests = render(None)
    job_dsns = named(manifests, "Secret", f"{RELEASE}-mysql-jobs")
    users = {key: parse_dsn(dsn).user for key, dsn in job_dsns["stringData"].items()}
    assert users == {
        "admin-dsn": "root",
        "migration-dsn": "gatehouse_ddl",
        "primary-dsn": "gatehouse",
    }
    # The master user's DSN: in the bootstrap container only, at install and at upgrades.
    pod = named(manifests, "Job", INSTALL_JOB)["spec"]["template"]["spec"]
    assert "GATEHOUSE_MYSQL_ADMIN_DSN" in secret_files(pod, pod["initContainers"][0])
    assert "GATEHOUSE_MYSQL_ADMIN_DSN" not in secret_files(pod, pod["containers"][0])
    admin_dsn = (f"{RELEASE}-mysql-jobs", "admin-dsn")
    assert admin_dsn in secret_keys_mounted(pod, pod["initContainers"][0])
    assert not {admin_dsn, (admin_dsn[0], "*")} & secret_keys_mounted(pod, pod["containers"][0])
    upgrade = render_upgrade(None)
    assert "GATEHOUSE_MYSQL_ADMIN_DSN" in _secret_files(
        upgrade, "Job", f"{RELEASE}-mysql-bootstrap"
    )
    assert "GATEHOUSE_MYSQL_ADMIN_DSN" not in _secret_files(upgrade, "Job", f"{RELEASE}-migrate")
    auth_files = _secret_files(manifests, "Deployment", f"{RELEASE}-auth")
    assert not {"GATEHOUSE_MYSQL_ADMIN_DSN", "GATEHOUSE_MYSQL_MIGRATION_DSN"} & set(auth_files)
    config = named(manifests, "ConfigMap", f"{RELEASE}-auth")["data"]
    assert config["GATEHOUSE_MIGRATE_ON_START"] == "false"  # the application user may not
    primary_env = _env(_containers(manifests, "StatefulSet", f"{RELEASE}-mysql-primary")[0])
    assert "MYSQL_USER" not in primary_env  # the image would grant it everything


def test_with_an_external_mysql_the_jobs_run_before_the_install_from_its_secret() -> None:
    manifests = render(next(p for p in VALUE_SETS if p.stem == "external-values"))
    bootstrap = named(manifests, "Job", f"{RELEASE}-mysql-bootstrap")
    assert bootstrap["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    files = _secret_files(manifests, "Job", f"{RELEASE}-mysql-bootstrap")
    assert files["GATEHOUSE_MYSQL_ADMIN_DSN"] == {
        "name": "gatehouse-mysql-dsns",
        "key": "admin-dsn",
    }
    assert files["GATEHOUSE_MYSQL_MIGRATION_DSN"] == {
        "name": "gatehouse-mysql-dsns",
        "key": "migration-dsn",
    }


def _max_connections(manifests: tuple[Manifest, ...], role: str) -> int:
    (mysql,) = [
        container
        for container in _containers(manifests, "StatefulSet", f"{RELEASE}-mysql-{role}")
        if container["name"] == "mysql"
    ]
    command_line = " ".join([*mysql.get("command", []), *mysql["args"]])
    return int(command_line.split("--max-connections=", 1)[1].split()[0])


@pytest.mark.parametrize(
    ("values", "auth_pods", "pool"),
    [
        ((), 10, 16),  # the autoscaler's maximum, the default pool
        (("auth.autoscaling.maxReplicas=30", "auth.mysqlPoolSize=32"), 30, 32),
        (("auth.autoscaling.enabled=false", "auth.replicaCount=3"), 3, 16),
    ],
)
def test_the_in_chart_mysql_takes_every_connection_the_auth_pods_may_open(
    values: tuple[str, ...], auth_pods: int, pool: int
) -> None:
    """Each auth pod opens two pool sets (accounts and pictures), each with the primary's
    heartbeat connection beside its pool: MySQL's default of 151 connections refused new ones
    from five pods with full pools, while the heartbeats kept the pods ready. A rollout adds a
    quarter more pods for a while."""
    manifests = render(None, *values)
    during_a_rollout = auth_pods + -(-auth_pods // 4)  # maxSurge: 25%, rounded up
    needed = during_a_rollout * 2 * (pool + 1)
    for role in ("primary", "replica"):
        assert _max_connections(manifests, role) >= needed + 20, role
